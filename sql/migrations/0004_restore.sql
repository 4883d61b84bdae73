-- pgwebhooks migration 0004: event ids stay unique in a restored copy (see
-- sql/functions/045_restore.sql for the why and the how).
--
-- An event's id is md5(salt/capture_id/n). Each salt now covers a range of capture ids and
-- belongs to the database it was made in: a copy of the database (pg_restore into a new
-- database or cluster, CREATE DATABASE ... TEMPLATE) finds that it is somewhere else and starts
-- a new salt for the captures the original may number the same way.

-- Where the database was when its current salt was made; NULL until the functions record it.
ALTER TABLE webhooks._installation ADD COLUMN IF NOT EXISTS identity text;
COMMENT ON COLUMN webhooks._installation.salt IS
    'The first salt (capture ids from 0); webhooks._salts holds every salt since';

CREATE TABLE IF NOT EXISTS webhooks._salts (
    -- This salt names the events of captures from this id up to the next row's.
    first_capture_id bigint PRIMARY KEY,
    salt             uuid NOT NULL DEFAULT gen_random_uuid(),
    identity         text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT salts_first_capture_id_nonnegative CHECK (first_capture_id >= 0)
);
COMMENT ON TABLE webhooks._salts IS
    'Salts of event ids by capture id range; a new one starts when a copy of the database is first used';
INSERT INTO webhooks._salts (first_capture_id, salt)
SELECT 0, i.salt FROM webhooks._installation i
ON CONFLICT (first_capture_id) DO NOTHING;
