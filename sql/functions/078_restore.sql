-- pgwebhooks: backup and restore. A restored copy points what pgwebhooks stored by table oid at
-- its own tables (event ids of a copy: 025_event_ids.sql), and the database's owner can take the
-- backup. Runs after every file that creates a view the owner's grant below must cover.

-- The rows of `tbl` (a table of pgwebhooks' with a `relid` column) moved to the oids `moves`
-- maps theirs to, by delete-and-insert in one statement (`conflict`: what the insert does on a
-- key already there), for _reresolve_tables.
CREATE OR REPLACE FUNCTION webhooks._move_relids(tbl regclass, moves jsonb, conflict text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('WITH gone AS (DELETE FROM %1$s t WHERE $1 ? t.relid::text RETURNING t.*)'
                   ' INSERT INTO %1$s SELECT (jsonb_populate_record(NULL::%1$s,'
                   ' to_jsonb(g) || jsonb_build_object(''relid'', $1 -> g.relid::text))).* FROM gone g %2$s',
                   tbl, conflict)
    USING moves;
END
$$;

-- In a restored copy every table has a new oid: pg_dump keeps names, not oids. What pgwebhooks
-- stored by oid (subscriptions, capture routes, table routes, captures not yet sent, held rows) is
-- pointed at the
-- table of the same name, or a subscription's exclude_columns would no longer be found for the
-- copy's changes and the columns it redacts would be sent. Rows are moved by delete-and-insert in
-- one statement: two tables may have swapped oids, and an UPDATE would collide on the key midway.
-- The capture triggers carry oids in their arguments too: `pgwebhooks migrate` (refresh_triggers)
-- rebuilds them from the subscriptions, which is why a restore ends with it.
CREATE OR REPLACE FUNCTION webhooks._reresolve_tables()
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    moves jsonb;
BEGIN
    SELECT jsonb_object_agg(m.old_relid::text, m.new_relid) INTO moves
    FROM (SELECT DISTINCT s.relid AS old_relid, t.oid AS new_relid
          FROM webhooks.subscriptions s
          CROSS JOIN LATERAL (SELECT to_regclass(s.table_name)::oid AS oid) t
          -- table_name is the name when last subscribed, not kept through renames: another table
          -- may have taken it since. Only a table whose restored capture trigger names this
          -- webhook (or, for a filtered trigger, the old oid) is the subscribed one.
          WHERE t.oid IS NOT NULL
            AND EXISTS (SELECT 1 FROM pg_trigger g
                        WHERE g.tgrelid = t.oid AND g.tgname LIKE 'webhooks\_capture\_%' AND NOT g.tgisinternal
                          AND (strpos(encode(g.tgargs, 'escape'), s.webhook_id::text) > 0
                               OR encode(g.tgargs, 'escape') ~ ('(^|[^0-9])' || s.relid || '::pg_catalog.oid')))) m
    WHERE m.old_relid <> m.new_relid;
    IF moves IS NULL THEN
        RETURN;
    END IF;
    PERFORM webhooks._move_relids('webhooks.subscriptions', moves, '');
    PERFORM webhooks._move_relids('webhooks.capture_routes', moves, 'ON CONFLICT DO NOTHING');
    PERFORM webhooks._move_relids('webhooks.table_routes', moves, '');
    -- Captures and held rows carry their table's name: resolved by it, not through the map.
    -- Changes on a table's route (migration 0023) wait for cursors, not for fan-out: all of them.
    UPDATE webhooks.captures c SET relid = to_regclass(format('%I.%I', c.schema_name, c.table_name))::oid
    WHERE (c.fanned_out < c.row_count OR c.route IS NOT NULL) AND c.relid <> 0
      AND to_regclass(format('%I.%I', c.schema_name, c.table_name)) IS NOT NULL
      AND c.relid <> to_regclass(format('%I.%I', c.schema_name, c.table_name))::oid;
    UPDATE webhooks.captures c SET relid = to_regclass(format('%I.%I', c.schema_name, c.table_name))::oid
    FROM webhooks.deliveries d
    WHERE d.capture_id = c.id AND d.status IN ('pending', 'leased') AND c.relid <> 0
      AND to_regclass(format('%I.%I', c.schema_name, c.table_name)) IS NOT NULL
      AND c.relid <> to_regclass(format('%I.%I', c.schema_name, c.table_name))::oid;
    UPDATE webhooks.held_rows h SET relid = to_regclass(format('%I.%I', h.schema_name, h.table_name))::oid
    WHERE to_regclass(format('%I.%I', h.schema_name, h.table_name)) IS NOT NULL
      AND h.relid <> to_regclass(format('%I.%I', h.schema_name, h.table_name))::oid;
    RAISE LOG 'pgwebhooks: restored copy: table oids re-resolved by name: %', moves;
END
$$;

COMMENT ON FUNCTION webhooks._reresolve_tables IS
    'In a restored copy, points what pgwebhooks stored by table oid at the table of the same name';

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
