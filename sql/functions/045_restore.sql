-- pgwebhooks: backup and restore. A restored copy never sends a new event under an id the
-- original used, and the database's owner can take the backup.
--
-- An event's id is md5(salt/capture_id/n). pg_dump carries the salt and the captures' id
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
-- once per session (a session never changes database), so claim() pays a setting lookup.
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

-- Start a new salt if this database is a copy made since the last check (see the top).
CREATE OR REPLACE FUNCTION webhooks._ensure_identity()
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    here text;
    boundary bigint;
BEGIN
    IF current_setting('pgwebhooks.identity_checked', true) = 'on' THEN
        RETURN;
    END IF;
    here := webhooks._database_identity();
    -- Locks only on a mismatch; a concurrent first check waits here and then finds it settled.
    PERFORM 1 FROM webhooks._installation i WHERE i.identity IS DISTINCT FROM here FOR UPDATE;
    IF FOUND THEN
        -- deliveries.capture_id has no index: scanned once per restore, not per claim.
        boundary := greatest(
            (SELECT max(c.id) FROM webhooks.captures c WHERE c.fanned_out > 0),
            (SELECT max(d.capture_id) FROM webhooks.deliveries d),
            0);
        -- A later range here (purged captures lowered the boundary) named nothing sent from this copy.
        DELETE FROM webhooks._salts s WHERE s.first_capture_id > boundary;
        INSERT INTO webhooks._salts (first_capture_id, identity) VALUES (boundary + 1, here);
        UPDATE webhooks._installation SET identity = here;
        RAISE LOG 'pgwebhooks: database identity changed to %: events of captures from % on get a new salt',
            here, boundary + 1;
    END IF;
    PERFORM set_config('pgwebhooks.identity_checked', 'on', false);
END
$$;

-- A new install (or one upgraded from 0.1.0) is where it was made.
UPDATE webhooks._installation SET identity = webhooks._database_identity() WHERE identity IS NULL;
UPDATE webhooks._salts SET identity = (SELECT i.identity FROM webhooks._installation i) WHERE identity IS NULL;

-- pg_dump as the database's owner, no superuser needed: it must read every table and sequence
-- here. So the owner can read the secrets and the captured rows (even of tables it may not read
-- itself), as any role that takes complete backups must; webhooks_admin still reads neither.
-- Where the owner installed pgwebhooks it owns all of this and the grants change nothing.
DO $$
DECLARE
    owner text := (SELECT pg_get_userbyid(d.datdba) FROM pg_database d WHERE d.datname = current_database());
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA webhooks TO %I', owner);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA webhooks TO %I', owner);
    EXECUTE format('GRANT SELECT ON ALL SEQUENCES IN SCHEMA webhooks TO %I', owner);
END
$$;

COMMENT ON FUNCTION webhooks._ensure_identity() IS
    'Starts a new event-id salt when the database is a restored or cloned copy; called before deliveries are created';
