-- pgwebhooks migration 0021: a published event's id is drawn when it is published and stored
-- with it.
--
-- publish() named each event md5(salt/capture id/1), the salt being the one in force for that
-- capture id (025_event_ids.sql). Finding it cost every call a probe of `_salts`, two md5s and a
-- session flag proving the restore check was done: ~5 us of ~24, for an id that a random one
-- stored with the event does as well. The stored id also travels with the event: a copy of the
-- database (pg_restore, CREATE DATABASE ... TEMPLATE) sends an event it inherited under the id
-- the original gave it, so a receiver deduplicating on webhook-id takes it once; the copy's own
-- events draw ids nobody has used. Events published before this migration keep their derived ids
-- (NULL here), and row changes keep theirs.
ALTER TABLE webhooks.captures ADD COLUMN IF NOT EXISTS published_id uuid;
COMMENT ON COLUMN webhooks.captures.published_id IS
    'A published event''s id (its webhook-id), drawn at random by publish(); NULL: derived from the salt (_event_uid)';

-- publish() no longer asks the restore check, so its session flag and helper go.
DROP FUNCTION IF EXISTS webhooks._published_id(bigint);
