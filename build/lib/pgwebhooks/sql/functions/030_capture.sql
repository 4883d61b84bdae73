-- pgwebhooks 004: capture triggers.
--
-- Each watched table gets one AFTER ... FOR EACH STATEMENT trigger per subscribed operation, with
-- transition tables, so a bulk write costs one set-based INSERT into the outbox rather than one
-- function call per row. (PostgreSQL allows transition tables only on single-event triggers.)
-- A statement-level UPDATE pairs old and new rows by primary key; a table without one gets a
-- row-level UPDATE trigger instead. Row images are taken with row_to_json(row) when the trigger
-- fires, so added, dropped and renamed columns need nothing.
--
-- The trigger's argument is the array of webhooks subscribed to that table and operation, written
-- by _sync_triggers() whenever subscriptions change: capturing needs no lookup at all. Whether a
-- webhook is enabled is decided later, at fan-out (see claim()).
--
-- The trigger functions are SECURITY DEFINER, owned by webhooks_capture: application roles write
-- to their tables and the outbox fills, but they have no privilege on the outbox itself, and the
-- functions can do nothing but add to it.

-- "new_row.id OPERATOR(pg_catalog.=) old_row.id AND ..." for the primary key of `relid`, or NULL
-- without one. Each column is compared with the equality operator of its index's operator class,
-- named with its schema, so the caller's search_path cannot substitute another. Read at fire time
-- so that a key changed by ALTER TABLE is followed.
CREATE OR REPLACE FUNCTION webhooks._primary_key_join(relid oid)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(CASE
               WHEN has_schema_privilege(ns.oid, 'USAGE')
               THEN format('new_row.%1$I OPERATOR(%2$I.%3$s) old_row.%1$I', a.attname, ns.nspname, op.oprname)
               -- The operator's schema is out of the capture role's reach (say citext installed in
               -- a locked-down schema): compare text forms rather than fail the application's UPDATE.
               ELSE format('new_row.%1$I::pg_catalog.text OPERATOR(pg_catalog.=) old_row.%1$I::pg_catalog.text',
                           a.attname)
           END, ' AND ' ORDER BY k.ord)
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey::int2[], i.indclass::oid[]) WITH ORDINALITY AS k(attnum, opclass, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    JOIN pg_opclass oc ON oc.oid = k.opclass
    JOIN pg_amop ao ON ao.amopfamily = oc.opcfamily AND ao.amopstrategy = 3
                   AND ao.amoplefttype = oc.opcintype AND ao.amoprighttype = oc.opcintype
                   AND ao.amopmethod = oc.opcmethod
    JOIN pg_operator op ON op.oid = ao.amopopr
    JOIN pg_namespace ns ON ns.oid = op.oprnamespace
    WHERE i.indrelid = relid AND i.indisprimary
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
    this_capture pg_catalog.int8 := pg_catalog.nextval('webhooks.captures_id_seq'::pg_catalog.regclass);
    captured pg_catalog.int4;
    key_join pg_catalog.text;
BEGIN
    -- The common single-row write first, in one statement: the row image travels inline in the
    -- capture, and the statement inserts nothing unless exactly one row changed. (A separate
    -- count, then an insert, cost 7% of a one-row transaction's throughput.)
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        INSERT INTO webhooks.captures (id, operation, relid, schema_name, table_name, webhook_ids, row_count, record)
        SELECT this_capture, TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]::pg_catalog.uuid[], 1,
               pg_catalog.row_to_json(new_row.*)
        FROM new_rows new_row
        WHERE (SELECT pg_catalog.count(*) FROM new_rows) OPERATOR(pg_catalog.=) 1;
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        INSERT INTO webhooks.captures (id, operation, relid, schema_name, table_name, webhook_ids, row_count, record)
        SELECT this_capture, TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]::pg_catalog.uuid[], 1,
               pg_catalog.row_to_json(old_row.*)
        FROM old_rows old_row
        WHERE (SELECT pg_catalog.count(*) FROM old_rows) OPERATOR(pg_catalog.=) 1;
    ELSE
        -- One row on each side: they are the same row, whatever its key did.
        INSERT INTO webhooks.captures (id, operation, relid, schema_name, table_name, webhook_ids, row_count,
                                       record, old_record)
        SELECT this_capture, TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]::pg_catalog.uuid[], 1,
               pg_catalog.row_to_json(new_row.*), pg_catalog.row_to_json(old_row.*)
        FROM new_rows new_row, old_rows old_row
        WHERE (SELECT pg_catalog.count(*) FROM new_rows) OPERATOR(pg_catalog.=) 1;
    END IF;
    GET DIAGNOSTICS captured = ROW_COUNT;

    IF captured OPERATOR(pg_catalog.=) 0 THEN
        -- No row, or several: one events row per changed row, then the capture that counts them.
        IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
            INSERT INTO webhooks.events (capture_id, n, record)
            SELECT this_capture, pg_catalog.row_number() OVER (), pg_catalog.row_to_json(new_row.*)
            FROM new_rows new_row;
        ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
            INSERT INTO webhooks.events (capture_id, n, record)
            SELECT this_capture, pg_catalog.row_number() OVER (), pg_catalog.row_to_json(old_row.*)
            FROM old_rows old_row;
        ELSE
            -- Pair old and new rows by primary key. A row whose key itself changed finds no
            -- partner: it is still sent, with old_record null, rather than lost.
            key_join := coalesce(webhooks._primary_key_join(TG_RELID), 'false');
            EXECUTE pg_catalog.format(
                'INSERT INTO webhooks.events (capture_id, n, record, old_record)'
                ' SELECT $1, pg_catalog.row_number() OVER (), pg_catalog.row_to_json(new_row.*),'
                ' pg_catalog.row_to_json(old_row.*)'
                ' FROM new_rows new_row LEFT JOIN old_rows old_row ON %s', key_join)
            USING this_capture;
        END IF;
        GET DIAGNOSTICS captured = ROW_COUNT;
        IF captured OPERATOR(pg_catalog.=) 0 THEN
            RETURN NULL;  -- an empty statement: nothing to send, no wake-up
        END IF;
        INSERT INTO webhooks.captures (id, operation, relid, schema_name, table_name, webhook_ids, row_count)
        VALUES (this_capture, TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]::pg_catalog.uuid[], captured);
    END IF;
    -- Identical notifications in one transaction are folded into one, sent at commit.
    PERFORM pg_catalog.pg_notify('webhooks', '');
    RETURN NULL;
END
$$;

-- UPDATE on a table without a primary key: old and new rows can only be paired row by row.
CREATE OR REPLACE FUNCTION webhooks._capture_row()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    INSERT INTO webhooks.captures (id, operation, relid, schema_name, table_name, webhook_ids, row_count,
                                   record, old_record)
    VALUES (pg_catalog.nextval('webhooks.captures_id_seq'::pg_catalog.regclass), TG_OP, TG_RELID,
            TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]::pg_catalog.uuid[], 1,
            pg_catalog.row_to_json(NEW), pg_catalog.row_to_json(OLD));
    PERFORM pg_catalog.pg_notify('webhooks', '');
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
REVOKE CREATE ON SCHEMA webhooks FROM webhooks_capture;

-- Make the capture triggers on `relid` match its subscriptions: one per subscribed operation,
-- carrying the subscribed webhooks, none for the others. Called by every management function
-- that changes subscriptions.
CREATE OR REPLACE FUNCTION webhooks._sync_triggers(relid oid)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    op text;
    trigger_name text;
    hooks uuid[];
    has_key boolean;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = relid) THEN
        RETURN;  -- the table was dropped, and its triggers with it
    END IF;
    has_key := EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = relid AND i.indisprimary);
    FOREACH op IN ARRAY ARRAY['INSERT', 'UPDATE', 'DELETE'] LOOP
        trigger_name := 'webhooks_capture_' || lower(op);
        SELECT array_agg(s.webhook_id ORDER BY s.webhook_id) INTO hooks
        FROM webhooks.subscriptions s
        WHERE s.relid = _sync_triggers.relid AND op = ANY (s.operations);
        IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = _sync_triggers.relid AND t.tgname = trigger_name) THEN
            EXECUTE format('DROP TRIGGER %I ON %s', trigger_name, relid::regclass);
        END IF;
        IF hooks IS NOT NULL THEN
            EXECUTE format(
                'CREATE TRIGGER %I AFTER %s ON %s %s EXECUTE FUNCTION webhooks.%s(%L)',
                trigger_name, op, relid::regclass,
                CASE
                    WHEN op = 'INSERT' THEN 'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT'
                    WHEN op = 'DELETE' THEN 'REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT'
                    WHEN has_key THEN 'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT'
                    ELSE 'FOR EACH ROW'
                END,
                CASE WHEN op = 'UPDATE' AND NOT has_key THEN '_capture_row' ELSE '_capture_statement' END,
                hooks::text);
        END IF;
    END LOOP;
END
$$;
