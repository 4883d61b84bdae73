-- pgwebhooks 004: capture triggers.
--
-- Each watched table gets one AFTER ... FOR EACH STATEMENT trigger per subscribed operation, with
-- transition tables, so a bulk write costs one set-based INSERT into the outbox rather than one
-- function call per row. (PostgreSQL allows transition tables only on single-event triggers.)
-- A statement-level UPDATE pairs old and new rows by primary key; a table without one gets a
-- row-level UPDATE trigger instead. Row images are taken with to_jsonb(row) when the trigger
-- fires, so added, dropped and renamed columns need nothing.
--
-- The trigger functions are SECURITY DEFINER: application roles write to their tables and the
-- outbox fills, but they have no privilege on the outbox itself.

-- The enabled webhooks that want `operation` on table `relid`.
CREATE OR REPLACE FUNCTION webhooks._subscribers(relid oid, operation text)
RETURNS uuid[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT array_agg(s.webhook_id)
    FROM webhooks.subscriptions s
    JOIN webhooks.webhooks w ON w.id = s.webhook_id
    WHERE s.relid = _subscribers.relid AND operation = ANY (s.operations) AND w.enabled
$$;

-- "n.id = o.id AND n.tenant = o.tenant" for the primary key of `relid`, or NULL without one.
-- Read at fire time so that a key changed by ALTER TABLE is followed.
CREATE OR REPLACE FUNCTION webhooks._primary_key_join(relid oid)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(format('n.%1$I = o.%1$I', a.attname), ' AND ' ORDER BY a.attnum)
    FROM pg_index i
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
    WHERE i.indrelid = relid AND i.indisprimary
$$;

CREATE OR REPLACE FUNCTION webhooks._capture_statement()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    hooks uuid[] := webhooks._subscribers(TG_RELID, TG_OP);
    key_join text;
BEGIN
    IF hooks IS NULL THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        WITH event AS (
            INSERT INTO webhooks.events (operation, relid, schema_name, table_name, record)
            SELECT 'INSERT', TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, to_jsonb(n) FROM new_rows n
            RETURNING id
        )
        INSERT INTO webhooks.deliveries (event_id, webhook_id)
        SELECT event.id, hook FROM event, unnest(hooks) AS hook;
    ELSIF TG_OP = 'DELETE' THEN
        WITH event AS (
            INSERT INTO webhooks.events (operation, relid, schema_name, table_name, record)
            SELECT 'DELETE', TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, to_jsonb(o) FROM old_rows o
            RETURNING id
        )
        INSERT INTO webhooks.deliveries (event_id, webhook_id)
        SELECT event.id, hook FROM event, unnest(hooks) AS hook;
    ELSE
        -- An UPDATE that changes the primary key itself finds no partner: it is still sent,
        -- with old_record null, rather than lost.
        key_join := coalesce(webhooks._primary_key_join(TG_RELID), 'false');
        EXECUTE format($sql$
            WITH event AS (
                INSERT INTO webhooks.events (operation, relid, schema_name, table_name, record, old_record)
                SELECT 'UPDATE', $1, $2, $3, to_jsonb(n), to_jsonb(o)
                FROM new_rows n LEFT JOIN old_rows o ON %s
                RETURNING id
            )
            INSERT INTO webhooks.deliveries (event_id, webhook_id)
            SELECT event.id, hook FROM event, unnest($4) AS hook
        $sql$, key_join)
        USING TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, hooks;
    END IF;
    -- Identical notifications in one transaction are folded into one, sent at commit.
    PERFORM pg_notify('webhooks', '');
    RETURN NULL;
END
$$;

-- UPDATE on a table without a primary key: old and new rows can only be paired row by row.
CREATE OR REPLACE FUNCTION webhooks._capture_row()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    hooks uuid[] := webhooks._subscribers(TG_RELID, TG_OP);
    event_id bigint;
BEGIN
    IF hooks IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhooks.events (operation, relid, schema_name, table_name, record, old_record)
    VALUES (TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, to_jsonb(NEW), to_jsonb(OLD))
    RETURNING id INTO event_id;
    INSERT INTO webhooks.deliveries (event_id, webhook_id)
    SELECT event_id, hook FROM unnest(hooks) AS hook;
    PERFORM pg_notify('webhooks', '');
    RETURN NULL;
END
$$;

-- Make the capture triggers on `relid` match its subscriptions: create the missing ones, drop
-- the ones no longer needed. Called by every management function that changes subscriptions.
CREATE OR REPLACE FUNCTION webhooks._sync_triggers(relid oid)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    op text;
    trigger_name text;
    wanted boolean;
    present boolean;
    has_key boolean;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = relid) THEN
        RETURN;  -- the table was dropped, and its triggers with it
    END IF;
    has_key := EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = relid AND i.indisprimary);
    FOREACH op IN ARRAY ARRAY['INSERT', 'UPDATE', 'DELETE'] LOOP
        trigger_name := 'webhooks_capture_' || lower(op);
        wanted := EXISTS (SELECT 1 FROM webhooks.subscriptions s
                          WHERE s.relid = _sync_triggers.relid AND op = ANY (s.operations));
        present := EXISTS (SELECT 1 FROM pg_trigger t
                           WHERE t.tgrelid = _sync_triggers.relid AND t.tgname = trigger_name);
        IF wanted AND NOT present THEN
            EXECUTE CASE
                WHEN op = 'INSERT' THEN format(
                    'CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                    'FOR EACH STATEMENT EXECUTE FUNCTION webhooks._capture_statement()',
                    trigger_name, relid::regclass)
                WHEN op = 'DELETE' THEN format(
                    'CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                    'FOR EACH STATEMENT EXECUTE FUNCTION webhooks._capture_statement()',
                    trigger_name, relid::regclass)
                WHEN has_key THEN format(
                    'CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                    'FOR EACH STATEMENT EXECUTE FUNCTION webhooks._capture_statement()',
                    trigger_name, relid::regclass)
                ELSE format(
                    'CREATE TRIGGER %I AFTER UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION webhooks._capture_row()',
                    trigger_name, relid::regclass)
            END;
        ELSIF present AND NOT wanted THEN
            EXECUTE format('DROP TRIGGER %I ON %s', trigger_name, relid::regclass);
        END IF;
    END LOOP;
END
$$;
