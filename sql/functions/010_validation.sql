-- pgwebhooks 003: input validation shared by create_webhook and update_webhook.
--
-- Every bad input raises before anything is written, with an SQLSTATE of class WH and a
-- message that starts with the offending field:
--
--   WH001 invalid name           WH008 setting out of range (retries, timeout, backoff)
--   WH002 duplicate name         WH009 invalid headers
--   WH003 invalid url            WH010 header reserved for pgwebhooks
--   WH004 malformed events       WH011 invalid secret
--   WH005 unknown schema         WH012 unknown or mistyped field in changes
--   WH006 unknown table          WH013 invalid argument (limit, offset, batch size, ...)
--   WH007 invalid operation      WH014 table the caller may not read
--                                WH404 no such webhook / delivery
--   WH015 invalid pause_after    WH016 invalid secret_headers
--   WH017 invalid columns / exclude_columns filter     WH018 invalid where filter
--   Application events and receiver profiles (issue 10):
--   WH020 invalid event type name or pattern      WH023 invalid retry schedule
--   WH021 unknown (undeclared) event type         WH024 http:// refused (installation is HTTPS only)
--   WH022 unknown receiver profile                WH025 event type still in use
--   Filter safety:
--   WH026 string literal in a where while a domain checks with user code
--   WH027 where uses something a filter may not (function, table, subquery, domain, ...)
--   WH028 table with row-level security the caller does not bypass

-- _parse_events gained an event_type column (0.2) and capture filters (issue 11).
DROP FUNCTION IF EXISTS webhooks._parse_events(jsonb);

CREATE OR REPLACE FUNCTION webhooks._fail(code text, field text, message text, hint text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF hint IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = code, MESSAGE = format('%s: %s', field, message), COLUMN = field;
    END IF;
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = format('%s: %s', field, message), COLUMN = field,
        HINT = hint;
END
$$;

-- The role on whose behalf a management function runs. Inside a SECURITY DEFINER function
-- current_user is the function's owner; the `role` setting still holds what the session SET
-- ROLE to, and without one the session's own user is the caller.
CREATE OR REPLACE FUNCTION webhooks._caller()
RETURNS name
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN current_setting('role') = 'none' THEN session_user ELSE current_setting('role')::name END
$$;

-- Whether `relid` may be watched on the caller's behalf: an ordinary or partitioned table, not a
-- catalog, not another session's or an extension's own, and one the caller may SELECT as a whole.
-- pgwebhooks must never hand anyone a row they could not read themselves.
CREATE OR REPLACE FUNCTION webhooks._check_watchable(field text, relid oid)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    qualified text;
    schema_name name;
BEGIN
    SELECT format('%I.%I', n.nspname, c.relname), n.nspname INTO qualified, schema_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = relid;
    IF schema_name IN ('pg_catalog', 'information_schema', 'pg_toast', 'webhooks')
       OR schema_name LIKE 'pg\_temp\_%' OR schema_name LIKE 'pg\_toast\_temp\_%' THEN
        PERFORM webhooks._fail('WH006', field, format('%s cannot be watched: system catalogs, temporary '
            'tables and pgwebhooks'' own tables are never captured', qualified));
    END IF;
    IF EXISTS (SELECT 1 FROM pg_depend d
               WHERE d.classid = 'pg_class'::regclass AND d.objid = relid AND d.deptype = 'e') THEN
        PERFORM webhooks._fail('WH006', field, format('%s belongs to an extension and cannot be watched', qualified));
    END IF;
    IF NOT has_table_privilege(webhooks._caller(), relid, 'SELECT') THEN
        PERFORM webhooks._fail('WH014', field, format('role %I may not SELECT %s; a webhook can only watch '
            'tables its creator may read as a whole', webhooks._caller(), qualified));
    END IF;
    -- Row-level security: the caller's own SELECT may see only some rows, but the capture
    -- trigger sees them all. Only a role that sees every row may watch the table.
    IF EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = relid AND c.relrowsecurity)
       AND NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = webhooks._caller() AND (r.rolsuper OR r.rolbypassrls))
       AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = relid AND NOT c.relforcerowsecurity
                       AND pg_has_role(webhooks._caller(), c.relowner, 'USAGE')) THEN
        PERFORM webhooks._fail('WH028', field, format('%s has row-level security and role %I does not bypass it; '
            'a webhook would receive rows the role cannot see (needs BYPASSRLS, superuser, or owning the table '
            'without FORCE ROW LEVEL SECURITY)', qualified, webhooks._caller()));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION webhooks._check_name(name text, except_id uuid DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Blank in any script (tabs, no-break and ideographic spaces, zero-width characters).
    IF name IS NULL OR name ~ '^[\s\u00a0\u1680\u2000-\u200d\u2028\u2029\u202f\u205f\u3000\ufeff]*$' THEN
        PERFORM webhooks._fail('WH001', 'name', format('must not be empty or blank, got %s',
                                                     coalesce(quote_literal(name), 'null')));
    ELSIF name ~ '[\x01-\x1f\x7f]' THEN
        PERFORM webhooks._fail('WH001', 'name', format('%s contains a control character', quote_literal(name)));
    ELSIF length(name) > 200 THEN
        PERFORM webhooks._fail('WH001', 'name', format('is %s characters long; at most 200 are allowed', length(name)));
    ELSIF EXISTS (SELECT 1 FROM webhooks.webhooks w
                  WHERE w.name = _check_name.name AND w.id IS DISTINCT FROM except_id) THEN
        PERFORM webhooks._fail('WH002', 'name', format('a webhook named %L already exists', name));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION webhooks._check_url(url text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    port text;
    host text;
BEGIN
    IF url IS NULL OR url = '' THEN
        PERFORM webhooks._fail('WH003', 'url', 'must not be empty');
    END IF;
    IF url !~* '^https?://' THEN
        PERFORM webhooks._fail('WH003', 'url', format('%L is not an http:// or https:// URL', url));
    END IF;
    IF length(url) > 2048 THEN
        PERFORM webhooks._fail('WH003', 'url', format('is %s characters long; at most 2048 are allowed', length(url)));
    END IF;
    IF url ~ '[\x01-\x20\x7f]' THEN
        PERFORM webhooks._fail('WH003', 'url', format('%L contains a space or a control character', url));
    END IF;
    -- The shape is scheme, optional userinfo and at-sign, host, optional port, then path, query
    -- or fragment; the host is a name, a dotted-quad IPv4 address or a bracketed IPv6 address.
    IF url !~* '^https?://([^/?#\s@]+@)?(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(:[0-9]{1,5})?([/?#]\S*)?$' THEN
        PERFORM webhooks._fail('WH003', 'url', format('%L is not a well-formed URL', url));
    END IF;
    host := lower(substring(url FROM '^https?://(?:[^/?#@]+@)?(\[[^]]+\]|[^/?#:]+)'));
    IF host LIKE '[%' THEN
        BEGIN
            PERFORM substr(host, 2, length(host) - 2)::inet;
        EXCEPTION WHEN OTHERS THEN
            PERFORM webhooks._fail('WH003', 'url', format('%s in %L is not an IPv6 address', host, url));
        END;
    ELSE
        -- HTTP clients read a host whose last label is a number as an IPv4 address, and
        -- accept shorthand for it (127.1, 2130706433, 0177.0.0.1, 0x7f.1, 127.0.0.1.); only
        -- the canonical dotted quad is accepted, so that what is stored is what the runner
        -- connects to. A name (not an address) may end in a dot.
        IF host ~ '(^|\.)(0x[0-9a-f]*|[0-9]+)\.?$' AND host !~ '^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$' THEN
            PERFORM webhooks._fail('WH003', 'url',
                format('host %s in %L is not a dotted-quad IPv4 address (like 192.0.2.10) or a name', host, url));
        END IF;
        host := rtrim(host, '.');
        IF length(host) > 253 OR host !~ '^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$' THEN
            PERFORM webhooks._fail('WH003', 'url', format('host %s in %L is not a valid host name', host, url));
        END IF;
    END IF;
    port := substring(url FROM '^https?://(?:[^/?#@]+@)?(?:\[[^]]+\]|[^/?#:]+):([0-9]+)');
    IF port IS NOT NULL AND (port::int < 1 OR port::int > 65535) THEN
        PERFORM webhooks._fail('WH003', 'url', format('port %s in %L is out of range 1-65535', port, url));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION webhooks._check_range(field text, value integer, low integer, high integer)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF value IS NULL OR value < low OR value > high THEN
        PERFORM webhooks._fail('WH008', field,
            format('%s is out of range; expected an integer from %s to %s', coalesce(value::text, 'null'), low, high));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION webhooks._check_headers(headers jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    h record;
BEGIN
    IF headers IS NULL OR jsonb_typeof(headers) <> 'object' THEN
        PERFORM webhooks._fail('WH009', 'headers',
            format('must be a JSON object of header names to strings, got %s', coalesce(headers::text, 'null')));
    END IF;
    -- Limits well inside what servers accept (8 KiB per line is the common default).
    IF (SELECT count(*) FROM jsonb_object_keys(headers)) > 50 THEN
        PERFORM webhooks._fail('WH009', 'headers',
            format('has %s entries; at most 50 are allowed', (SELECT count(*) FROM jsonb_object_keys(headers))));
    END IF;
    FOR h IN SELECT key, value FROM jsonb_each(headers) LOOP
        IF h.key !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$' OR length(h.key) > 256 THEN
            PERFORM webhooks._fail('WH009', 'headers', format('%L is not a valid header name', left(h.key, 300)));
        ELSIF jsonb_typeof(h.value) <> 'string' THEN
            PERFORM webhooks._fail('WH009', 'headers',
                format('value of %L must be a string, got %s', h.key, left(h.value::text, 300)));
        ELSIF h.value #>> '{}' ~ '[\r\n\x00]' THEN
            PERFORM webhooks._fail('WH009', 'headers', format('value of %L contains a line break', h.key));
        ELSIF h.value #>> '{}' !~ '^[\x20-\x7e\t]*$' THEN
            PERFORM webhooks._fail('WH009', 'headers', format('value of %L must be printable ASCII '
                '(control characters and non-ASCII text are not portable in HTTP headers)', h.key));
        ELSIF length(h.value #>> '{}') > 4096 THEN
            PERFORM webhooks._fail('WH009', 'headers',
                format('value of %L is %s characters long; at most 4096 are allowed', h.key, length(h.value #>> '{}')));
        ELSIF lower(h.key) = ANY (ARRAY['content-type', 'user-agent', 'webhook-id', 'webhook-timestamp',
                'webhook-signature', 'x-webhook-signature', 'x-fluxbase-signature', 'x-truss-signature',
                'x-rowbase-signature', 'host', 'content-length',
                'transfer-encoding', 'connection']) THEN
            PERFORM webhooks._fail('WH010', 'headers',
                format('%L is set by pgwebhooks and cannot be overridden', h.key));
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION webhooks._check_secret(secret text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    key bytea;
BEGIN
    IF secret LIKE 'whsec\_%' THEN
        -- Strict base64: PostgreSQL's decoder and Python's disagree on '=' inside, whitespace and
        -- missing padding, and the signer must use exactly the key the receiver decodes.
        IF substr(secret, 7) !~ '^[A-Za-z0-9+/]*={0,2}$' OR length(substr(secret, 7)) % 4 <> 0 THEN
            PERFORM webhooks._fail('WH011', 'secret',
                'the part after whsec_ must be padded base64 (A-Z, a-z, 0-9, +, / and = only at the end)');
        END IF;
        key := decode(substr(secret, 7), 'base64');
        IF length(key) < 24 OR length(key) > 64 THEN
            PERFORM webhooks._fail('WH011', 'secret',
                format('a whsec_ secret must decode to 24-64 bytes, this one has %s', length(key)));
        END IF;
    ELSIF secret IS NULL OR length(secret) < 16 THEN
        PERFORM webhooks._fail('WH011', 'secret', 'must be at least 16 characters long',
            'omit the secret to have a strong one generated');
    ELSIF length(secret) > 1024 THEN
        PERFORM webhooks._fail('WH011', 'secret', format('is %s characters long; at most 1024 are allowed', length(secret)));
    ELSIF secret ~ '[\x01-\x1f\x7f]' THEN
        PERFORM webhooks._fail('WH011', 'secret', 'must not contain control characters');
    END IF;
END
$$;

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

CREATE OR REPLACE FUNCTION webhooks._check_profile(profile text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF profile IS NULL OR profile NOT IN ('standard', 'fluxbase', 'truss', 'rowbase', 'flux', 'supabase', 'hasura') THEN
        PERFORM webhooks._fail('WH022', 'profile', format('%s is not a receiver profile; expected standard, '
            'fluxbase, truss, rowbase, flux, supabase or hasura', coalesce(quote_literal(profile), 'null')));
    END IF;
END
$$;

-- A fixed retry schedule: 1 to 50 delays, each from 1 second to 1 day, none NULL.
CREATE OR REPLACE FUNCTION webhooks._check_retry_schedule(schedule interval[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF schedule IS NULL THEN
        RETURN;
    END IF;
    IF cardinality(schedule) NOT BETWEEN 1 AND 50 OR array_ndims(schedule) <> 1 THEN
        PERFORM webhooks._fail('WH023', 'retry_schedule',
            format('%s must list 1 to 50 delays, like {1 minute,5 minutes,30 minutes}', schedule));
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(schedule) d WHERE d IS NULL OR d < interval '1 second' OR d > interval '1 day') THEN
        PERFORM webhooks._fail('WH023', 'retry_schedule',
            format('%s: every delay must be from 1 second to 1 day', schedule));
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
-- Table entries may carry capture filters (issue 11), returned in the filter columns.
CREATE OR REPLACE FUNCTION webhooks._parse_events(events jsonb)
RETURNS TABLE (relid oid, operations text[], event_type text, columns text[], exclude_columns text[],
               where_clause text, route_column name, route_value text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    item jsonb;
    i int := 0;
    field text;
    parts text[];
    schema_name text;
    table_name text;
    ops text[];
    op text;
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
        IF jsonb_typeof(item) <> 'object' THEN
            PERFORM webhooks._fail('WH004', field, format('must be an object, got %s', item));
        END IF;
        IF EXISTS (SELECT 1 FROM jsonb_object_keys(item) k
                   WHERE k NOT IN ('table', 'operations', 'event_type', 'columns', 'exclude_columns', 'where')) THEN
            PERFORM webhooks._fail('WH004', field, format('has unknown keys in %s; expected "table", "operations", '
                                                          '"event_type" and optionally "columns", "exclude_columns", "where"', item));
        END IF;
        event_type := NULL;
        -- OUT columns keep their values between rows: reset the filters of the previous entry.
        columns := NULL;
        exclude_columns := NULL;
        where_clause := NULL;
        route_column := NULL;
        route_value := NULL;
        IF item ? 'event_type' AND jsonb_typeof(item -> 'event_type') IS DISTINCT FROM 'string' THEN
            PERFORM webhooks._fail('WH020', field || '.event_type', format('must be a string, got %s', item -> 'event_type'));
        END IF;
        IF item ? 'event_type' AND NOT item ? 'table' THEN
            IF item ?| ARRAY['operations', 'columns', 'exclude_columns', 'where'] THEN
                PERFORM webhooks._fail('WH004', field,
                    '"operations", "columns", "exclude_columns" and "where" belong to table entries, not event types');
            END IF;
            pattern := item ->> 'event_type';
            IF pattern !~ '^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.\*)$' THEN
                -- Not a pattern: an exact type, which must be declared.
                PERFORM webhooks._check_event_type_declared(field || '.event_type', pattern);
            END IF;
            IF pattern = ANY (patterns) THEN
                PERFORM webhooks._fail('WH004', field || '.event_type', format('event type %L is listed twice', pattern));
            END IF;
            patterns := patterns || pattern;
            relid := NULL;
            operations := NULL;
            event_type := pattern;
            RETURN NEXT;
            i := i + 1;
            CONTINUE;
        END IF;
        IF item ? 'event_type' THEN
            PERFORM webhooks._check_event_type_declared(field || '.event_type', item ->> 'event_type');
            event_type := item ->> 'event_type';
        END IF;
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
        IF relid = ANY (seen) THEN
            PERFORM webhooks._fail('WH004', field || '.table',
                format('table %I.%I is listed twice; give all its operations in one entry', schema_name, table_name));
        END IF;
        seen := seen || relid;

        IF NOT item ? 'operations' THEN
            ops := ARRAY['INSERT', 'UPDATE', 'DELETE'];
        ELSIF jsonb_typeof(item -> 'operations') <> 'array' OR jsonb_array_length(item -> 'operations') = 0 THEN
            PERFORM webhooks._fail('WH007', field || '.operations',
                format('must be a non-empty array of "INSERT", "UPDATE", "DELETE", "TRUNCATE", got %s', item -> 'operations'));
        ELSE
            ops := '{}';
            FOR op IN SELECT value #>> '{}' FROM jsonb_array_elements(item -> 'operations') LOOP
                IF upper(op) NOT IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE') OR op IS NULL THEN
                    PERFORM webhooks._fail('WH007', field || '.operations',
                        format('%s is not an operation; expected INSERT, UPDATE, DELETE or TRUNCATE', coalesce(to_json(op)::text, 'null')));
                END IF;
                IF NOT upper(op) = ANY (ops) THEN
                    ops := ops || upper(op);
                END IF;
            END LOOP;
        END IF;
        operations := ops;
        -- Capture filters (issue 11).
        SELECT f.columns, f.exclude_columns, f.where_clause, f.route_column, f.route_value
        INTO columns, exclude_columns, where_clause, route_column, route_value
        FROM webhooks._parse_filters(field, relid, item) f;
        RETURN NEXT;
        i := i + 1;
    END LOOP;
END
$$;

-- issue 11 (health): the auto-pause window, from one minute to a year; NULL means never.
CREATE OR REPLACE FUNCTION webhooks._check_pause_after(pause_after interval)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pause_after IS NOT NULL AND (pause_after < interval '1 minute' OR pause_after > interval '365 days') THEN
        PERFORM webhooks._fail('WH015', 'pause_after',
            format('%s is out of range; expected 1 minute to 365 days, or null for never', pause_after));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION webhooks._check_pause_after_text(pause_after text)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parsed interval;
BEGIN
    IF pause_after IS NULL THEN
        RETURN;
    END IF;
    BEGIN
        parsed := pause_after::interval;
    EXCEPTION WHEN OTHERS THEN
        PERFORM webhooks._fail('WH015', 'pause_after', format('%L is not an interval (like "3 days")', left(pause_after, 100)));
    END;
    PERFORM webhooks._check_pause_after(parsed);
END
$$;

-- Secret headers follow the rules of `headers`; the error names the field and the header, never
-- the value.
CREATE OR REPLACE FUNCTION webhooks._check_secret_headers(secret_headers jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text;
BEGIN
    IF secret_headers IS NULL THEN
        PERFORM webhooks._fail('WH016', 'secret_headers', 'must be a JSON object of header names to strings, got null');
    END IF;
    BEGIN
        PERFORM webhooks._check_headers(secret_headers);
    EXCEPTION WHEN SQLSTATE 'WH009' OR SQLSTATE 'WH010' THEN
        GET STACKED DIAGNOSTICS problem = MESSAGE_TEXT;
        -- "headers: value of 'X' must be a string, got <value>": keep the part before the value.
        problem := regexp_replace(substr(problem, length('headers: ') + 1), ', got .*$', '');
        PERFORM webhooks._fail('WH016', 'secret_headers', problem);
    END;
END
$$;

-- issue 11: capture filters of one events entry. `columns` and `exclude_columns` must name
-- columns of the table (WH017); `where` must be one boolean expression over the table's columns
-- (the old row of an UPDATE is `(old).column`), checked by _check_where (WH018, WH026, WH027).
-- An equality on one column of a plain type (`tenant_id = 42`) is returned as a
-- route, looked up at capture rather than evaluated.
CREATE OR REPLACE FUNCTION webhooks._parse_filters(field text, relid oid, item jsonb)
RETURNS TABLE (columns text[], exclude_columns text[], where_clause text, route_column name, route_value text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key text;
    list text[];
    missing text;
    m text[];
    col_type regtype;
BEGIN
    FOREACH key IN ARRAY ARRAY['columns', 'exclude_columns'] LOOP
        list := NULL;
        IF item ? key THEN
            IF jsonb_typeof(item -> key) <> 'array' OR jsonb_array_length(item -> key) = 0
               OR EXISTS (SELECT 1 FROM jsonb_array_elements(item -> key) e WHERE jsonb_typeof(e) <> 'string') THEN
                PERFORM webhooks._fail('WH017', field || '.' || key,
                    format('must be a non-empty array of column names, got %s', left((item -> key)::text, 200)));
            END IF;
            list := ARRAY(SELECT DISTINCT e FROM jsonb_array_elements_text(item -> key) e ORDER BY e);
            SELECT c INTO missing FROM unnest(list) c
            WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = relid AND a.attname = c
                                                          AND a.attnum > 0 AND NOT a.attisdropped)
            LIMIT 1;
            IF missing IS NOT NULL THEN
                PERFORM webhooks._fail('WH017', field || '.' || key,
                    format('table %s has no column %I', relid::regclass, missing));
            END IF;
        END IF;
        IF key = 'columns' THEN columns := list; ELSE exclude_columns := list; END IF;
    END LOOP;
    IF item ? 'where' THEN
        IF jsonb_typeof(item -> 'where') <> 'string' OR btrim(item ->> 'where') = '' THEN
            PERFORM webhooks._fail('WH018', field || '.where',
                format('must be a non-empty string (a SQL condition), got %s', left((item -> 'where')::text, 200)));
        END IF;
        where_clause := item ->> 'where';
        PERFORM webhooks._check_where(field || '.where', relid, where_clause);
        -- "column = 42" or "column = 'text'": routed by value.
        m := regexp_match(where_clause, '^\s*([a-z_][a-z0-9_]*)\s*=\s*(-?[0-9]+|''(?:[^'']|'''')*'')\s*$');
        IF m IS NOT NULL AND (columns IS NULL) THEN
            SELECT a.atttypid::regtype INTO col_type FROM pg_attribute a
            WHERE a.attrelid = relid AND a.attname = m[1] AND a.attnum > 0 AND NOT a.attisdropped;
            -- Only types whose text form is canonical: equal values, equal text.
            IF col_type IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype, 'text'::regtype,
                            'character varying'::regtype, 'uuid'::regtype) THEN
                route_column := m[1];
                EXECUTE format('SELECT (%s::%s)::text', m[2], col_type) INTO route_value;
            END IF;
        END IF;
    END IF;
    -- Partitioned tables are captured row by row in each partition; filters are not applied there yet.
    IF (columns IS NOT NULL OR where_clause IS NOT NULL)
       AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = relid AND c.relkind = 'p') THEN
        PERFORM webhooks._fail('WH018', field, format('"columns" and "where" are not supported on the partitioned table %s',
                                                      relid::regclass));
    END IF;
    RETURN NEXT;
END
$$;

-- Check a `where` filter. It is data, not code: nothing in it may run with the definer's rights,
-- here or at capture. So it is refused if it holds `;`, `--` or `/*` anywhere, even inside quotes
-- (one EXECUTE is then one statement whatever the quoting: E'', U&'', dollar quotes); then it is
-- parse-analysed, never planned (planning folds IMMUTABLE calls, which would run an admin's
-- pg_temp function as the installer), as the body of a view created in a subtransaction rolled
-- back on purpose; the view's dependencies and query tree are then read and everything but the
-- table's columns, constants of plain types and cheap built-in immutable functions is refused.
-- Parse analysis can only run code through a string literal typed as an array or row of a
-- domain (its CHECK runs on input), so while any domain's CHECK calls non-built-in code, string
-- literals are refused.
CREATE OR REPLACE FUNCTION webhooks._check_where(field text, relid oid, clause text)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text;
    refusal text;
    probe oid;
    tree text;
    d record;
    allowed text[] := ARRAY['lower', 'upper', 'length', 'char_length', 'character_length', 'octet_length',
        'btrim', 'ltrim', 'rtrim', 'abs', 'round', 'trunc', 'ceil', 'ceiling', 'floor', 'sign', 'left', 'right',
        'substr', 'substring', 'strpos', 'position', 'starts_with', 'mod', 'div', 'greatest', 'least',
        'date_trunc', 'date_part', 'extract', 'jsonb_typeof', 'json_typeof', 'jsonb_exists', 'jsonb_extract_path_text',
        'jsonb_extract_path', 'json_extract_path_text', 'json_extract_path', 'jsonb_array_length',
        'array_length', 'cardinality', 'array_position', 'isfinite', 'num_nulls', 'num_nonnulls',
        'like', 'textlike', 'textnlike', 'bool', 'int4', 'int8', 'int2', 'numeric', 'float8', 'text',
        'chr', 'ascii', 'md5', 'concat', 'concat_ws', 'nullif', 'to_char', 'split_part', 'replace', 'initcap'];
BEGIN
    IF length(clause) > 4000 THEN
        PERFORM webhooks._fail('WH018', field, format('is %s characters long; at most 4000 are allowed', length(clause)));
    END IF;
    IF strpos(clause, ';') > 0 OR strpos(clause, '--') > 0 OR strpos(clause, '/*') > 0 THEN
        PERFORM webhooks._fail('WH018', field, format('%L may not contain ";", "--" or "/*" anywhere, not even inside '
            'quotes: give one condition (write a semicolon in text as chr(59))', left(clause, 200)));
    END IF;
    IF strpos(clause, '''') > 0 AND EXISTS (
        SELECT 1 FROM pg_constraint k JOIN pg_depend dd ON dd.classid = 'pg_constraint'::regclass AND dd.objid = k.oid
        WHERE k.contypid <> 0 AND dd.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass)
          AND dd.refobjid >= 16384) THEN
        PERFORM webhooks._fail('WH026', field, format('%L holds a string literal, refused while a domain of this '
            'database checks its values with a function that is not built in', left(clause, 200)));
    END IF;
    BEGIN
        PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
        EXECUTE format('CREATE VIEW webhooks._where_probe AS SELECT (%s) AS keep FROM %s AS r '
                       'CROSS JOIN (SELECT NULL::%s AS old, NULL::boolean AS paired) x',
                       clause, relid::regclass, relid::regclass);
        probe := 'webhooks._where_probe'::regclass;
        SELECT w.ev_action::text INTO tree FROM pg_rewrite w WHERE w.ev_class = probe AND w.rulename = '_RETURN';
        IF (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = probe AND a.attnum > 0) <> 1 THEN
            refusal := 'must be one condition, not a list';
        ELSIF (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = probe AND a.attnum = 1) <> 'boolean'::regtype THEN
            problem := format('is of type %s, not boolean',
                              (SELECT a.atttypid::regtype FROM pg_attribute a WHERE a.attrelid = probe AND a.attnum = 1));
        ELSIF tree ~ '\:hasSubLinks true' THEN
            refusal := 'may not hold a subquery';
        ELSIF tree ~ '\:hasAggs true' THEN
            refusal := 'may not hold an aggregate';
        ELSIF tree ~ '\:hasWindowFuncs true' THEN
            refusal := 'may not hold a window function';
        ELSIF tree ~ '\:hasTargetSRFs true' THEN
            refusal := 'may not hold a set-returning function';
        ELSIF tree ~ '\:setOperations [^<]' THEN
            refusal := 'may not hold UNION, INTERSECT or EXCEPT';
        END IF;
        IF refusal IS NULL THEN
            refusal := (SELECT 'may not use ' || lower(m[1]) || ' (it reads the session or runs code)'
                        FROM regexp_matches(tree, '\{(SQLVALUEFUNCTION|NEXTVALUEEXPR|XMLEXPR|COERCETODOMAIN|SUBLINK|AGGREF'
                                                  '|WINDOWFUNC|GROUPINGFUNC|CURRENTOFEXPR|PARAM)\M', 'g') m LIMIT 1);
        END IF;
        -- Built-in (pinned) objects have no pg_depend rows: the functions, operators and types
        -- are read from the query tree as well.
        FOR d IN
            SELECT dep.refclassid, dep.refobjid FROM pg_depend dep JOIN pg_rewrite w ON w.oid = dep.objid
            WHERE dep.classid = 'pg_rewrite'::regclass AND w.ev_class = probe
              AND NOT (dep.refclassid = 'pg_class'::regclass AND dep.refobjid IN (probe, relid))
            UNION
            SELECT 'pg_proc'::regclass, m[2]::oid FROM regexp_matches(tree, ':(funcid|opfuncid) (\d+)', 'g') m
            WHERE m[2] <> '0'
            UNION
            SELECT 'pg_operator'::regclass, m[1]::oid FROM regexp_matches(tree, '\:opno (\d+)', 'g') m
            UNION
            SELECT 'pg_operator'::regclass, o::oid
            FROM regexp_matches(tree, '\:opnos \(o ([0-9 ]+)\)', 'g') m, regexp_split_to_table(m[1], ' ') o
            UNION
            SELECT 'pg_type'::regclass, m[2]::oid
            FROM regexp_matches(tree, ':(consttype|resulttype|funcresulttype|opresulttype|row_typeid|vartype|casetype'
                                      '|coalescetype|minmaxtype|array_typeid|element_typeid) (\d+)', 'g') m
            WHERE m[2] <> '0'
        LOOP
            EXIT WHEN refusal IS NOT NULL;
            IF d.refclassid = 'pg_class'::regclass THEN
                refusal := format('may only read its own row, not %s', d.refobjid::regclass);
            ELSIF d.refclassid = 'pg_proc'::regclass THEN
                refusal := webhooks._where_function_problem(d.refobjid, allowed);
            ELSIF d.refclassid = 'pg_operator'::regclass THEN
                refusal := (SELECT coalesce(webhooks._where_function_problem(o.oprcode, allowed),
                                            CASE WHEN o.oid >= 16384 THEN format('may not use operator %s, which is not built in', o.oid::regoperator) END)
                            FROM pg_operator o WHERE o.oid = d.refobjid);
            ELSIF d.refclassid = 'pg_type'::regclass THEN
                SELECT CASE
                    WHEN t.typtype = 'd' OR et.typtype = 'd' THEN format('may not use the domain %s (its checks run code)', t.oid::regtype)
                    WHEN n.nspname LIKE 'pg\_temp%' THEN format('may not use the temporary type %s', t.oid::regtype)
                    WHEN t.typrelid <> 0 AND t.typrelid <> relid THEN format('may not use the row type %s', t.oid::regtype)
                END INTO refusal
                FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typlen = -1
                WHERE t.oid = d.refobjid;
            ELSIF d.refclassid <> 'pg_collation'::regclass THEN
                refusal := format('may not refer to %s', pg_describe_object(d.refclassid, d.refobjid, 0));
            END IF;
        END LOOP;
        RAISE EXCEPTION USING ERRCODE = 'WHR00';
    EXCEPTION
        WHEN SQLSTATE 'WHR00' THEN NULL;
        WHEN OTHERS THEN problem := SQLERRM;
    END;
    IF problem IS NOT NULL THEN
        PERFORM webhooks._fail('WH018', field, format('%L is not a condition on table %s: %s',
                                                      left(clause, 200), relid::regclass, problem));
    END IF;
    IF refusal IS NOT NULL THEN
        PERFORM webhooks._fail('WH027', field, format('%L %s: a filter may use the row''s columns, (old).column, '
            'constants, operators and cheap built-in immutable functions only', left(clause, 200), refusal));
    END IF;
END
$$;

-- Why a function may not be called by a `where` filter, or NULL if it may: built in, immutable,
-- a plain scalar function, and leakproof, an operator's or a cast's, or on the allow-list; never
-- a regular expression (one crafted pattern can take minutes on the writer's row).
CREATE OR REPLACE FUNCTION webhooks._where_function_problem(fn oid, allowed text[])
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN p.oid IS NULL THEN format('may not call function %s', fn)
        WHEN p.oid >= 16384 THEN format('may not call %s, which is not built in', p.oid::regprocedure)
        WHEN p.proname ~ 'regex|similar' OR p.prosrc ~ 'regex|similar' THEN format('may not use a regular expression (%s)', p.oid::regprocedure)
        WHEN p.provolatile <> 'i' OR p.prokind <> 'f' OR p.proretset
            THEN format('may not call %s, which is not an immutable scalar function', p.oid::regprocedure)
        WHEN NOT (p.proleakproof OR p.proname = ANY (allowed)
                  OR EXISTS (SELECT 1 FROM pg_operator o WHERE o.oprcode = p.oid AND o.oid < 16384)
                  OR EXISTS (SELECT 1 FROM pg_cast c WHERE c.castfunc = p.oid AND c.oid < 16384))
            THEN format('may not call %s, which is not on the list of functions allowed in filters', p.oid::regprocedure)
    END
    FROM (SELECT fn AS oid) f LEFT JOIN pg_proc p ON p.oid = f.oid
$$;
