-- pgwebhooks: the management API (create, list, get, rotate_secret, delete; update_webhook is in
-- 071). Functions run as their owner (SECURITY DEFINER) because they create triggers on watched
-- tables; webhooks_admin is granted EXECUTE on them.

-- create_webhook gained profile and retry_schedule, then pause_after and secret_headers (all in
-- 0.2): drop every older signature so that none is left as an overload.
DROP FUNCTION IF EXISTS webhooks.create_webhook(text, text, jsonb, text, text, boolean, integer, integer, integer, jsonb);

DROP FUNCTION IF EXISTS webhooks.create_webhook(text, text, jsonb, text, text, boolean, integer, integer, integer, jsonb, text, interval[]);

DROP FUNCTION IF EXISTS webhooks.create_webhook(text, text, jsonb, text, text, boolean, integer, integer, integer, jsonb, interval, jsonb);

DROP FUNCTION IF EXISTS webhooks.create_webhook(text, text, jsonb, text, text, boolean, integer, integer, integer, jsonb, text, interval[], interval, jsonb);

-- _webhook_view shows profile, retry_schedule, max_concurrency, rate_limit_per_second, pause_after
-- and paused since 0.2. A view's columns cannot be inserted by CREATE OR REPLACE (and
-- _new_webhook expands v.*): drop both, with the functions returning them (re-created,
-- granted and commented below), only when the installed view lacks them.
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
                        -- capture filters, only those set
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
    -- receiver profile and fixed retry schedule (a schedule sets max_retries to its length)
    profile text DEFAULT 'standard',
    retry_schedule interval[] DEFAULT NULL,
    -- auto-pause window (NULL: never) and headers sent but never shown.
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
    -- pause_after and secret_headers.
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

GRANT EXECUTE ON FUNCTION webhooks.create_webhook TO webhooks_admin;
GRANT EXECUTE ON FUNCTION webhooks.list_webhooks, webhooks.get_webhook TO webhooks_admin, webhooks_viewer;
GRANT EXECUTE ON FUNCTION webhooks.rotate_secret, webhooks.delete_webhook TO webhooks_admin;

COMMENT ON TABLE webhooks.webhooks IS
    'Webhook endpoints: URL, retry policy, extra headers, enabled flag. Manage through create_webhook() / update_webhook().';

COMMENT ON TABLE webhooks.secrets IS
    'Signing secrets; several are valid while a secret is rotated. Readable by the installer only: secrets never leave the database.';

COMMENT ON VIEW webhooks._webhook_view IS
    'How a webhook is shown by list_webhooks() and get_webhook(): everything but its secrets.';

COMMENT ON VIEW webhooks._new_webhook IS
    'create_webhook()''s result: the webhook and, this once, its secret.';

COMMENT ON FUNCTION webhooks.create_webhook IS
    'Create a webhook. events: [{"table": "orders", "operations": ["INSERT", "UPDATE"], "where": "tenant_id = 42"}, {"event_type": "order.*"}]; profile: standard, fluxbase, fluxbase_hex, truss, rowbase, flux, supabase or hasura; retry_schedule replaces backoff (with none of max_retries, retry_backoff_seconds and retry_schedule given: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h); pause_after: pause automatically after failing this long (NULL: never); secret_headers: sent but never shown; max_concurrency (1-10000) and rate_limit_per_second (1-100000), NULL for no limit of its own. Returns it with its secret, shown only now. Errors: WH001-WH025.';

COMMENT ON FUNCTION webhooks.list_webhooks IS
    'Every webhook, oldest first; never shows secrets.';

COMMENT ON FUNCTION webhooks.get_webhook IS
    'One webhook by id (WH404 if unknown); never shows its secrets.';

COMMENT ON FUNCTION webhooks.rotate_secret IS
    'Start signing with a new secret (generated if not given); the current ones keep signing for grace_period (0 to 30 days). Returns the new secret.';

COMMENT ON FUNCTION webhooks.delete_webhook IS
    'Delete a webhook, its deliveries and attempts, and any capture trigger no longer needed.';
