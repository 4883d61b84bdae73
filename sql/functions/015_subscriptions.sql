-- pgwebhooks: subscriptions. What a webhook's `events` say, parsed and checked (table entries
-- resolved to oids, event types checked against the catalogue), and which webhooks receive each
-- published event type, kept current in event_types.webhook_ids.

-- _parse_events gained an event_type column and capture filters in 0.2.
DROP FUNCTION IF EXISTS webhooks._parse_events(jsonb);

-- An event type name: dotted lowercase, like order.completed.
CREATE OR REPLACE FUNCTION webhooks._check_event_type_name(field text, name text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF name IS NULL OR name !~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$' OR length(name) > 200 THEN
        PERFORM webhooks._fail('WH020', field, format('%s is not an event type name; expected dotted lowercase '
            'words like "order.completed" (at most 200 characters)', coalesce(to_json(name)::text, 'null')));
    END IF;
END
$$;

-- A declared event type, or WH021.
CREATE OR REPLACE FUNCTION webhooks._check_event_type_declared(field text, name text)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webhooks._check_event_type_name(field, name);
    IF NOT EXISTS (SELECT 1 FROM webhooks.event_types t WHERE t.name = _check_event_type_declared.name) THEN
        PERFORM webhooks._fail('WH021', field, format('event type %L is not declared', name),
            'declare it first with webhooks.create_event_type(name)');
    END IF;
END
$$;

-- `events` as given by the user, checked and resolved to table oids:
-- [{"table": "users" | "schema.table", "operations": ["INSERT", "UPDATE", "DELETE", "TRUNCATE"],
--   "event_type": "user.changed", "columns": [...], "exclude_columns": [...], "where": "..."},
--  {"event_type": "order.completed" | "order.*" | "*"}, ...]
-- Operations default to INSERT, UPDATE and DELETE (TRUNCATE is asked for by name). A table entry's
-- optional event_type is the declared type its changes are sent as; an entry with only an
-- event_type subscribes to published events (relid NULL, event_type the pattern, no filters).
-- Table entries may carry capture filters, returned in the filter columns.
-- One entry of `events` as an object (a string entry is an event type or pattern), with known
-- keys and a string event_type.
CREATE OR REPLACE FUNCTION webhooks._events_entry(field text, item jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Flux-style ["order.completed", "user.*"]: a string is an event type or pattern, never
    -- a table (table entries carry operations and filters; a bare name would be ambiguous).
    IF jsonb_typeof(item) = 'string' THEN
        IF strpos(item #>> '{}', '.') = 0 AND item #>> '{}' <> '*' THEN
            PERFORM webhooks._fail('WH004', field, format('%s is not an event type (a string entry is a type '
                'like "order.completed" or a pattern like "order.*"); to watch a table write {"table": %s}',
                item, item));
        END IF;
        item := jsonb_build_object('event_type', item);
    END IF;
    IF jsonb_typeof(item) <> 'object' THEN
        PERFORM webhooks._fail('WH004', field, format('must be an object, got %s', item));
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_object_keys(item) k
               WHERE k NOT IN ('table', 'operations', 'event_type', 'columns', 'exclude_columns', 'where')) THEN
        PERFORM webhooks._fail('WH004', field, format('has unknown keys in %s; expected "table", "operations", '
                                                      '"event_type" and optionally "columns", "exclude_columns", "where"', item));
    END IF;
    IF item ? 'event_type' AND jsonb_typeof(item -> 'event_type') IS DISTINCT FROM 'string' THEN
        PERFORM webhooks._fail('WH020', field || '.event_type', format('must be a string, got %s', item -> 'event_type'));
    END IF;
    RETURN item;
END
$$;

-- An event-type entry's type or pattern; an exact type must be declared.
CREATE OR REPLACE FUNCTION webhooks._events_pattern(field text, item jsonb)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pattern text := item ->> 'event_type';
BEGIN
    IF item ?| ARRAY['operations', 'columns', 'exclude_columns', 'where'] THEN
        PERFORM webhooks._fail('WH004', field,
            '"operations", "columns", "exclude_columns" and "where" belong to table entries, not event types');
    END IF;
    IF pattern !~ '^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.\*)$' THEN
        -- Not a pattern: an exact type, which must be declared.
        PERFORM webhooks._check_event_type_declared(field || '.event_type', pattern);
    END IF;
    RETURN pattern;
END
$$;

-- A table entry's "table": an existing table that can be watched.
CREATE OR REPLACE FUNCTION webhooks._events_table(field text, item jsonb)
RETURNS oid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parts text[];
    schema_name text;
    table_name text;
    relid oid;
BEGIN
    IF jsonb_typeof(item -> 'table') IS DISTINCT FROM 'string' OR btrim(item ->> 'table') = '' THEN
        PERFORM webhooks._fail('WH004', field || '.table', 'must be a non-empty string');
    END IF;
    BEGIN
        parts := parse_ident(item ->> 'table');
    EXCEPTION WHEN OTHERS THEN
        PERFORM webhooks._fail('WH006', field || '.table', format('%L is not a valid table name', item ->> 'table'));
    END;
    IF cardinality(parts) = 1 THEN
        schema_name := 'public';
        table_name := parts[1];
    ELSIF cardinality(parts) = 2 THEN
        schema_name := parts[1];
        table_name := parts[2];
    ELSE
        PERFORM webhooks._fail('WH006', field || '.table',
            format('%L is not a table name; use "table" or "schema.table"', item ->> 'table'));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname = schema_name) THEN
        PERFORM webhooks._fail('WH005', field || '.table', format('schema %I does not exist', schema_name));
    END IF;
    SELECT c.oid INTO relid
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = schema_name AND c.relname = table_name AND c.relkind IN ('r', 'p');
    IF relid IS NULL THEN
        PERFORM webhooks._fail('WH006', field || '.table', format('table %I.%I does not exist', schema_name, table_name));
    END IF;
    PERFORM webhooks._check_watchable(field || '.table', relid);
    RETURN relid;
END
$$;

-- A table entry's "operations", upper case and each once; all but TRUNCATE when absent.
CREATE OR REPLACE FUNCTION webhooks._events_operations(field text, item jsonb)
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ops text[] := '{}';
    op text;
BEGIN
    IF NOT item ? 'operations' THEN
        RETURN ARRAY['INSERT', 'UPDATE', 'DELETE'];
    ELSIF jsonb_typeof(item -> 'operations') <> 'array' OR jsonb_array_length(item -> 'operations') = 0 THEN
        PERFORM webhooks._fail('WH007', field || '.operations',
            format('must be a non-empty array of "INSERT", "UPDATE", "DELETE", "TRUNCATE", got %s', item -> 'operations'));
    END IF;
    FOR op IN SELECT value #>> '{}' FROM jsonb_array_elements(item -> 'operations') LOOP
        IF upper(op) NOT IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE') OR op IS NULL THEN
            PERFORM webhooks._fail('WH007', field || '.operations',
                format('%s is not an operation; expected INSERT, UPDATE, DELETE or TRUNCATE', coalesce(to_json(op)::text, 'null')));
        END IF;
        IF NOT upper(op) = ANY (ops) THEN
            ops := ops || upper(op);
        END IF;
    END LOOP;
    RETURN ops;
END
$$;

CREATE OR REPLACE FUNCTION webhooks._parse_events(events jsonb)
RETURNS TABLE (relid oid, operations text[], event_type text, columns text[], exclude_columns text[],
               where_clause text, route_column name, route_value text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    item jsonb;
    i int := 0;
    field text;
    seen oid[] := '{}';
    patterns text[] := '{}';
    pattern text;
BEGIN
    IF events IS NULL OR jsonb_typeof(events) <> 'array' OR jsonb_array_length(events) = 0 THEN
        PERFORM webhooks._fail('WH004', 'events',
            format('must be a non-empty JSON array like [{"table": "users", "operations": ["INSERT"]}], got %s',
                   coalesce(events::text, 'null')));
    END IF;
    FOR item IN SELECT value FROM jsonb_array_elements(events) LOOP
        field := format('events[%s]', i);
        i := i + 1;
        item := webhooks._events_entry(field, item);
        event_type := NULL;
        -- OUT columns keep their values between rows: reset the filters of the previous entry.
        columns := NULL;
        exclude_columns := NULL;
        where_clause := NULL;
        route_column := NULL;
        route_value := NULL;
        IF item ? 'event_type' AND NOT item ? 'table' THEN
            pattern := webhooks._events_pattern(field, item);
            IF pattern = ANY (patterns) THEN
                PERFORM webhooks._fail('WH004', field || '.event_type', format('event type %L is listed twice', pattern));
            END IF;
            patterns := patterns || pattern;
            relid := NULL;
            operations := NULL;
            event_type := pattern;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF item ? 'event_type' THEN
            PERFORM webhooks._check_event_type_declared(field || '.event_type', item ->> 'event_type');
            event_type := item ->> 'event_type';
        END IF;
        relid := webhooks._events_table(field, item);
        IF relid = ANY (seen) THEN
            PERFORM webhooks._fail('WH004', field || '.table',
                format('table %I.%I is listed twice; give all its operations in one entry',
                       (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = relid),
                       (SELECT c.relname FROM pg_class c WHERE c.oid = relid)));
        END IF;
        seen := seen || relid;
        operations := webhooks._events_operations(field, item);
        -- Capture filters.
        SELECT f.columns, f.exclude_columns, f.where_clause, f.route_column, f.route_value
        INTO columns, exclude_columns, where_clause, route_column, route_value
        FROM webhooks._parse_filters(field, relid, item) f;
        RETURN NEXT;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION webhooks._replace_subscriptions(webhook_id uuid, events jsonb)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parsed record;
    touched oid[];
BEGIN
    SELECT array_agg(s.relid) INTO touched FROM webhooks.subscriptions s
    WHERE s.webhook_id = _replace_subscriptions.webhook_id;
    DELETE FROM webhooks.subscriptions s WHERE s.webhook_id = _replace_subscriptions.webhook_id;
    DELETE FROM webhooks.event_subscriptions s WHERE s.webhook_id = _replace_subscriptions.webhook_id;
    FOR parsed IN SELECT * FROM webhooks._parse_events(events) LOOP
        IF parsed.relid IS NULL THEN  -- a subscription to published events of a type or pattern
            INSERT INTO webhooks.event_subscriptions (webhook_id, pattern)
            VALUES (_replace_subscriptions.webhook_id, parsed.event_type);
            CONTINUE;
        END IF;
        INSERT INTO webhooks.subscriptions (webhook_id, relid, operations, table_name, event_type,
                                            columns, exclude_columns, where_clause, route_column, route_value)
        VALUES (_replace_subscriptions.webhook_id, parsed.relid, parsed.operations, parsed.relid::regclass::text,
                parsed.event_type,
                parsed.columns, parsed.exclude_columns, parsed.where_clause, parsed.route_column, parsed.route_value);
        touched := touched || parsed.relid;
    END LOOP;
    PERFORM webhooks._sync_triggers(r) FROM (SELECT DISTINCT unnest(touched) AS r) t;
END
$$;

-- Which webhooks receive events of `type`, by exact name, prefix pattern (order.*) or *.
CREATE OR REPLACE FUNCTION webhooks._subscribers(type text)
RETURNS uuid[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(DISTINCT s.webhook_id ORDER BY s.webhook_id), '{}')
    FROM webhooks.event_subscriptions s
    WHERE s.pattern = type OR s.pattern = '*'
       OR (right(s.pattern, 2) = '.*' AND starts_with(type, left(s.pattern, -1)))
$$;

-- Keep event_types.webhook_ids current after any change to event_subscriptions (including the
-- cascade of a deleted webhook), incrementally: only the (type, webhook) pairs a changed row's
-- pattern matches are looked at (an exact name: one type; order.*: its family; *: all), and for
-- each the webhook is added or removed as it now subscribes to the type by any pattern, one
-- primary-key probe each. A TRUNCATE recomputes every type. Changes are serialised by an advisory
-- lock (create_event_type takes it too), and the update runs in a statement of its own after it, so it sees every change committed
-- before: two webhooks subscribing at once cannot leave a type missing one of them.
CREATE OR REPLACE FUNCTION webhooks._refresh_subscribers()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    hooks uuid[];
    patterns text[];
BEGIN
    -- Each branch names only the transition tables its trigger declares.
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(a.webhook_id), array_agg(a.pattern) INTO hooks, patterns FROM added a;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(r.webhook_id), array_agg(r.pattern) INTO hooks, patterns FROM removed r;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(x.webhook_id), array_agg(x.pattern) INTO hooks, patterns
        FROM (SELECT a.webhook_id, a.pattern FROM added a UNION SELECT r.webhook_id, r.pattern FROM removed r) x;
    ELSE
        PERFORM pg_advisory_xact_lock('webhooks.event_types'::regclass::oid::integer, 0);
        UPDATE webhooks.event_types t SET webhook_ids = webhooks._subscribers(t.name)
        WHERE t.webhook_ids <> '{}';
        PERFORM webhooks._sync_cursors(NULL);
        RETURN NULL;
    END IF;
    IF hooks IS NULL THEN
        RETURN NULL;  -- a statement that changed no row
    END IF;
    -- An advisory lock, not a table lock: claims update event_types too (a route's rest,
    -- 041_cursors.sql) and must not wait behind an admin's open transaction.
    PERFORM pg_advisory_xact_lock('webhooks.event_types'::regclass::oid::integer, 0);
    WITH changed AS (
        SELECT DISTINCT t.name, c.webhook_id
        FROM unnest(hooks, patterns) AS c(webhook_id, pattern)
        JOIN webhooks.event_types t
          ON c.pattern = t.name OR c.pattern = '*' OR (right(c.pattern, 2) = '.*' AND starts_with(t.name, left(c.pattern, -1)))
    ), verdict AS (
        SELECT c.name, c.webhook_id, EXISTS (
            SELECT 1 FROM webhooks.event_subscriptions s
            WHERE s.webhook_id = c.webhook_id
              AND (s.pattern = c.name OR s.pattern = '*'
                   OR (right(s.pattern, 2) = '.*' AND starts_with(c.name, left(s.pattern, -1))))) AS subscribed
        FROM changed c
    ), per_type AS (
        SELECT v.name, array_agg(v.webhook_id) FILTER (WHERE v.subscribed) AS plus,
               array_agg(v.webhook_id) FILTER (WHERE NOT v.subscribed) AS minus
        FROM verdict v GROUP BY v.name
    )
    UPDATE webhooks.event_types t
    SET webhook_ids = ARRAY(SELECT DISTINCT u FROM unnest(t.webhook_ids || coalesce(p.plus, '{}')) u
                            WHERE u <> ALL (coalesce(p.minus, '{}')) ORDER BY u)
    FROM per_type p
    WHERE t.name = p.name;
    -- Each type's cursors follow its subscribers (041_cursors.sql), in a statement that sees them.
    PERFORM webhooks._sync_cursors(ARRAY(
        SELECT DISTINCT t.name FROM unnest(hooks, patterns) AS c(webhook_id, pattern)
        JOIN webhooks.event_types t
          ON c.pattern = t.name OR c.pattern = '*' OR (right(c.pattern, 2) = '.*' AND starts_with(t.name, left(c.pattern, -1)))));
    RETURN NULL;
END
$$;

-- Transition tables need one trigger per event.
DROP TRIGGER IF EXISTS event_subscriptions_refresh ON webhooks.event_subscriptions;

CREATE OR REPLACE TRIGGER event_subscriptions_refresh_insert
    AFTER INSERT ON webhooks.event_subscriptions REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks._refresh_subscribers();

CREATE OR REPLACE TRIGGER event_subscriptions_refresh_update
    AFTER UPDATE ON webhooks.event_subscriptions REFERENCING OLD TABLE AS removed NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks._refresh_subscribers();

CREATE OR REPLACE TRIGGER event_subscriptions_refresh_delete
    AFTER DELETE ON webhooks.event_subscriptions REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks._refresh_subscribers();

CREATE OR REPLACE TRIGGER event_subscriptions_refresh_truncate
    AFTER TRUNCATE ON webhooks.event_subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks._refresh_subscribers();

COMMENT ON TABLE webhooks.subscriptions IS
    'Which tables and operations each webhook receives (relid follows renames; table_name is the name when last subscribed).';

COMMENT ON TABLE webhooks.event_subscriptions IS
    'Which webhooks receive published events: by type, by prefix pattern (order.*) or all (*).';

COMMENT ON FUNCTION webhooks._events_entry IS
    'One entry of events as an object with known keys (a string entry is an event type or pattern).';

COMMENT ON FUNCTION webhooks._events_pattern IS
    'An event-type entry''s type or pattern; an exact type must be declared.';

COMMENT ON FUNCTION webhooks._events_table IS
    'A table entry''s table: an existing table the caller may watch.';

COMMENT ON FUNCTION webhooks._events_operations IS
    'A table entry''s operations, upper case and each once; INSERT, UPDATE, DELETE when absent.';
