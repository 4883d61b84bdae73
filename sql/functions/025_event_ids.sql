-- pgwebhooks: event ids. An event's id (its webhook-id) is stable across retries, so receivers
-- deduplicate on it, and never reused by a restored copy. A published event's is drawn at random
-- by publish() and stored with it (captures.published_id, since 0.5.3); the rest are derived.
--
-- A derived id is md5(salt/capture_id/n). pg_dump carries the salt and the captures' id
-- counter, so a copy (pg_restore into a new database or another cluster, CREATE DATABASE ...
-- TEMPLATE) numbers its next captures exactly as the original goes on numbering its own: under
-- one salt, receivers deduplicating on webhook-id would drop the copy's events as repeats.
--
-- So a salt belongs to the database it was made in. `_installation.identity` records where that
-- is (cluster system identifier, database oid, this table's oid: a restore changes at least one).
-- Everything that creates deliveries (claim's fan-out, send_test) first calls
-- `_ensure_identity()`; a database that finds itself elsewhere starts a new salt at the first
-- capture it has not fanned out. Nothing is fanned out in a copy before that check, so every
-- capture fanned out by then came from the original: its deliveries are the original's events
-- and keep their ids (a receiver deduplicates the ones both send). Captures not yet fanned out,
-- whether they came in the dump or were written since, get ids nobody has used. The check is
-- once per session (a session never changes database), so claim() pays a setting lookup and a
-- one-row read (the flag's value comes from webhooks._identity_key, see _identity_token).
--
-- A check that fires without a restore (pg_upgrade makes a new system identifier) is harmless:
-- it only renames events no one has been sent yet.

-- Where this database is. pg_control_system() needs no superuser by default; where it has been
-- revoked, the database and table oids still change on any restore but one into a new cluster
-- that happens to assign both the same oids.
CREATE OR REPLACE FUNCTION webhooks._database_identity()
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    system_id text;
BEGIN
    IF has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE') THEN
        SELECT c.system_identifier::text INTO system_id FROM pg_control_system() c;
    END IF;
    RETURN concat_ws('/', coalesce(system_id, '-'),
                     (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()),
                     'webhooks._installation'::regclass::oid);
END
$$;

-- The salt of a capture's events: the one whose range holds `capture_id`. A set-returning SQL
-- function without SET clauses, so the planner inlines it into claim() as an index probe.
CREATE OR REPLACE FUNCTION webhooks._salt_for(capture_id bigint)
RETURNS TABLE (salt uuid)
LANGUAGE sql STABLE
AS $$
    SELECT s.salt FROM webhooks._salts s
    WHERE s.first_capture_id <= capture_id
    ORDER BY s.first_capture_id DESC
    LIMIT 1
$$;

-- The public id of an event: stable across retries (receivers deduplicate on it), unique across
-- installations thanks to the installation's random salt.
CREATE OR REPLACE FUNCTION webhooks._event_uid(capture_id bigint, n integer)
RETURNS uuid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT md5(i.salt::text || '/' || capture_id || '/' || n)::uuid FROM webhooks._salt_for(capture_id) i
$$;

-- The id of event `n` of capture `capture_id` whose stored id is `published_id`: a published
-- event's own (drawn by publish(), migration 0021), else the derived one. Every reader of an
-- event's id asks this. SQL without SET clauses, so it is inlined, and coalesce() asks
-- _event_uid only when there is no stored id.
CREATE OR REPLACE FUNCTION webhooks._event_id(published_id uuid, capture_id bigint, n integer)
RETURNS uuid
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(published_id, webhooks._event_uid(capture_id, n))
$$;

-- _ensure_identity returns whether the check is settled since 0.2 (it returned void).
DO $$
BEGIN
    IF to_regprocedure('webhooks._ensure_identity()') IS NOT NULL
       AND (SELECT p.prorettype FROM pg_proc p WHERE p.oid = to_regprocedure('webhooks._ensure_identity()'))
           = 'void'::regtype THEN
        DROP FUNCTION webhooks._ensure_identity();
    END IF;
END
$$;

-- The value of the session flag `pgwebhooks.identity_checked` once this session has checked:
-- derived from a key no ordinary role can read (webhooks._identity_key), so a session that sets
-- the flag by hand (any role may set a custom setting) does not skip the check.
CREATE OR REPLACE FUNCTION webhooks._identity_token()
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT md5(k.key || '/' || pg_backend_pid()) FROM webhooks._identity_key k
$$;

-- The salt a copy at `here` gives its new captures. Derived, not random, so that every session
-- of the copy knows it without waiting for the one that records it (see _ensure_identity).
CREATE OR REPLACE FUNCTION webhooks._salt_at(here text)
RETURNS uuid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT md5(k.key || '/salt/' || here)::uuid FROM webhooks._identity_key k
$$;

-- Start a new salt if this database is a copy made since the last check (see the top). Returns
-- false when another transaction is recording the new salt right now: the caller then creates no
-- delivery from captures (claim skips its fan-out) and asks again on its next call.
--
-- Never waits and never makes anyone wait for long: the switch is taken with SKIP LOCKED, and a
-- session that finds it taken goes on. Until the switch commits no capture is fanned out in the
-- copy (everyone else skips fan-out), so the boundary it records is the dump's, whoever records
-- it and whenever, and the new salt is derived from the identity, so every session of the copy
-- knows it.
CREATE OR REPLACE FUNCTION webhooks._ensure_identity()
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    here text;
    boundary bigint;
    token text := webhooks._identity_token();
BEGIN
    IF current_setting('pgwebhooks.identity_checked', true) = token THEN
        RETURN true;
    END IF;
    here := webhooks._database_identity();
    IF EXISTS (SELECT 1 FROM webhooks._installation i WHERE i.identity IS NOT DISTINCT FROM here) THEN
        PERFORM set_config('pgwebhooks.identity_checked', token, false);
        RETURN true;
    END IF;
    -- A copy. Whoever takes the row records the switch; a transaction holding it (uncommitted)
    -- is skipped, not waited for.
    PERFORM 1 FROM webhooks._installation i WHERE i.identity IS DISTINCT FROM here FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        -- Either it is being switched by someone else, or it was switched since this snapshot
        -- (READ COMMITTED: the next statement sees it).
        IF EXISTS (SELECT 1 FROM webhooks._installation i WHERE i.identity IS NOT DISTINCT FROM here) THEN
            PERFORM set_config('pgwebhooks.identity_checked', token, false);
            RETURN true;
        END IF;
        RETURN false;
    END IF;
    -- deliveries.capture_id has no index: scanned once per restore, not per claim.
    boundary := greatest(
        (SELECT max(c.id) FROM webhooks.captures c WHERE c.fanned_out > 0 AND c.route IS NULL),
        (SELECT max(d.capture_id) FROM webhooks.deliveries d),
        0);
    -- A later range here (purged captures lowered the boundary) named nothing sent from this copy.
    DELETE FROM webhooks._salts s WHERE s.first_capture_id > boundary;
    INSERT INTO webhooks._salts (first_capture_id, salt, identity) VALUES (boundary + 1, webhooks._salt_at(here), here);
    UPDATE webhooks._installation SET identity = here;
    PERFORM webhooks._reresolve_tables();
    PERFORM webhooks._rebase_cursors();  -- another server's transaction ids (041_cursors.sql)
    RAISE LOG 'pgwebhooks: database identity changed to %: events of captures from % on get a new salt',
        here, boundary + 1;
    PERFORM set_config('pgwebhooks.identity_checked', token, false);
    RETURN true;
END
$$;

COMMENT ON FUNCTION webhooks._ensure_identity IS
    'Starts a new event-id salt when the database is a restored or cloned copy; called before deliveries are created';

-- A new install (or one upgraded from 0.1.0) is where it was made.
UPDATE webhooks._installation SET identity = webhooks._database_identity() WHERE identity IS NULL;

UPDATE webhooks._salts SET identity = (SELECT i.identity FROM webhooks._installation i) WHERE identity IS NULL;

COMMENT ON TABLE webhooks._installation IS
    'One row: the first event-id salt and where the database lives (a copy elsewhere starts a new salt in _salts).';
