-- pgwebhooks: what the dashboard, its JSON API and the runner's /metrics read (issue 17).
--
-- The dashboard calls the management functions for everything they do; the functions here add
-- only what they lack: a filterable delivery log that names published events by their type, the
-- request a delivery sent (re-rendered from the outbox, never stored twice), a chart's worth of
-- recent attempts, the backlog for the runner's metrics, and API tokens kept as hashes.
-- Errors: WH040 a bad filter or option, WH041 a bad token name, WH042 no such token,
-- WH043 a request that cannot be shown.

-- Per webhook: state, backlog and circuit, for the runner's /metrics (webhooks_runner reads no
-- table; this is the one window it gets, and it shows neither URLs nor secrets).
CREATE OR REPLACE FUNCTION webhooks.runner_backlog()
RETURNS TABLE (webhook_id uuid, name text, state text, pending bigint, oldest_pending_at timestamptz,
               circuit text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
    SELECT s.id, s.name, s.state, s.pending, s.oldest_pending_at, coalesce(s.circuit, 'closed')
    FROM webhooks.get_webhook_status() s
$$;

-- A webhook's deliveries, newest first, with filters: only_status, only_event (an operation such
-- as INSERT, or an event type), created since/until; `before_id` pages on (the last id shown).
-- `event` is a published event's type (and a table change's operation), never EVENT.
CREATE OR REPLACE FUNCTION webhooks.delivery_log(
    id uuid, only_status text DEFAULT NULL, only_event text DEFAULT NULL, since timestamptz DEFAULT NULL,
    until timestamptz DEFAULT NULL, "limit" integer DEFAULT 50, before_id bigint DEFAULT NULL)
RETURNS TABLE (
    delivery_id bigint,
    event_id uuid,
    event text,
    event_type text,
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
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
BEGIN
    PERFORM webhooks._webhook_exists(id);
    PERFORM webhooks._check_reach(id);  -- as get_deliveries: receivers' answers may echo the rows
    PERFORM webhooks._check_range('limit', "limit", 1, 500);
    IF only_status IS NOT NULL AND only_status NOT IN ('pending', 'leased', 'delivered', 'failed') THEN
        PERFORM webhooks._fail('WH040', 'only_status', format('%L is not one of pending, leased, delivered, failed', only_status));
    END IF;
    IF length(only_event) > 200 THEN
        PERFORM webhooks._fail('WH040', 'only_event', format('is %s characters long; at most 200 are allowed', length(only_event)));
    END IF;
    RETURN QUERY
    SELECT d.id, webhooks._event_uid(d.capture_id, d.n),
           coalesce(CASE WHEN c.operation = 'EVENT' THEN c.event_type END, c.operation, 'PURGED'),
           coalesce(c.event_type, sub.event_type),
           CASE WHEN c.id IS NOT NULL AND c.operation NOT IN ('EVENT', 'TEST')
                THEN format('%I.%I', c.schema_name, c.table_name) END,
           d.status, d.attempts, a.status_code, a.response_excerpt, a.error, a.latency_ms, d.created_at,
           a.attempted_at, CASE WHEN d.status = 'pending' THEN d.next_attempt_at END, d.completed_at
    FROM webhooks.deliveries d
    LEFT JOIN webhooks.captures c ON c.id = d.capture_id
    LEFT JOIN webhooks.subscriptions sub ON sub.webhook_id = d.webhook_id AND sub.relid = c.relid
                                        AND c.operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
    LEFT JOIN LATERAL (
        SELECT * FROM webhooks.delivery_attempts x
        WHERE x.delivery_id = d.id ORDER BY x.attempt DESC, x.id DESC LIMIT 1
    ) a ON true
    WHERE d.webhook_id = delivery_log.id
      AND (before_id IS NULL OR d.id < before_id)
      AND (only_status IS NULL OR d.status = only_status)
      AND (since IS NULL OR d.created_at >= since)
      AND (until IS NULL OR d.created_at < until)
      AND (only_event IS NULL OR c.operation = only_event OR coalesce(c.event_type, sub.event_type) = only_event)
    ORDER BY d.id DESC
    LIMIT "limit";
END
$$;

-- The request a delivery sent (its latest attempt, or `attempt`): webhook, URL, body and headers,
-- re-rendered from the outbox as claim() renders them. The body is byte-identical to what the
-- receiver got as long as the webhook's profile and name have not changed since. Secret header
-- values and signatures are never shown (they stand as "[secret]" and "[signed when sent]"); a
-- table change is shown only to a caller who may SELECT that table.
CREATE OR REPLACE FUNCTION webhooks.delivery_request(delivery_id bigint, attempt integer DEFAULT NULL)
RETURNS TABLE (webhook_id uuid, url text, body text, headers jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
DECLARE
    d webhooks.deliveries;
    w webhooks.webhooks;
    c webhooks.captures;
    e webhooks.events;
    sub webhooks.subscriptions;
    uid uuid;
    n_attempt integer;
    rendered text;
    signed jsonb;
    shown jsonb;
    k text;
BEGIN
    SELECT * INTO d FROM webhooks.deliveries x WHERE x.id = delivery_request.delivery_id;
    IF NOT FOUND THEN
        PERFORM webhooks._fail('WH404', 'delivery_id', format('no delivery with id %s', coalesce(delivery_id::text, 'null')));
    END IF;
    SELECT * INTO w FROM webhooks.webhooks x WHERE x.id = d.webhook_id;
    IF NOT FOUND THEN
        PERFORM webhooks._fail('WH043', 'delivery_id', format('delivery %s belongs to a deleted webhook', delivery_id));
    END IF;
    PERFORM webhooks._check_reach(w.id);  -- as get_delivery_attempts (040_management.sql)
    SELECT * INTO c FROM webhooks.captures x WHERE x.id = d.capture_id;
    IF NOT FOUND THEN
        PERFORM webhooks._fail('WH043', 'delivery_id', format('the event of delivery %s was purged', delivery_id));
    END IF;
    IF c.operation NOT IN ('EVENT', 'TEST') AND NOT has_table_privilege(webhooks._caller(), c.relid, 'SELECT') THEN
        PERFORM webhooks._fail('WH043', 'delivery_id', format('role %I may not SELECT %I.%I, the table delivery %s '
            'comes from', webhooks._caller(), c.schema_name, c.table_name, delivery_id));
    END IF;
    n_attempt := coalesce(attempt, greatest(d.attempts, 1));
    IF n_attempt < 1 OR n_attempt > greatest(d.attempts, 1) THEN
        PERFORM webhooks._fail('WH040', 'attempt', format('%s is out of range; delivery %s has %s attempt(s)',
                                                         n_attempt, delivery_id, d.attempts));
    END IF;
    IF c.row_count > 1 THEN
        SELECT * INTO e FROM webhooks.events x WHERE x.capture_id = c.id AND x.n = d.n;
    END IF;
    SELECT * INTO sub FROM webhooks.subscriptions s
    WHERE s.webhook_id = w.id AND s.relid = c.relid AND c.operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE');
    uid := webhooks._event_uid(c.id, d.n);
    rendered := webhooks._envelope(
        w.profile, uid, c.operation, coalesce(c.event_type, sub.event_type), c.schema_name, c.table_name,
        webhooks._without(coalesce(e.record, c.record), sub.exclude_columns),
        webhooks._without(coalesce(e.old_record, c.old_record), sub.exclude_columns),
        to_char(c.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        w.id, c.data, w.name, n_attempt, w.max_retries);
    -- Signed with a throwaway key, for the names of the headers only: their values are replaced.
    signed := webhooks._sign_headers(uid::text, 0, rendered, ARRAY['whsec_' || encode(convert_to('x', 'UTF8'), 'base64')]);
    signed := signed || webhooks._profile_headers(w.profile, signed, rendered, 'x');
    shown := '{}';
    FOR k IN SELECT jsonb_object_keys(signed) LOOP
        shown := shown || jsonb_build_object(k, CASE WHEN lower(k) = 'webhook-id' THEN uid::text
                                                     WHEN lower(k) = 'webhook-timestamp' THEN '[time of sending]'
                                                     ELSE '[signed when sent]' END);
    END LOOP;
    RETURN QUERY SELECT w.id, w.url, rendered,
        w.headers
        || coalesce((SELECT jsonb_object_agg(h.key, '[secret]')
                     FROM webhooks.secret_headers sh, jsonb_each(sh.headers) h WHERE sh.webhook_id = w.id), '{}')
        || jsonb_build_object('Content-Type', 'application/json', 'User-Agent', 'pgwebhooks/' || webhooks.version())
        || shown;
END
$$;

-- Attempts per webhook in `buckets` slots of `slot` up to now, for the overview's charts: one
-- index range per webhook (delivery_attempts_webhook_recent), never the whole log.
CREATE OR REPLACE FUNCTION webhooks.delivery_histogram(slot interval DEFAULT '30 minutes', buckets integer DEFAULT 12)
RETURNS TABLE (webhook_id uuid, bucket_start timestamptz, delivered bigint, failed bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
DECLARE
    origin timestamptz;
BEGIN
    PERFORM webhooks._check_range('buckets', buckets, 1, 200);
    IF slot IS NULL OR slot < interval '1 minute' OR slot > interval '1 day' THEN
        PERFORM webhooks._fail('WH040', 'slot', format('%s is out of range; expected 1 minute to 1 day', coalesce(slot::text, 'null')));
    END IF;
    origin := date_bin(slot, now(), timestamptz '2000-01-01') - slot * (buckets - 1);
    RETURN QUERY
    SELECT w.id, h.b, h.delivered, h.failed
    FROM webhooks.webhooks w
    CROSS JOIN LATERAL (
        SELECT date_bin(slot, a.attempted_at, timestamptz '2000-01-01') AS b,
               count(*) FILTER (WHERE a.status_code BETWEEN 200 AND 299) AS delivered,
               count(*) FILTER (WHERE NOT coalesce(a.status_code BETWEEN 200 AND 299, false)) AS failed
        FROM webhooks.delivery_attempts a
        WHERE a.webhook_id = w.id AND a.attempted_at >= origin
        GROUP BY 1
    ) h
    ORDER BY w.id, h.b;
END
$$;

-- API tokens. A token is `pgwh_` and 64 hex digits from two random UUIDs (gen_random_uuid uses
-- the server's strong random source); only its SHA-256 is stored. Shown once.
CREATE OR REPLACE FUNCTION webhooks.create_api_token(name text, access text DEFAULT 'read')
RETURNS TABLE (token_id uuid, token_name text, token_access text, token text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    secret text := 'pgwh_' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
    new_id uuid;
BEGIN
    IF name IS NULL OR btrim(name) = '' OR name ~ '[\x01-\x1f\x7f]' OR length(name) > 200 THEN
        PERFORM webhooks._fail('WH041', 'name', format('must be 1 to 200 printable characters, got %s',
                                                      coalesce(quote_literal(left(name, 220)), 'null')));
    END IF;
    IF access IS NULL OR access NOT IN ('admin', 'read') THEN
        PERFORM webhooks._fail('WH040', 'access', format('%s is not admin or read', coalesce(quote_literal(access), 'null')));
    END IF;
    INSERT INTO webhooks.api_tokens (name, token_sha256, access)
    VALUES (create_api_token.name, sha256(convert_to(secret, 'UTF8')), create_api_token.access)
    RETURNING api_tokens.id INTO new_id;
    RETURN QUERY SELECT new_id, create_api_token.name, create_api_token.access, secret;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.revoke_api_token(id uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE webhooks.api_tokens t SET revoked_at = coalesce(t.revoked_at, now()) WHERE t.id = revoke_api_token.id;
    IF NOT FOUND THEN
        PERFORM webhooks._fail('WH042', 'id', format('no API token with id %s', coalesce(id::text, 'null')));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.list_api_tokens()
RETURNS TABLE (id uuid, name text, access text, created_at timestamptz, last_used_at timestamptz,
               revoked_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.id, t.name, t.access, t.created_at, t.last_used_at, t.revoked_at
    FROM webhooks.api_tokens t ORDER BY t.created_at, t.id
$$;

-- The role a token acts as (webhooks_admin or webhooks_viewer), NULL for an unknown or revoked
-- one. last_used_at is kept to the minute, so a busy client does not write a row per request.
CREATE OR REPLACE FUNCTION webhooks.authenticate_api_token(token text)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t webhooks.api_tokens;
BEGIN
    IF token IS NULL OR length(token) > 200 THEN
        RETURN NULL;
    END IF;
    SELECT * INTO t FROM webhooks.api_tokens x
    WHERE x.token_sha256 = sha256(convert_to(token, 'UTF8')) AND x.revoked_at IS NULL;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute' THEN
        UPDATE webhooks.api_tokens x SET last_used_at = now() WHERE x.id = t.id;
    END IF;
    RETURN CASE t.access WHEN 'admin' THEN 'webhooks_admin' ELSE 'webhooks_viewer' END;
END
$$;

-- Whether any token is usable: the dashboard refuses a non-loopback address without one.
CREATE OR REPLACE FUNCTION webhooks.api_tokens_configured()
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM webhooks.api_tokens t WHERE t.revoked_at IS NULL)
$$;
