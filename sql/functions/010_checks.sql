-- pgwebhooks: errors and the input checks every public function shares.
--
-- Every bad input raises before anything is written, with an SQLSTATE of class WH (raised by
-- _fail) and a message that starts with the offending field and names the value. sql/README.md
-- lists every code; checks of one concern live with it (settings in 012, events in 015, capture
-- filters in 031, event data in 035).

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

CREATE OR REPLACE FUNCTION webhooks._check_name(name text, except_id uuid DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Blank in any script (tabs, next-line, no-break and ideographic spaces, zero-width characters).
    IF name IS NULL OR name ~ '^[\s\u0085\u00a0\u1680\u2000-\u200d\u2028\u2029\u202f\u205f\u3000\ufeff]*$' THEN
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

-- maintain() and purge() decide in one statement what is done and check it again in the next,
-- under the block's lock or the capture's row lock: only in READ COMMITTED does that second
-- statement see what other sessions committed meanwhile (a late write into a closed block, a
-- replay). In REPEATABLE READ or SERIALIZABLE (say, a database whose default_transaction_isolation
-- is one of them) the check would read the first snapshot again, and remove that work.
CREATE OR REPLACE FUNCTION webhooks._check_read_committed(caller text)
RETURNS void
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM webhooks._fail('WH057', 'transaction_isolation', format(
            '%s needs READ COMMITTED, and this transaction is %s', caller, upper(current_setting('transaction_isolation'))),
            'run it in a transaction of its own begun with ISOLATION LEVEL READ COMMITTED, or set '
            'default_transaction_isolation = ''read committed'' for the role that calls it');
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

-- A URL's user:password is sent as an Authorization: Basic header, so it cannot be combined with
-- an Authorization header of one's own (plain or secret): the runner could never send both.
CREATE OR REPLACE FUNCTION webhooks._check_url_credentials(url text, headers jsonb, secret_headers jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    field text;
BEGIN
    IF url !~ '^[A-Za-z]+://[^/?#]*@' THEN
        RETURN;
    END IF;
    SELECT CASE WHEN EXISTS (SELECT 1 FROM jsonb_object_keys(coalesce(headers, '{}')) k
                             WHERE lower(k) = 'authorization') THEN 'headers'
                WHEN jsonb_typeof(secret_headers) = 'object'
                     AND EXISTS (SELECT 1 FROM jsonb_object_keys(secret_headers) k
                                 WHERE lower(k) = 'authorization') THEN 'secret_headers' END
    INTO field;
    IF field IS NOT NULL THEN
        PERFORM webhooks._fail('WH036', field, format('has an Authorization header, but the url %s carries '
            'user:password credentials (sent as Authorization: Basic); the runner cannot send both',
            regexp_replace(url, '^([A-Za-z]+://)[^/?#]*@', '\1***@')),
            'keep one: remove the credentials from the url or the Authorization header');
    END IF;
END
$$;

-- Check a JSON array of objects against `spec`, {"key": ["integer", low, high, required] or
-- ["string", null, null, required]}, and raise WH013 naming the first offending element and
-- key. The runner API takes its input as JSON; a wrong type or an out-of-range number must be
-- the caller's WH013, not a cast error (22P02, 22003) from deep inside a query.
CREATE OR REPLACE FUNCTION webhooks._check_json_array(value jsonb, field text, spec jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text;
BEGIN
    IF value IS NULL OR jsonb_typeof(value) <> 'array' THEN
        PERFORM webhooks._fail('WH013', field, format('must be a JSON array of objects, not %s',
                                                      coalesce(jsonb_typeof(value), 'null')));
    END IF;
    SELECT format('%s[%s]%s: %s', field, e.ord - 1, coalesce('.' || k.key, ''), k.why) INTO problem
    FROM jsonb_array_elements(value) WITH ORDINALITY AS e(v, ord)
    CROSS JOIN LATERAL (
        SELECT NULL::text AS key, format('must be an object, not %s', jsonb_typeof(e.v)) AS why
        WHERE jsonb_typeof(e.v) <> 'object'
        UNION ALL
        SELECT s.key, CASE
            WHEN coalesce(jsonb_typeof(e.v -> s.key), 'null') = 'null' THEN
                CASE WHEN (s.rule ->> 3)::boolean THEN 'is required' END
            WHEN s.rule ->> 0 = 'string' THEN
                CASE WHEN jsonb_typeof(e.v -> s.key) <> 'string'
                     THEN format('must be a string, not %s', left((e.v -> s.key)::text, 40)) END
            -- Written as an integer, too: 1.0 is a whole number, but no bigint the cast accepts.
            WHEN jsonb_typeof(e.v -> s.key) <> 'number' OR (e.v ->> s.key) !~ '^-?[0-9]+$' THEN
                format('must be an integer, not %s', left((e.v -> s.key)::text, 40))
            WHEN (e.v ->> s.key)::numeric NOT BETWEEN (s.rule ->> 1)::numeric AND (s.rule ->> 2)::numeric THEN
                format('%s is out of range; expected an integer from %s to %s',
                       left((e.v -> s.key)::text, 40), s.rule ->> 1, s.rule ->> 2)
        END
        FROM jsonb_each(spec) AS s(key, rule)
        WHERE jsonb_typeof(e.v) = 'object'
    ) k
    WHERE k.why IS NOT NULL
    ORDER BY e.ord, k.key
    LIMIT 1;
    IF problem IS NOT NULL THEN
        PERFORM webhooks._fail('WH013', field, substr(problem, length(field) + 1));
    END IF;
END
$$;

-- complete() and release() given JSON text (an untyped literal, a string parameter): parsed
-- here, so that text jsonb cannot hold (\u0000, a NUL) is the caller's WH034 and text that is no
-- JSON its WH013, not 22P05 or 22P02 from the cast. A jsonb argument goes straight to the above.
CREATE OR REPLACE FUNCTION webhooks._parse_json_input(field text, value text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN value::jsonb;
EXCEPTION
    WHEN untranslatable_character THEN
        PERFORM webhooks._fail('WH034', field, format('contains a NUL character (\u0000), which the database '
            'cannot store: %s', left(value, 80)));
    WHEN invalid_text_representation OR invalid_parameter_value THEN
        PERFORM webhooks._fail('WH013', field, format('is not valid JSON: %s', left(value, 80)));
END
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
