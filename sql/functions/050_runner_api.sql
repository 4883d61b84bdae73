-- pgwebhooks 006: what the runner calls. claim() hands out leased, fully signed requests;
-- complete() applies the delivery policy to their results; release() hands back unsent work.
-- The runner holds no secret and no policy: both live here.
-- Plans here are pinned rather than left to statistics. A queue's tables churn faster than
-- autovacuum analyzes them, and a plan made while `deliveries` looked empty (sequential scans,
-- bitmap scans of a webhook's whole history) grew with every delivery ever kept; with
-- enable_seqscan and enable_bitmapscan off, claim() walks `deliveries_due` in order and stops
-- at its limit, whatever the statistics say. jit is off: row estimates for generate_series and
-- unnest make small plans look expensive enough to JIT-compile (~400 ms a call for ~10 ms of work).

CREATE OR REPLACE FUNCTION webhooks.version()
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$ SELECT '0.1.0' $$;

-- How long to wait before attempt `attempts` + 1: exponential from the webhook's backoff,
-- with ±25% jitter so that a burst of failures does not retry in lockstep, capped at a day.
-- A Retry-After from a 429 or 503 is honoured instead (capped at a day as well).
CREATE OR REPLACE FUNCTION webhooks._retry_delay(
    backoff_seconds integer, attempts integer, status_code integer, retry_after_seconds integer)
RETURNS interval
LANGUAGE sql VOLATILE
AS $$
    SELECT make_interval(secs => CASE
        WHEN status_code IN (429, 503) AND retry_after_seconds IS NOT NULL
            THEN least(greatest(retry_after_seconds, 0), 86400)
        -- The jitter goes inside the cap: applied after it, a day's cap became up to 30 hours.
        ELSE least(backoff_seconds * power(2, least(attempts - 1, 30)) * (0.75 + random() * 0.5), 86400)
    END)
$$;

-- The public id of an event: stable across retries (receivers deduplicate on it), unique across
-- installations thanks to the installation's random salt.
CREATE OR REPLACE FUNCTION webhooks._event_uid(capture_id bigint, n integer)
RETURNS uuid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT md5(i.salt::text || '/' || capture_id || '/' || n)::uuid FROM webhooks._installation i
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
            WHEN jsonb_typeof(e.v -> s.key) <> 'number' THEN
                format('must be an integer, not %s', left((e.v -> s.key)::text, 40))
            WHEN (e.v ->> s.key)::numeric <> trunc((e.v ->> s.key)::numeric)
              OR (e.v ->> s.key)::numeric NOT BETWEEN (s.rule ->> 1)::numeric AND (s.rule ->> 2)::numeric THEN
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

-- Turn captured changes into deliveries, about `budget` of them: one per changed row per
-- subscribed webhook that is enabled now. Runs inside claim(), so the writer never pays for it;
-- a large capture is fanned out over several calls.
CREATE OR REPLACE FUNCTION webhooks._fan_out(budget integer)
RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
    -- One statement for the whole batch, not three per capture: an OLTP backlog is thousands of
    -- one-row captures, and a loop over them cost about 0.2 ms each (see `make bench`).
    WITH locked AS (
        SELECT c.id, c.webhook_ids, c.row_count, c.fanned_out
        FROM webhooks.captures c
        WHERE c.fanned_out < c.row_count
        ORDER BY c.id
        LIMIT budget  -- every capture yields at least one delivery or costs one unit
        FOR UPDATE SKIP LOCKED
    ), targeted AS (
        SELECT l.*, h.hooks, coalesce(cardinality(h.hooks), 0) AS hook_count
        FROM locked l
        CROSS JOIN LATERAL (
            -- FOR KEY SHARE: a delete_webhook() running now waits for this fan-out to commit (and
            -- then deletes what it created), or, having deleted first, leaves nothing to fan out to.
            -- Without it, deliveries were created for a webhook deleted meanwhile, orphans forever.
            SELECT array_agg(x.id ORDER BY x.id) AS hooks
            FROM (SELECT w.id FROM webhooks.webhooks w WHERE w.id = ANY (l.webhook_ids) AND w.enabled
                  FOR KEY SHARE OF w) x
        ) h
    ), priced AS (
        -- A capture nobody receives any more is closed at once and costs one unit.
        SELECT t.*, CASE WHEN t.hook_count = 0 THEN 1 ELSE (t.row_count - t.fanned_out) * t.hook_count END AS cost
        FROM targeted t
    ), costed AS (
        -- What the captures before this one spend. (A frame ending at 1 PRECEDING is recomputed
        -- for every row, quadratic in the batch; a running sum minus the row's own cost is not.)
        SELECT p.*, sum(p.cost) OVER (ORDER BY p.id) - p.cost AS spent
        FROM priced p
    ), planned AS (
        SELECT c.id, c.hooks, c.fanned_out,
               CASE WHEN c.hook_count = 0 THEN c.row_count - c.fanned_out
                    ELSE least(c.row_count - c.fanned_out, ceil((budget - c.spent)::numeric / c.hook_count)::integer)
               END AS take
        FROM costed c
        WHERE c.spent < budget
    ), created AS (
        INSERT INTO webhooks.deliveries (capture_id, n, webhook_id)
        SELECT p.id, g, hook
        FROM planned p
        CROSS JOIN LATERAL generate_series(p.fanned_out + 1, p.fanned_out + p.take) AS g
        CROSS JOIN LATERAL unnest(p.hooks) AS hook
        ORDER BY p.id, g, hook
        RETURNING 1
    ), advanced AS (
        UPDATE webhooks.captures c SET fanned_out = c.fanned_out + p.take
        FROM planned p WHERE c.id = p.id
    )
    SELECT count(*)::integer FROM created
$$;

-- Lease up to `batch_size` due deliveries. Each comes back with its attempt number (the fencing
-- token complete() checks), the exact body and every header already signed.
--
-- `per_webhook_limit` caps how many deliveries of one webhook a call returns and `skip_webhooks`
-- leaves out webhooks the caller has no room for, so a slow endpoint's backlog cannot fill a
-- runner's batch. A lease lasts twice the webhook's timeout (a claimed delivery may wait for one
-- request of its webhook to finish first) plus `lease_margin_seconds`; when it runs out, the
-- delivery is due again.
CREATE OR REPLACE FUNCTION webhooks.claim(
    batch_size integer DEFAULT 100,
    lease_margin_seconds integer DEFAULT 30,
    per_webhook_limit integer DEFAULT NULL,
    skip_webhooks uuid[] DEFAULT '{}')
RETURNS TABLE (
    delivery_id bigint,
    attempt integer,
    webhook_id uuid,
    url text,
    body text,
    headers jsonb,
    timeout_seconds integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
BEGIN
    PERFORM webhooks._check_range('batch_size', batch_size, 1, 10000);
    PERFORM webhooks._check_range('lease_margin_seconds', lease_margin_seconds, 1, 3600);
    IF per_webhook_limit IS NOT NULL THEN
        PERFORM webhooks._check_range('per_webhook_limit', per_webhook_limit, 1, 10000);
    END IF;
    -- Fan out ahead of this batch, so that other runners find committed work too while this one
    -- holds a large capture.
    PERFORM webhooks._fan_out(batch_size * 4);
    RETURN QUERY
    WITH candidate AS (
        SELECT d.id, d.webhook_id, d.status, d.next_attempt_at, d.attempts, d.capture_id, w.max_retries
        FROM webhooks.deliveries d
        JOIN webhooks.webhooks w ON w.id = d.webhook_id AND w.enabled
        WHERE d.status IN ('pending', 'leased') AND d.next_attempt_at <= now()
          AND d.webhook_id <> ALL (coalesce(skip_webhooks, '{}'))
        ORDER BY d.next_attempt_at
        -- Look further ahead when some candidates may be set aside by the per-webhook cap.
        LIMIT CASE WHEN per_webhook_limit IS NULL THEN batch_size ELSE batch_size * 4 END
        FOR UPDATE OF d SKIP LOCKED
    ),
    -- What can never be sent is failed here rather than leased again and again: an event purged
    -- meanwhile (a replay racing purge), or a delivery with no attempt left (its last lease
    -- expired, or max_retries was lowered). No delivery is attempted more than max_retries + 1 times.
    judged AS (
        SELECT c.*, CASE
            WHEN NOT EXISTS (SELECT 1 FROM webhooks.captures x WHERE x.id = c.capture_id)
                THEN 'not sent: the event was purged before it could be delivered'
            WHEN c.attempts > c.max_retries AND c.status = 'leased'
                THEN 'lease expired before a result was reported (runner stopped or stalled); no attempts left'
            WHEN c.attempts > c.max_retries
                THEN format('not sent: no attempts left (%s made, max_retries %s)', c.attempts, c.max_retries)
        END AS fatal
        FROM candidate c
    ),
    doomed AS (
        UPDATE webhooks.deliveries d
        SET status = 'failed', completed_at = now()
        FROM judged j
        WHERE d.id = j.id AND j.fatal IS NOT NULL
        RETURNING d.id, d.attempts, j.fatal
    ),
    doomed_logged AS (
        INSERT INTO webhooks.delivery_attempts (delivery_id, attempt, error)
        SELECT x.id, greatest(x.attempts, 1), x.fatal FROM doomed x
    ),
    due AS (
        SELECT c.id, c.status AS previous_status
        FROM (SELECT c.*, row_number() OVER (PARTITION BY c.webhook_id ORDER BY c.next_attempt_at) AS nth
              FROM judged c WHERE c.fatal IS NULL) c
        WHERE per_webhook_limit IS NULL OR c.nth <= per_webhook_limit
        ORDER BY c.next_attempt_at
        LIMIT batch_size
    ),
    leased AS (
        UPDATE webhooks.deliveries d
        SET status = 'leased',
            attempts = d.attempts + 1,
            next_attempt_at = now() + make_interval(secs => 2 * w.timeout_seconds + lease_margin_seconds)
        FROM due, webhooks.webhooks w
        WHERE d.id = due.id AND w.id = d.webhook_id
        RETURNING d.id, d.attempts, d.capture_id, d.n, d.webhook_id, due.previous_status
    ),
    -- A lease that ran out means a runner died or stalled mid-attempt: say so in the log.
    expired AS (
        INSERT INTO webhooks.delivery_attempts (delivery_id, attempt, error)
        SELECT l.id, l.attempts - 1, 'lease expired before a result was reported (runner stopped or stalled)'
        FROM leased l
        WHERE l.previous_status = 'leased'
    )
    SELECT l.id, l.attempts, w.id, w.url, p.body,
           w.headers
           || jsonb_build_object('Content-Type', 'application/json',
                                 'User-Agent', 'pgwebhooks/' || webhooks.version())
           || webhooks._sign_headers(p.uid::text, floor(extract(epoch FROM now()))::bigint, p.body, k.secrets),
           w.timeout_seconds
    FROM leased l
    JOIN webhooks.webhooks w ON w.id = l.webhook_id
    JOIN webhooks.captures c ON c.id = l.capture_id
    LEFT JOIN webhooks.events e ON c.row_count > 1 AND e.capture_id = l.capture_id AND e.n = l.n
    -- webhooks._event_uid() inline: called through the LATERAL it ran once per reference.
    CROSS JOIN LATERAL (
        SELECT md5(i.salt::text || '/' || l.capture_id || '/' || l.n)::uuid AS uid FROM webhooks._installation i
    ) u
    CROSS JOIN LATERAL (
        SELECT u.uid, json_build_object(
            'id', u.uid,
            'event', c.operation,
            'table', c.table_name,
            'schema', c.schema_name,
            'record', coalesce(e.record, c.record),
            'old_record', CASE WHEN c.operation = 'DELETE' THEN coalesce(e.record, c.record)
                               ELSE coalesce(e.old_record, c.old_record) END,
            'timestamp', to_char(c.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'webhook_id', w.id)::text AS body
    ) p
    CROSS JOIN LATERAL (
        SELECT array_agg(s.secret ORDER BY s.id DESC) AS secrets
        FROM webhooks.secrets s
        WHERE s.webhook_id = w.id AND (s.expires_at IS NULL OR s.expires_at > now())
    ) k
    ORDER BY l.id;
END
$$;

-- Apply the results of attempts, a JSON array of
--   {"delivery_id": 1, "attempt": 1, "status_code": 200, "response_excerpt": "...",
--    "error": null, "latency_ms": 12, "retry_after_seconds": null}
-- A result is accepted only under the lease it was claimed with: same attempt number, lease not
-- expired. Returns each delivery's new status, or 'refused'.
CREATE OR REPLACE FUNCTION webhooks.complete(results jsonb)
RETURNS TABLE (delivery_id bigint, attempt integer, status text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
BEGIN
    PERFORM webhooks._check_json_array(results, 'results', '{
        "delivery_id": ["integer", -9223372036854775808, 9223372036854775807, true],
        "attempt": ["integer", -2147483648, 2147483647, true],
        "status_code": ["integer", -2147483648, 2147483647, false],
        "latency_ms": ["integer", -2147483648, 2147483647, false],
        "retry_after_seconds": ["integer", -2147483648, 2147483647, false],
        "response_excerpt": ["string", null, null, false],
        "error": ["string", null, null, false]}');
    RETURN QUERY
    WITH result AS (
        -- A status outside 100-599 (some servers send 999) is no HTTP status: log it as an error
        -- rather than let one odd response fail the whole batch on the attempts table's CHECK.
        SELECT r.delivery_id, r.attempt,
               CASE WHEN r.status_code BETWEEN 100 AND 599 THEN r.status_code END AS status_code,
               r.response_excerpt,
               CASE WHEN r.status_code NOT BETWEEN 100 AND 599
                    THEN concat_ws('; ', format('invalid HTTP status %s', r.status_code), r.error)
                    ELSE r.error END AS error,
               r.latency_ms, r.retry_after_seconds
        FROM jsonb_to_recordset(results) AS r(
            delivery_id bigint, attempt integer, status_code integer, response_excerpt text,
            error text, latency_ms integer, retry_after_seconds integer)
    ),
    outcome AS (
        SELECT r.*, w.id AS webhook_id,
               CASE
                   WHEN r.status_code BETWEEN 200 AND 299 THEN 'delivered'
                   WHEN r.status_code = 410 THEN 'failed'
                   WHEN d.attempts > w.max_retries THEN 'failed'
                   ELSE 'pending'
               END AS new_status,
               webhooks._retry_delay(w.retry_backoff_seconds, d.attempts, r.status_code,
                                     r.retry_after_seconds) AS delay
        FROM result r
        JOIN webhooks.deliveries d ON d.id = r.delivery_id
        JOIN webhooks.webhooks w ON w.id = d.webhook_id
    ),
    applied AS (
        UPDATE webhooks.deliveries d
        SET status = o.new_status,
            next_attempt_at = CASE WHEN o.new_status = 'pending' THEN now() + o.delay ELSE d.next_attempt_at END,
            completed_at = CASE WHEN o.new_status <> 'pending' THEN now() END
        FROM outcome o
        WHERE d.id = o.delivery_id
          AND d.status = 'leased'
          AND d.attempts = o.attempt
          AND d.next_attempt_at > now()
        RETURNING d.id, d.status
    ),
    logged AS (
        INSERT INTO webhooks.delivery_attempts (delivery_id, attempt, status_code, response_excerpt, error, latency_ms)
        SELECT o.delivery_id, o.attempt, o.status_code, left(o.response_excerpt, 4096),
               CASE WHEN o.status_code IS NULL THEN coalesce(o.error, 'no response') ELSE o.error END,
               greatest(o.latency_ms, 0)
        FROM outcome o JOIN applied a ON a.id = o.delivery_id
    ),
    gone AS (
        UPDATE webhooks.webhooks w
        SET enabled = false,
            disabled_reason = format('the endpoint answered 410 Gone at %s', now()),
            updated_at = now()
        FROM outcome o JOIN applied a ON a.id = o.delivery_id
        WHERE w.id = o.webhook_id AND o.status_code = 410 AND w.enabled
    )
    SELECT r.delivery_id, r.attempt, coalesce(a.status, 'refused')
    FROM result r LEFT JOIN applied a ON a.id = r.delivery_id
    ORDER BY r.delivery_id;
END
$$;

-- Hand leased deliveries back unsent (a runner shutting down): they are due again at once and
-- the attempt does not count. `leases` is a JSON array of {"delivery_id": 1, "attempt": 1}.
CREATE OR REPLACE FUNCTION webhooks.release(leases jsonb)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
DECLARE
    released integer;
BEGIN
    PERFORM webhooks._check_json_array(leases, 'leases', '{
        "delivery_id": ["integer", -9223372036854775808, 9223372036854775807, true],
        "attempt": ["integer", -2147483648, 2147483647, true]}');
    UPDATE webhooks.deliveries d
    SET status = 'pending', attempts = d.attempts - 1, next_attempt_at = now()
    FROM jsonb_to_recordset(leases) AS l(delivery_id bigint, attempt integer)
    WHERE d.id = l.delivery_id AND d.status = 'leased' AND d.attempts = l.attempt;
    GET DIAGNOSTICS released = ROW_COUNT;
    RETURN released;
END
$$;
