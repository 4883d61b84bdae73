-- pgwebhooks: capture triggers.
--
-- Each watched table gets one AFTER ... FOR EACH STATEMENT trigger per subscribed operation, with
-- transition tables, so a bulk write costs one set-based INSERT into the outbox rather than one
-- function call per row. (PostgreSQL allows transition tables only on single-event triggers.)
-- A statement-level UPDATE pairs old and new rows by primary key; a table without one gets a
-- row-level UPDATE trigger instead. Row images are taken with row_to_json(row) when the trigger
-- fires, so added, dropped and renamed columns need nothing.
--
-- The trigger's argument is the array of webhooks subscribed to that table and operation, written
-- by _sync_triggers() (034_sync_triggers.sql) whenever subscriptions change: capturing needs no
-- lookup at all. Whether a webhook is enabled is decided later, at fan-out (see claim()).
--
-- The trigger functions are SECURITY DEFINER, owned by webhooks_capture: application roles write
-- to their tables and the outbox fills, but they have no privilege on the outbox itself, and the
-- functions can do nothing but add to it.

-- Taking a row image can run code the table's owner wrote: row_to_json turns a column of a
-- user-defined type (an enum, a range, a base type) into JSON through a cast to json when the
-- type's owner created one. In a capture trigger that code would run with the capture role's
-- rights, which may append to the outbox: a table owner could forge signed events for any
-- webhook. So the capture checks (per statement, one index probe of pg_attribute) whether the
-- table has a column of a type that is not built in, and if so takes its images read-only: in a
-- subtransaction that sets transaction_read_only and is then rolled back on purpose (SQLSTATE
-- WHR00), which restores read-write while the images stay in PL/pgSQL variables. Code run
-- meanwhile can write nothing. (A function-level SET transaction_read_only would be simpler;
-- PostgreSQL 16 and later refuse it.) Built-in types cannot get new casts (CREATE CAST needs the
-- type's owner), so tables of built-in types keep the direct, faster path.
-- The probe reads pg_attribute through a snapshot, while row_to_json follows the table's current
-- columns. Under READ COMMITTED the snapshot is taken after the write locked the table, so it
-- sees every ALTER TABLE that could have changed them. A REPEATABLE READ or SERIALIZABLE writer
-- keeps its first snapshot: the owner could take it, add a column of a forging type from another
-- session, then write, and the probe would still answer "built-in only". So writes in those
-- isolation levels always take their images read-only.

-- Whether a capture of `relid` must take its images read-only (see above). PL/pgSQL,
-- not SQL: its plan is cached for the session (a SQL function is planned on every call, which
-- cost a one-row insert two thirds of its throughput).
CREATE OR REPLACE FUNCTION webhooks._needs_guarded_images(relid oid)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed'
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                   WHERE a.attrelid OPERATOR(pg_catalog.=) relid AND a.attnum OPERATOR(pg_catalog.>) 0
                     AND a.atttypid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid);
END
$$;

-- The probe, given its table as a constant and folded into the plan of that table's own capture
-- function (_table_capture_function): the planner evaluates an IMMUTABLE function of constants
-- once, and the answer stays in the cached plan. It is not immutable, but the plan is dropped
-- whenever the answer can change: any ALTER TABLE on the table invalidates every cached plan
-- whose query names it, and a regclass constant counts as naming it. A plan made under READ
-- COMMITTED reads the catalog through a snapshot taken after the write locked the table (so
-- after any such ALTER TABLE); one made in a REPEATABLE READ or SERIALIZABLE transaction could
-- read an older one, so there the answer is "guarded", kept for the plan's life: slower, never
-- unsafe, for the session's later READ COMMITTED writes until the next ALTER TABLE.
CREATE OR REPLACE FUNCTION webhooks._guarded_columns(tbl regclass)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN webhooks._needs_guarded_images(tbl::pg_catalog.oid);
END
$$;

-- Where a one-row change goes, from its trigger's arguments (see _capture_statement): on the
-- route the second one names, with its transaction id, to no webhook by name and with nothing to
-- fan out; without a route (a trigger made before migration 0023), to the webhooks the first
-- names, by fan-out. A SQL function of one SELECT, inlined into the capture's INSERT.
CREATE OR REPLACE FUNCTION webhooks._one_row_route(argv text[])
RETURNS TABLE (webhook_ids uuid[], fanned_out integer, route integer, xid xid8)
LANGUAGE sql STABLE
AS $$
    -- TG_ARGV counts from 0.
    -- An empty ARRAY[] folds to a constant where '{}' would be parsed on every call.
    SELECT CASE WHEN argv[1] IS NULL THEN argv[0]::pg_catalog.uuid[] ELSE ARRAY[]::pg_catalog.uuid[] END,
           CASE WHEN argv[1] IS NULL THEN 0 ELSE 1 END,
           argv[1]::pg_catalog.int4,
           CASE WHEN argv[1] IS NOT NULL THEN pg_catalog.pg_current_xact_id() END
$$;

-- Both capture functions run inside every watched write, so they skip `SET search_path` (it
-- costs a GUC save and restore per call, a third of a single-row insert's time) and instead
-- name everything with its schema, operators included: as SECURITY DEFINER functions they must
-- not resolve anything through the caller's search_path.
CREATE OR REPLACE FUNCTION webhooks._capture_statement()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
DECLARE
    this_capture pg_catalog.int8;
    captured pg_catalog.int4;
    key_join pg_catalog.text;
    new_images pg_catalog.json;
    old_images pg_catalog.json;
    taken pg_catalog.bool := false;
BEGIN
    -- The common write first, in one statement: the row image travels inline in the capture, and
    -- nothing is inserted (no capture id drawn) unless exactly one row changed and every column is
    -- of a built-in type (the probe above, here a one-time filter: as statements of their own, the
    -- count and the probe cost a one-row write 7 us of its 25). Then a NOTIFY if a runner waits
    -- for one (028_wakeups.sql). It goes on its trigger's route for the cursors (_one_row_route).
    -- A watched table's own copy of this function has each marked probe folded into its plan
    -- (_table_capture_function, 034_sync_triggers.sql).
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count, fanned_out,
                                       record, route, xid)
        SELECT TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, routed.webhook_ids, 1, routed.fanned_out,
               pg_catalog.row_to_json(new_row.*), routed.route, routed.xid
        FROM new_rows new_row, webhooks._one_row_route(TG_ARGV) routed
        WHERE NOT EXISTS (SELECT FROM new_rows OFFSET 1)
          AND pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.=) 'read committed'
          AND /*probe*/ NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) TG_RELID
            AND a.attnum OPERATOR(pg_catalog.>) 0 AND a.atttypid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid) /*probe end*/;
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count, fanned_out,
                                       record, route, xid)
        SELECT TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, routed.webhook_ids, 1, routed.fanned_out,
               pg_catalog.row_to_json(old_row.*), routed.route, routed.xid
        FROM old_rows old_row, webhooks._one_row_route(TG_ARGV) routed
        WHERE NOT EXISTS (SELECT FROM old_rows OFFSET 1)
          AND pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.=) 'read committed'
          AND /*probe*/ NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) TG_RELID
            AND a.attnum OPERATOR(pg_catalog.>) 0 AND a.atttypid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid) /*probe end*/;
    ELSE
        -- One row on each side: they are the same row, whatever its key did.
        INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count, fanned_out,
                                       record, old_record, route, xid)
        SELECT TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, routed.webhook_ids, 1, routed.fanned_out,
               pg_catalog.row_to_json(new_row.*), pg_catalog.row_to_json(old_row.*), routed.route, routed.xid
        FROM new_rows new_row, old_rows old_row, webhooks._one_row_route(TG_ARGV) routed
        WHERE NOT EXISTS (SELECT FROM new_rows OFFSET 1)
          AND pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.=) 'read committed'
          AND /*probe*/ NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) TG_RELID
            AND a.attnum OPERATOR(pg_catalog.>) 0 AND a.atttypid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid) /*probe end*/;
    END IF;
    IF FOUND THEN
        -- _wake_runners(), inline.
        IF pg_catalog.pg_sequence_last_value('webhooks._runners_waiting'::pg_catalog.regclass) OPERATOR(pg_catalog.>) 0 THEN
            PERFORM pg_catalog.pg_notify('webhooks', '');
        END IF;
        RETURN NULL;
    END IF;
    -- No row, or several, or one taken read-only: counted first, so an empty statement costs no
    -- more (webhooks_capture may not read the events it writes: no INSERT ... RETURNING counts).
    IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        captured := (SELECT pg_catalog.count(*) FROM old_rows);
    ELSE
        captured := (SELECT pg_catalog.count(*) FROM new_rows);
    END IF;
    IF captured OPERATOR(pg_catalog.=) 0 THEN
        RETURN NULL;  -- an empty statement: nothing to send, no wake-up, no capture id spent
    END IF;
    this_capture := pg_catalog.nextval('webhooks.captures_id_seq'::pg_catalog.regclass);
    -- _needs_guarded_images(TG_RELID), inline.
    -- (A table's own copy also comes here for a table not its own: see _table_capture_function.)
    IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed' /*own table*/
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
               WHERE a.attrelid OPERATOR(pg_catalog.=) TG_RELID AND a.attnum OPERATOR(pg_catalog.>) 0
                 AND a.atttypid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid) THEN
        BEGIN
            PERFORM pg_catalog.set_config('transaction_read_only', 'on', true);
            IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
                new_images := pg_catalog.to_json((SELECT pg_catalog.array_agg(new_row) FROM new_rows new_row));
            ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
                old_images := pg_catalog.to_json((SELECT pg_catalog.array_agg(old_row) FROM old_rows old_row));
            ELSE
                -- Paired as below; the one row of a single-row UPDATE pairs with itself.
                key_join := CASE WHEN captured OPERATOR(pg_catalog.=) 1 THEN 'true'
                                 ELSE coalesce(webhooks._primary_key_join(TG_RELID), 'false') END;
                EXECUTE pg_catalog.format(
                    'WITH n AS (SELECT pg_catalog.row_number() OVER () AS ord, new_row FROM new_rows new_row),'
                    ' o AS (SELECT old_row FROM old_rows old_row)'
                    ' SELECT pg_catalog.to_json(pg_catalog.array_agg(n.new_row ORDER BY n.ord)),'
                    ' pg_catalog.to_json(pg_catalog.array_agg(o.old_row ORDER BY n.ord))'
                    ' FROM n LEFT JOIN o ON %s', key_join)
                INTO new_images, old_images;
            END IF;
            taken := true;
            RAISE EXCEPTION USING ERRCODE = 'WHR00';
        EXCEPTION WHEN SQLSTATE 'WHR00' THEN
            -- Read-write again; the images are kept. The owner's code raising WHR00 itself must
            -- not turn the capture into a silent nothing.
            IF NOT taken THEN
                RAISE;
            END IF;
        END;
        PERFORM webhooks._capture_guarded(this_capture, TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0],
                                          new_images, old_images);
        RETURN NULL;
    END IF;
    -- The row images in chunks of 16 rows per events row (migration 0019;
    -- `n` is the chunk's first row), then the capture that counts them. The aggregate's ORDER BY
    -- is what ties each image to its row number: the planner may regroup the rows in any order.
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        INSERT INTO webhooks.events (capture_id, n, records)
        SELECT this_capture, pg_catalog.min(r.n), pg_catalog.array_agg(r.image ORDER BY r.n)
        FROM (SELECT pg_catalog.row_number() OVER () AS n, pg_catalog.row_to_json(new_row.*)::pg_catalog.text AS image
              FROM new_rows new_row) r
        GROUP BY (r.n OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog./) 16;
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        INSERT INTO webhooks.events (capture_id, n, records)
        SELECT this_capture, pg_catalog.min(r.n), pg_catalog.array_agg(r.image ORDER BY r.n)
        FROM (SELECT pg_catalog.row_number() OVER () AS n, pg_catalog.row_to_json(old_row.*)::pg_catalog.text AS image
              FROM old_rows old_row) r
        GROUP BY (r.n OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog./) 16;
    ELSE
        -- Pair old and new rows by their key. A row whose key itself changed finds no
        -- partner: it is still sent, with old_record null, rather than lost.
        key_join := coalesce(webhooks._primary_key_join(TG_RELID), 'false');
        EXECUTE pg_catalog.format(
            'INSERT INTO webhooks.events (capture_id, n, records, old_records)'
            ' SELECT $1, pg_catalog.min(r.n), pg_catalog.array_agg(r.image ORDER BY r.n),'
            ' pg_catalog.array_agg(r.old_image ORDER BY r.n)'
            ' FROM (SELECT pg_catalog.row_number() OVER () AS n, pg_catalog.row_to_json(n.new_row)::pg_catalog.text AS image,'
            ' pg_catalog.row_to_json(o.old_row)::pg_catalog.text AS old_image'
            ' FROM (SELECT new_row FROM new_rows new_row) n'
            ' LEFT JOIN (SELECT old_row FROM old_rows old_row) o ON %s) r'
            ' GROUP BY (r.n OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog./) 16', key_join)
        USING this_capture;
    END IF;
    INSERT INTO webhooks.captures (id, operation, relid, schema_name, table_name, webhook_ids, row_count)
    VALUES (this_capture, TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]::pg_catalog.uuid[], captured);
    PERFORM webhooks._wake_runners();
    RETURN NULL;
END
$$;

-- The rest of a capture whose images were taken read-only: `new_images` and `old_images` are JSON
-- arrays of the statement's rows (NULL for the side an operation does not have); an UPDATE's are
-- paired by position (null where a row's key changed and it found no partner).
CREATE OR REPLACE FUNCTION webhooks._capture_guarded(
    this_capture bigint, operation text, relid oid, schema_name name, table_name name, webhook_ids text,
    new_images json, old_images json)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    images pg_catalog.json := CASE WHEN operation OPERATOR(pg_catalog.=) 'DELETE' THEN old_images ELSE new_images END;
    captured pg_catalog.int4 := pg_catalog.json_array_length(images);
BEGIN
    IF captured IS NULL OR captured OPERATOR(pg_catalog.=) 0 THEN
        RETURN;
    END IF;
    IF captured OPERATOR(pg_catalog.=) 1 THEN
        INSERT INTO webhooks.captures (id, operation, relid, schema_name, table_name, webhook_ids, row_count,
                                       record, old_record)
        VALUES (this_capture, operation, relid, schema_name, table_name, webhook_ids::pg_catalog.uuid[], 1,
                images OPERATOR(pg_catalog.->) 0,
                CASE WHEN operation OPERATOR(pg_catalog.=) 'UPDATE' THEN old_images OPERATOR(pg_catalog.->) 0 END);
    ELSE
        INSERT INTO webhooks.events (capture_id, n, record, old_record)
        SELECT this_capture, i.n, i.record,
               -- An unpaired row's old image is JSON null: stored as SQL NULL, like the direct path's.
               CASE WHEN operation OPERATOR(pg_catalog.=) 'UPDATE'
                         AND o.record::pg_catalog.text OPERATOR(pg_catalog.<>) 'null' THEN o.record END
        FROM pg_catalog.json_array_elements(images) WITH ORDINALITY AS i(record, n)
        LEFT JOIN pg_catalog.json_array_elements(old_images) WITH ORDINALITY AS o(record, n)
               ON o.n OPERATOR(pg_catalog.=) i.n;
        INSERT INTO webhooks.captures (id, operation, relid, schema_name, table_name, webhook_ids, row_count)
        VALUES (this_capture, operation, relid, schema_name, table_name, webhook_ids::pg_catalog.uuid[], captured);
    END IF;
    PERFORM webhooks._wake_runners();
END
$$;

-- Row by row, where statements cannot be used: UPDATE on a table without a usable key (old and
-- new rows can only be paired row by row), and partitioned tables. A partitioned table's
-- statement triggers do not fire for writes made straight into a partition, while its row
-- triggers are cloned to every partition, attached later ones included; TG_ARGV[1] = 'root'
-- then reports the change under the partitioned table the webhook watches.
CREATE OR REPLACE FUNCTION webhooks._capture_row()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
DECLARE
    images pg_catalog.json;
    taken pg_catalog.bool := false;
    record pg_catalog.json;
    old_record pg_catalog.json;
    relid pg_catalog.oid := TG_RELID;
    schema_name pg_catalog.name := TG_TABLE_SCHEMA;
    table_name pg_catalog.name := TG_TABLE_NAME;
BEGIN
    IF webhooks._needs_guarded_images(TG_RELID) THEN
        BEGIN  -- read-only while the owner's code may run; see _capture_statement
            PERFORM pg_catalog.set_config('transaction_read_only', 'on', true);
            images := pg_catalog.to_json(ARRAY[NEW, OLD]);
            taken := true;
            RAISE EXCEPTION USING ERRCODE = 'WHR00';
        EXCEPTION WHEN SQLSTATE 'WHR00' THEN
            IF NOT taken THEN
                RAISE;  -- raised by the owner's code, not by us: see _capture_statement
            END IF;
        END;
        record := images OPERATOR(pg_catalog.->) CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN 1 ELSE 0 END;
        old_record := images OPERATOR(pg_catalog.->) 1;
    ELSE
        record := pg_catalog.row_to_json(CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN OLD ELSE NEW END);
        old_record := pg_catalog.row_to_json(OLD);
    END IF;
    IF TG_NARGS OPERATOR(pg_catalog.>) 1 AND TG_ARGV[1] OPERATOR(pg_catalog.=) 'root' THEN
        relid := pg_catalog.pg_partition_root(TG_RELID::pg_catalog.regclass);
        SELECT n.nspname, c.relname INTO schema_name, table_name
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
        WHERE c.oid OPERATOR(pg_catalog.=) relid;
    END IF;
    INSERT INTO webhooks.captures (id, operation, relid, schema_name, table_name, webhook_ids, row_count,
                                   record, old_record)
    VALUES (pg_catalog.nextval('webhooks.captures_id_seq'::pg_catalog.regclass), TG_OP, relid,
            schema_name, table_name, TG_ARGV[0]::pg_catalog.uuid[], 1,
            -- A DELETE's row is kept in `record` (the payload repeats it as old_record).
            record, CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN old_record END);
    PERFORM webhooks._wake_runners();
    RETURN NULL;
END
$$;

-- TRUNCATE, when subscribed: one event per statement, with no record (the rows are not read).
CREATE OR REPLACE FUNCTION webhooks._capture_truncate()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    INSERT INTO webhooks.captures (id, operation, relid, schema_name, table_name, webhook_ids, row_count)
    VALUES (pg_catalog.nextval('webhooks.captures_id_seq'::pg_catalog.regclass), TG_OP, TG_RELID,
            TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]::pg_catalog.uuid[], 1);
    PERFORM webhooks._wake_runners();
    RETURN NULL;
END
$$;

-- A non-superuser installer (a managed platform's database owner with CREATEROLE) may only give
-- a function to a role it belongs to, and that role must be allowed to create in the schema:
-- join webhooks_capture (CREATEROLE may grant it), and lend it CREATE for the two statements.
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'webhooks_capture', 'USAGE') THEN
        EXECUTE format('GRANT webhooks_capture TO %I', current_user);
    END IF;
END
$$;

GRANT CREATE ON SCHEMA webhooks TO webhooks_capture;

ALTER FUNCTION webhooks._capture_statement() OWNER TO webhooks_capture;

ALTER FUNCTION webhooks._capture_row() OWNER TO webhooks_capture;

ALTER FUNCTION webhooks._capture_truncate() OWNER TO webhooks_capture;

REVOKE CREATE ON SCHEMA webhooks FROM webhooks_capture;

-- The capture functions run as webhooks_capture; these are the helpers they call.
GRANT EXECUTE ON FUNCTION webhooks._primary_key_join, webhooks._pairing_index, webhooks._needs_guarded_images,
    webhooks._guarded_columns, webhooks._capture_guarded, webhooks._one_row_route
TO webhooks_capture;

COMMENT ON TABLE webhooks.captures IS
    'Outbox, step 1: one row per captured statement (single-row changes inline), written in the writer''s transaction.';

COMMENT ON TABLE webhooks.events IS
    'Outbox: the row images of multi-row statements, up to 16 rows per row (records), stored once however many webhooks receive them.';
