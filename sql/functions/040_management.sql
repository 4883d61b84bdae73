-- pgwebhooks 005: the management API. Functions run as their owner (SECURITY DEFINER) because
-- they create triggers on watched tables; webhooks_admin is granted EXECUTE on them.

-- create_webhook gained profile and retry_schedule (issue 10), then pause_after and secret_headers
-- (issue 11, endpoint health): drop every older signature so that none is left as an overload.
DROP FUNCTION IF EXISTS webhooks.create_webhook(text, text, jsonb, text, text, boolean, integer, integer, integer, jsonb);
DROP FUNCTION IF EXISTS webhooks.create_webhook(text, text, jsonb, text, text, boolean, integer, integer, integer, jsonb, text, interval[]);
DROP FUNCTION IF EXISTS webhooks.create_webhook(text, text, jsonb, text, text, boolean, integer, integer, integer, jsonb, interval, jsonb);
DROP FUNCTION IF EXISTS webhooks.create_webhook(text, text, jsonb, text, text, boolean, integer, integer, integer, jsonb, text, interval[], interval, jsonb);

-- _webhook_view shows profile, retry_schedule, max_concurrency, rate_limit_per_second, pause_after
-- and paused since 0.2. A view's columns cannot be inserted by CREATE OR REPLACE (and
-- _new_webhook expands v.*): drop both, with the functions returning them (re-created below,
-- granted in 090, commented in 095), only when the installed view lacks them.
DO $$
BEGIN
    IF to_regclass('webhooks._webhook_view') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = to_regclass('webhooks._webhook_view') AND a.attname = 'rate_limit_per_second') THEN
        DROP VIEW webhooks._webhook_view CASCADE;
    END IF;
END
$$;

-- How a webhook is shown: everything but its secrets.
CREATE OR REPLACE VIEW webhooks._webhook_view AS
SELECT
    w.id,
    w.name,
    w.url,
    w.description,
    w.enabled,
    w.disabled_reason,
    coalesce((
        -- A dropped table's subscription stays listed, marked, under the name it last had.
        SELECT jsonb_agg((CASE WHEN c.oid IS NULL
                   THEN jsonb_build_object('table', coalesce(s.table_name, s.relid::text),
                                           'operations', to_jsonb(s.operations), 'dropped', true)
                   ELSE jsonb_build_object('table', format('%I.%I', n.nspname, c.relname),
                                           'operations', to_jsonb(s.operations))
                        -- capture filters (issue 11), only those set
                        || jsonb_strip_nulls(jsonb_build_object('columns', to_jsonb(s.columns),
                                                                'exclude_columns', to_jsonb(s.exclude_columns),
                                                                'where', s.where_clause))
               END)
               -- The event type a table's changes are sent as, when one is named.
               || CASE WHEN s.event_type IS NOT NULL THEN jsonb_build_object('event_type', s.event_type)
                       ELSE '{}' END
               ORDER BY n.nspname, c.relname, s.table_name)
        FROM webhooks.subscriptions s
        LEFT JOIN pg_catalog.pg_class c ON c.oid = s.relid
        LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE s.webhook_id = w.id
    ), '[]') || coalesce((
        SELECT jsonb_agg(jsonb_build_object('event_type', e.pattern) ORDER BY e.pattern)
        FROM webhooks.event_subscriptions e WHERE e.webhook_id = w.id
    ), '[]') AS events,
    w.max_retries,
    w.timeout_seconds,
    w.retry_backoff_seconds,
    w.headers,
    w.created_at,
    w.updated_at,
    w.profile,
    w.retry_schedule,
    w.max_concurrency,
    w.rate_limit_per_second,
    w.pause_after,
    w.paused
FROM webhooks.webhooks w;

-- create_webhook's result: the webhook and, this once, its secret.
CREATE OR REPLACE VIEW webhooks._new_webhook AS
SELECT v.*, NULL::text AS secret FROM webhooks._webhook_view v;

CREATE OR REPLACE FUNCTION webhooks._check_settings(
    name text, url text, max_retries integer, timeout_seconds integer,
    retry_backoff_seconds integer, headers jsonb, description text, except_id uuid)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webhooks._check_name(name, except_id);
    PERFORM webhooks._check_url(url);
    IF url ~* '^http://' AND (SELECT i.https_only FROM webhooks._installation i) THEN
        PERFORM webhooks._fail('WH024', 'url', format('%L is not an https:// URL; this installation refuses '
            'http:// (see webhooks.require_https)', url));
    END IF;
    PERFORM webhooks._check_range('max_retries', max_retries, 0, 50);
    PERFORM webhooks._check_range('timeout_seconds', timeout_seconds, 1, 300);
    PERFORM webhooks._check_range('retry_backoff_seconds', retry_backoff_seconds, 1, 86400);
    PERFORM webhooks._check_headers(headers);
    IF length(description) > 2000 THEN
        PERFORM webhooks._fail('WH013', 'description',
            format('is %s characters long; at most 2000 are allowed', length(description)));
    END IF;
END
$$;

-- max_concurrency (1-10000) and rate_limit_per_second (1-100000); NULL: no limit of its own.
CREATE OR REPLACE FUNCTION webhooks._check_limits(max_concurrency integer, rate_limit_per_second integer)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF max_concurrency IS NOT NULL THEN
        PERFORM webhooks._check_range('max_concurrency', max_concurrency, 1, 10000);
    END IF;
    IF rate_limit_per_second IS NOT NULL THEN
        PERFORM webhooks._check_range('rate_limit_per_second', rate_limit_per_second, 1, 100000);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION webhooks._webhook_exists(id uuid)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF id IS NULL OR NOT EXISTS (SELECT 1 FROM webhooks.webhooks w WHERE w.id = _webhook_exists.id) THEN
        PERFORM webhooks._fail('WH404', 'id', format('no webhook with id %s', coalesce(id::text, 'null')));
    END IF;
END
$$;

-- Every operation on a webhook needs the right its creation needed: the caller must be allowed
-- to watch every table it watches (SELECT, and whatever else _check_watchable asks). Otherwise an
-- admin who may not read a table could rotate_secret() a webhook on it and learn how to forge its
-- deliveries, or send_test() and replay() through it. A subscription whose table was dropped no
-- longer carries any row, so it asks nothing.
CREATE OR REPLACE FUNCTION webhooks._check_reach(webhook_id uuid)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webhooks._check_watchable(format('id (webhook watches %s)', s.table_name), s.relid)
    FROM webhooks.subscriptions s
    WHERE s.webhook_id = _check_reach.webhook_id AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = s.relid);
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

CREATE OR REPLACE FUNCTION webhooks.create_webhook(
    name text,
    url text,
    events jsonb,
    secret text DEFAULT NULL,
    description text DEFAULT NULL,
    enabled boolean DEFAULT true,
    -- NULL, with retry_backoff_seconds and retry_schedule NULL too: webhooks._default_retry_schedule()
    max_retries integer DEFAULT NULL,
    timeout_seconds integer DEFAULT 30,
    retry_backoff_seconds integer DEFAULT NULL,
    headers jsonb DEFAULT '{}',
    -- issue 10: receiver profile and fixed retry schedule (a schedule sets max_retries to its length)
    profile text DEFAULT 'standard',
    retry_schedule interval[] DEFAULT NULL,
    -- issue 11 (health): auto-pause window (NULL: never) and headers sent but never shown.
    pause_after interval DEFAULT interval '3 days',
    secret_headers jsonb DEFAULT '{}',
    -- per-webhook isolation (columns since migration 0003): NULL means no limit of its own.
    max_concurrency integer DEFAULT NULL,
    rate_limit_per_second integer DEFAULT NULL)
RETURNS SETOF webhooks._new_webhook
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id uuid;
    signing_secret text;
BEGIN
    -- Nothing said about retries: the default schedule, which outlasts a day's outage. Saying
    -- either number keeps the exponential backoff, its other number defaulting as before.
    IF max_retries IS NULL AND retry_backoff_seconds IS NULL AND retry_schedule IS NULL THEN
        retry_schedule := webhooks._default_retry_schedule();
    END IF;
    max_retries := coalesce(max_retries, 3);
    retry_backoff_seconds := coalesce(retry_backoff_seconds, 5);
    PERFORM webhooks._check_settings(name, url, max_retries, timeout_seconds,
                                     retry_backoff_seconds, headers, description, NULL);
    IF secret IS NOT NULL THEN
        PERFORM webhooks._check_secret(secret);
    END IF;
    IF enabled IS NULL THEN
        PERFORM webhooks._fail('WH013', 'enabled', 'must be true or false');
    END IF;
    signing_secret := coalesce(secret, webhooks._generate_secret());
    PERFORM webhooks._check_profile(profile);
    PERFORM webhooks._check_retry_schedule(retry_schedule);
    -- issue 11 (health): pause_after and secret_headers.
    PERFORM webhooks._check_pause_after(pause_after);
    PERFORM webhooks._check_secret_headers(secret_headers);
    PERFORM webhooks._check_url_credentials(url, headers, secret_headers);
    PERFORM webhooks._check_limits(max_concurrency, rate_limit_per_second);

    BEGIN
        INSERT INTO webhooks.webhooks (name, url, description, enabled, max_retries, timeout_seconds,
                                       retry_backoff_seconds, headers, profile, retry_schedule)
        VALUES (create_webhook.name, create_webhook.url, create_webhook.description, create_webhook.enabled,
                coalesce(cardinality(create_webhook.retry_schedule), create_webhook.max_retries),
                create_webhook.timeout_seconds,
                create_webhook.retry_backoff_seconds, create_webhook.headers,
                create_webhook.profile, create_webhook.retry_schedule)
        RETURNING id INTO new_id;
    EXCEPTION WHEN unique_violation THEN
        PERFORM webhooks._fail('WH002', 'name', format('a webhook named %L already exists', name));
    END;
    INSERT INTO webhooks.secrets (webhook_id, secret) VALUES (new_id, signing_secret);
    -- issue 11 (health)
    UPDATE webhooks.webhooks w SET pause_after = create_webhook.pause_after,
        max_concurrency = create_webhook.max_concurrency, rate_limit_per_second = create_webhook.rate_limit_per_second
    WHERE w.id = new_id;
    INSERT INTO webhooks.secret_headers (webhook_id, headers) VALUES (new_id, coalesce(secret_headers, '{}'));
    PERFORM webhooks._replace_subscriptions(new_id, events);

    RETURN QUERY SELECT v.*, signing_secret FROM webhooks._webhook_view v WHERE v.id = new_id;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.list_webhooks()
RETURNS SETOF webhooks._webhook_view
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM webhooks._webhook_view ORDER BY created_at, name
$$;

CREATE OR REPLACE FUNCTION webhooks.get_webhook(id uuid)
RETURNS SETOF webhooks._webhook_view
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webhooks._webhook_exists(id);
    RETURN QUERY SELECT * FROM webhooks._webhook_view v WHERE v.id = get_webhook.id;
END
$$;

-- A field of update_webhook's `changes`, checked for its JSON type.
CREATE OR REPLACE FUNCTION webhooks._change(changes jsonb, field text, expected text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    value jsonb := changes -> field;
BEGIN
    IF jsonb_typeof(value) <> expected AND NOT (jsonb_typeof(value) = 'null' AND field = 'description') THEN
        PERFORM webhooks._fail('WH012', field, format('expected a JSON %s, got %s', expected, value));
    END IF;
    -- Every number field is an integer column: say so rather than fail the cast later.
    IF expected = 'number' AND (value::text::numeric % 1 <> 0
                                OR value::text::numeric NOT BETWEEN -2147483648 AND 2147483647) THEN
        PERFORM webhooks._fail('WH012', field, format('expected an integer, got %s', value));
    ELSIF expected = 'number' THEN
        RETURN to_jsonb(value::text::numeric::integer);  -- 2.0 -> 2
    END IF;
    RETURN value;
END
$$;

-- update_webhook's retry_schedule: a JSON array of interval strings, or null (back to backoff).
CREATE OR REPLACE FUNCTION webhooks._schedule_from_json(value jsonb)
RETURNS interval[]
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF value IS NULL OR jsonb_typeof(value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(value) <> 'array' OR EXISTS (SELECT 1 FROM jsonb_array_elements(value) v
                                                 WHERE jsonb_typeof(v) <> 'string') THEN
        PERFORM webhooks._fail('WH023', 'retry_schedule',
            format('must be a JSON array of intervals like ["1 minute", "5 minutes"], got %s', value));
    END IF;
    BEGIN
        RETURN ARRAY(SELECT (v #>> '{}')::interval FROM jsonb_array_elements(value) WITH ORDINALITY AS a(v, o)
                     ORDER BY o);
    EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR interval_field_overflow THEN
        PERFORM webhooks._fail('WH023', 'retry_schedule', format('%s contains something that is not an interval', value));
    END;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.update_webhook(id uuid, changes jsonb)
RETURNS SETOF webhooks._webhook_view
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    current webhooks.webhooks;
    unknown text;
    new_enabled boolean;
    old_url text;
    kept_secret_headers jsonb;
BEGIN
    PERFORM webhooks._webhook_exists(id);
    IF changes IS NULL OR jsonb_typeof(changes) <> 'object' THEN
        PERFORM webhooks._fail('WH012', 'changes',
            format('must be a JSON object of fields to change, got %s', coalesce(changes::text, 'null')));
    END IF;
    SELECT k INTO unknown FROM jsonb_object_keys(changes) k
    WHERE k NOT IN ('name', 'url', 'events', 'secret', 'description', 'enabled', 'max_retries',
                    'timeout_seconds', 'retry_backoff_seconds', 'headers',
                    'profile', 'retry_schedule',  -- issue 10
                    'pause_after', 'secret_headers',  -- issue 11 (health)
                    'max_concurrency', 'rate_limit_per_second')
    LIMIT 1;
    IF unknown IS NOT NULL THEN
        PERFORM webhooks._fail('WH012', unknown, 'is not a field of a webhook',
            'fields: name, url, events, secret, description, enabled, max_retries, timeout_seconds, retry_backoff_seconds, headers, profile, retry_schedule, pause_after, secret_headers, max_concurrency, rate_limit_per_second');
    END IF;

    SELECT * INTO current FROM webhooks.webhooks w WHERE w.id = update_webhook.id FOR UPDATE;
    old_url := current.url;
    -- Whoever could redirect a webhook could read what it carries: only a caller who may read
    -- every table it watches may change it (the new `events` are checked the same way).
    PERFORM webhooks._check_reach(id);
    IF changes ? 'name' THEN current.name := webhooks._change(changes, 'name', 'string') #>> '{}'; END IF;
    IF changes ? 'url' THEN current.url := webhooks._change(changes, 'url', 'string') #>> '{}'; END IF;
    IF changes ? 'description' THEN
        current.description := webhooks._change(changes, 'description', 'string') #>> '{}';
    END IF;
    IF changes ? 'max_retries' THEN
        current.max_retries := webhooks._change(changes, 'max_retries', 'number') #>> '{}';
    END IF;
    IF changes ? 'timeout_seconds' THEN
        current.timeout_seconds := webhooks._change(changes, 'timeout_seconds', 'number') #>> '{}';
    END IF;
    IF changes ? 'retry_backoff_seconds' THEN
        current.retry_backoff_seconds := webhooks._change(changes, 'retry_backoff_seconds', 'number') #>> '{}';
    END IF;
    IF changes ? 'headers' THEN current.headers := changes -> 'headers'; END IF;
    -- issue 10: profile, and retry_schedule as a JSON array of intervals ("5 minutes") or null.
    IF changes ? 'profile' THEN
        current.profile := webhooks._change(changes, 'profile', 'string') #>> '{}';
        PERFORM webhooks._check_profile(current.profile);
    END IF;
    IF changes ? 'retry_schedule' THEN
        current.retry_schedule := webhooks._schedule_from_json(changes -> 'retry_schedule');
        PERFORM webhooks._check_retry_schedule(current.retry_schedule);
        current.max_retries := coalesce(cardinality(current.retry_schedule), current.max_retries);
    END IF;
    -- max_concurrency and rate_limit_per_second: an integer, or null for no limit of its own.
    IF changes ? 'max_concurrency' THEN
        current.max_concurrency := CASE WHEN jsonb_typeof(changes -> 'max_concurrency') <> 'null'
            THEN (webhooks._change(changes, 'max_concurrency', 'number') #>> '{}')::integer END;
    END IF;
    IF changes ? 'rate_limit_per_second' THEN
        current.rate_limit_per_second := CASE WHEN jsonb_typeof(changes -> 'rate_limit_per_second') <> 'null'
            THEN (webhooks._change(changes, 'rate_limit_per_second', 'number') #>> '{}')::integer END;
    END IF;
    PERFORM webhooks._check_limits(current.max_concurrency, current.rate_limit_per_second);
    IF changes ? 'enabled' THEN
        new_enabled := (webhooks._change(changes, 'enabled', 'boolean') #>> '{}')::boolean;
        IF new_enabled THEN
            current.disabled_reason := NULL;
        ELSIF current.enabled THEN
            current.disabled_reason := 'disabled by update_webhook';
        END IF;
        current.enabled := new_enabled;
    END IF;

    PERFORM webhooks._check_settings(current.name, current.url, current.max_retries, current.timeout_seconds,
                                     current.retry_backoff_seconds, current.headers, current.description, id);
    IF changes ? 'secret' THEN
        PERFORM webhooks._check_secret(webhooks._change(changes, 'secret', 'string') #>> '{}');
    END IF;
    -- Secret headers are credentials for the endpoint they were given for: a new URL drops them
    -- unless this same call restates them, so that nobody can redirect them to an address of theirs.
    IF changes ? 'secret_headers' THEN
        PERFORM webhooks._check_secret_headers(changes -> 'secret_headers');
        kept_secret_headers := changes -> 'secret_headers';
    ELSIF current.url IS DISTINCT FROM old_url THEN
        kept_secret_headers := '{}';
    ELSE
        SELECT h.headers INTO kept_secret_headers FROM webhooks.secret_headers h WHERE h.webhook_id = update_webhook.id;
    END IF;
    PERFORM webhooks._check_url_credentials(current.url, current.headers, kept_secret_headers);

    UPDATE webhooks.webhooks w SET
        name = current.name, url = current.url, description = current.description,
        enabled = current.enabled, disabled_reason = current.disabled_reason,
        max_retries = current.max_retries, timeout_seconds = current.timeout_seconds,
        retry_backoff_seconds = current.retry_backoff_seconds, headers = current.headers,
        profile = current.profile, retry_schedule = current.retry_schedule,
        max_concurrency = current.max_concurrency, rate_limit_per_second = current.rate_limit_per_second,
        updated_at = now()
    WHERE w.id = update_webhook.id;
    IF changes ? 'events' THEN
        PERFORM webhooks._replace_subscriptions(id, changes -> 'events');
    END IF;
    -- issue 11 (health): pause_after (an interval as a string, or null: never) and secret_headers
    -- (replaces them all; {} removes them).
    IF changes ? 'pause_after' THEN
        IF jsonb_typeof(changes -> 'pause_after') NOT IN ('string', 'null') THEN
            PERFORM webhooks._fail('WH012', 'pause_after',
                format('expected an interval as a JSON string (like "3 days") or null, got %s', changes -> 'pause_after'));
        END IF;
        PERFORM webhooks._check_pause_after_text(changes ->> 'pause_after');
        UPDATE webhooks.webhooks w SET pause_after = (changes ->> 'pause_after')::interval WHERE w.id = update_webhook.id;
    END IF;
    IF changes ? 'secret_headers' OR current.url IS DISTINCT FROM old_url THEN
        INSERT INTO webhooks.secret_headers AS h (webhook_id, headers) VALUES (id, kept_secret_headers)
        ON CONFLICT (webhook_id) DO UPDATE SET headers = EXCLUDED.headers;
    END IF;
    IF changes ? 'secret' THEN
        -- A replaced secret stops signing at once; rotate_secret() is the gentle way.
        DELETE FROM webhooks.secrets s WHERE s.webhook_id = update_webhook.id;
        INSERT INTO webhooks.secrets (webhook_id, secret) VALUES (id, changes ->> 'secret');
    END IF;

    RETURN QUERY SELECT * FROM webhooks._webhook_view v WHERE v.id = update_webhook.id;
END
$$;

-- Start signing with a new secret while the current ones stay valid for `grace_period`, so
-- receivers can switch over without a failed delivery. Returns the new secret.
CREATE OR REPLACE FUNCTION webhooks.rotate_secret(
    id uuid, new_secret text DEFAULT NULL, grace_period interval DEFAULT '24 hours')
RETURNS TABLE (secret text, previous_secrets_expire_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    signing_secret text;
    expiry timestamptz;
BEGIN
    PERFORM webhooks._webhook_exists(id);
    PERFORM webhooks._check_reach(id);
    IF new_secret IS NOT NULL THEN
        PERFORM webhooks._check_secret(new_secret);
    END IF;
    -- Checked before any arithmetic: now() + '1000000 years' overflows.
    IF grace_period IS NULL OR grace_period < interval '0' OR grace_period > interval '30 days' THEN
        PERFORM webhooks._fail('WH013', 'grace_period',
            format('%s is out of range; expected 0 to 30 days', coalesce(grace_period::text, 'null')));
    END IF;
    signing_secret := coalesce(new_secret, webhooks._generate_secret());
    expiry := now() + grace_period;
    DELETE FROM webhooks.secrets s WHERE s.webhook_id = rotate_secret.id AND s.expires_at <= now();
    UPDATE webhooks.secrets s SET expires_at = least(coalesce(s.expires_at, expiry), expiry)
    WHERE s.webhook_id = rotate_secret.id;
    INSERT INTO webhooks.secrets (webhook_id, secret) VALUES (rotate_secret.id, signing_secret);
    RETURN QUERY SELECT signing_secret, expiry;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.delete_webhook(id uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    relids oid[];
BEGIN
    PERFORM webhooks._webhook_exists(id);
    PERFORM webhooks._check_reach(id);
    -- Locked first, so a fan-out that reads the webhook (FOR KEY SHARE) either finishes before
    -- the deliveries are removed or finds the webhook gone.
    PERFORM 1 FROM webhooks.webhooks w WHERE w.id = delete_webhook.id FOR UPDATE;
    SELECT array_agg(s.relid) INTO relids FROM webhooks.subscriptions s WHERE s.webhook_id = delete_webhook.id;
    DELETE FROM webhooks.delivery_attempts a
    USING webhooks.deliveries d
    WHERE d.webhook_id = delete_webhook.id AND a.delivery_id = d.id;
    DELETE FROM webhooks.deliveries d WHERE d.webhook_id = delete_webhook.id;
    DELETE FROM webhooks.webhooks w WHERE w.id = delete_webhook.id;  -- subscriptions, secrets cascade
    PERFORM webhooks._sync_triggers(r) FROM unnest(relids) AS r;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.get_deliveries(id uuid, "limit" integer DEFAULT 50, "offset" integer DEFAULT 0)
RETURNS TABLE (
    delivery_id bigint,
    event_id uuid,
    event text,
    "table" text,
    status text,
    attempts integer,
    response_status integer,
    response_excerpt text,
    error text,
    latency_ms integer,
    created_at timestamptz,
    last_attempt_at timestamptz,
    next_attempt_at timestamptz,
    completed_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webhooks._webhook_exists(id);
    -- The log holds the receiver's answers, which may echo what was sent.
    PERFORM webhooks._check_reach(id);
    PERFORM webhooks._check_range('limit', "limit", 1, 1000);
    PERFORM webhooks._check_range('offset', "offset", 0, 2147483647);
    RETURN QUERY
    -- Changes captured but not yet turned into deliveries (that happens when a runner claims)
    -- come first, as status 'queued' without a delivery id: newest of all, and owed all the same.
    -- Only an enabled webhook's: a disabled one gets no delivery from them.
    WITH queued AS (
        -- A published event is listed by its type, not as EVENT.
        SELECT NULL::bigint AS id, webhooks._event_uid(c.id, g.n) AS event_id,
               CASE WHEN c.operation = 'EVENT' THEN coalesce(c.event_type, 'EVENT') ELSE c.operation END AS operation,
               format('%I.%I', c.schema_name, c.table_name) AS tbl, c.occurred_at, c.id AS capture_id, g.n
        FROM webhooks.captures c
        CROSS JOIN LATERAL generate_series(c.fanned_out + 1, c.row_count) AS g(n)
        WHERE c.fanned_out < c.row_count AND get_deliveries.id = ANY (c.webhook_ids)
          AND EXISTS (SELECT 1 FROM webhooks.webhooks w WHERE w.id = get_deliveries.id AND w.enabled)
        ORDER BY c.id DESC, g.n DESC
        LIMIT "limit"::bigint + "offset"
    ), listed AS (
        SELECT q.id, q.event_id, q.operation, q.tbl, 'queued'::text AS status, 0 AS attempts,
               NULL::integer AS status_code, NULL::text AS response_excerpt, NULL::text AS error,
               NULL::integer AS latency_ms, q.occurred_at AS created_at, NULL::timestamptz AS attempted_at,
               NULL::timestamptz AS next_attempt_at, NULL::timestamptz AS completed_at,
               0 AS part, q.capture_id AS k1, q.n::bigint AS k2
        FROM queued q
        UNION ALL
        -- Rows held for this webhook because its `where` failed at capture (release_held()).
        SELECT * FROM (
            SELECT NULL::bigint, NULL::uuid, h.operation, format('%I.%I', h.schema_name, h.table_name), 'held'::text,
                   0, NULL::integer, NULL::text, h.held_error, NULL::integer, h.held_at, NULL::timestamptz,
                   NULL::timestamptz, NULL::timestamptz, -1, h.id, 0::bigint
            FROM webhooks.held_rows h
            WHERE h.webhook_id = get_deliveries.id
            ORDER BY h.id DESC
            LIMIT "limit"::bigint + "offset"
        ) held
        UNION ALL
        SELECT * FROM (
            SELECT d.id, webhooks._event_uid(d.capture_id, d.n),
                   coalesce(CASE WHEN c.operation = 'EVENT' THEN c.event_type END, c.operation, 'PURGED'),
                   CASE WHEN c.id IS NOT NULL THEN format('%I.%I', c.schema_name, c.table_name) END,
                   d.status, d.attempts, a.status_code, a.response_excerpt, a.error, a.latency_ms, d.created_at,
                   a.attempted_at, CASE WHEN d.status = 'pending' THEN d.next_attempt_at END, d.completed_at,
                   1, d.id, 0::bigint
            FROM webhooks.deliveries d
            -- LEFT: a delivery whose event was purged under it stays visible (claim() fails it).
            LEFT JOIN webhooks.captures c ON c.id = d.capture_id
            LEFT JOIN LATERAL (
                SELECT * FROM webhooks.delivery_attempts x
                WHERE x.delivery_id = d.id ORDER BY x.attempt DESC, x.id DESC LIMIT 1
            ) a ON true
            WHERE d.webhook_id = get_deliveries.id
            ORDER BY d.id DESC
            LIMIT "limit"::bigint + "offset"
        ) listed_deliveries
    )
    SELECT l.id, l.event_id, l.operation, l.tbl, l.status, l.attempts, l.status_code, l.response_excerpt,
           l.error, l.latency_ms, l.created_at, l.attempted_at, l.next_attempt_at, l.completed_at
    FROM listed l
    ORDER BY l.part, l.k1 DESC, l.k2 DESC
    LIMIT "limit" OFFSET "offset";
END
$$;

-- Every attempt of one delivery, oldest first.
CREATE OR REPLACE FUNCTION webhooks.get_delivery_attempts(delivery_id bigint)
RETURNS TABLE (attempt integer, status_code integer, response_excerpt text, error text,
               latency_ms integer, attempted_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks.deliveries d WHERE d.id = get_delivery_attempts.delivery_id) THEN
        PERFORM webhooks._fail('WH404', 'delivery_id', format('no delivery with id %s', coalesce(delivery_id::text, 'null')));
    END IF;
    PERFORM webhooks._check_reach(d.webhook_id) FROM webhooks.deliveries d WHERE d.id = get_delivery_attempts.delivery_id;
    RETURN QUERY
    SELECT a.attempt, a.status_code, a.response_excerpt, a.error, a.latency_ms, a.attempted_at
    FROM webhooks.delivery_attempts a
    WHERE a.delivery_id = get_delivery_attempts.delivery_id
    ORDER BY a.attempt, a.id;
END
$$;

-- Re-create any capture trigger that no longer matches what its table needs; triggers already
-- right are left alone. Runs on every migrate; run it yourself after an ALTER TABLE that adds or
-- drops a table's primary key (the UPDATE trigger's kind depends on it) or partitions a table.
-- Returns how many watched tables were checked.
CREATE OR REPLACE FUNCTION webhooks.refresh_triggers()
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    checked integer := 0;
    r oid;
BEGIN
    -- In a restored copy, first point the subscriptions at the copy's tables (045_restore.sql).
    PERFORM webhooks._ensure_identity();
    FOR r IN SELECT DISTINCT s.relid FROM webhooks.subscriptions s ORDER BY s.relid LOOP
        PERFORM webhooks._sync_triggers(r);
        checked := checked + 1;
    END LOOP;
    RETURN checked;
END
$$;
