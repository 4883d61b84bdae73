-- pgwebhooks: what the runner calls with its results. complete() applies the delivery policy to
-- them under their leases; hold_refused() hands back what the runner's network policy refused to
-- send, without spending an attempt.

-- The steps of complete() that only read, each an SQL function the planner inlines into
-- complete's one statement (LANGUAGE sql, not STRICT, not SECURITY DEFINER, no SET clause), and
-- the circuit locks it takes first.

-- The delivery a result names, found by its primary key whatever the statistics say: joined
-- as a table, a webhook whose deliveries were counted when it had few was read whole through
-- deliveries_webhook_id (every delivery it ever had) for each report. OFFSET 0 keeps the
-- planner from flattening it back into that join.
CREATE OR REPLACE FUNCTION webhooks._delivery_of(delivery_id bigint)
RETURNS TABLE (id bigint, webhook_id uuid, attempts integer, free_attempts integer)
LANGUAGE sql STABLE
AS $$
    SELECT d.id, d.webhook_id, d.attempts, d.free_attempts
    FROM webhooks.deliveries d WHERE d.id = _delivery_of.delivery_id OFFSET 0
$$;

-- The circuits a report changes, locked in one order before anything else, so two runners'
-- reports cannot deadlock (claim() only ever skips a locked one). A healthy endpoint's
-- successes change nothing and lock nothing: claim() skips a webhook whose row is locked,
-- and locking it for every report made claims come back empty half the time.
CREATE OR REPLACE FUNCTION webhooks._lock_circuits(results jsonb)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM webhooks.endpoints e
    WHERE e.webhook_id IN (SELECT d.webhook_id
                           FROM jsonb_to_recordset(results) AS r(delivery_id bigint, status_code integer)
                           CROSS JOIN LATERAL webhooks._delivery_of(r.delivery_id) d
                           JOIN webhooks.endpoints x ON x.webhook_id = d.webhook_id
                           WHERE NOT coalesce(r.status_code BETWEEN 100 AND 499, false)
                              OR x.circuit <> 'closed' OR x.consecutive_failures > 0
                              OR webhooks._health_changes(r.status_code, x.failures_in_a_row, x.last_success_at))
    ORDER BY e.webhook_id
    FOR NO KEY UPDATE;
END
$$;

-- _outcomes returns each result's retry delay since 0.3: one from before is dropped first (a
-- function's result columns cannot be replaced).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc p WHERE p.oid = to_regprocedure('webhooks._outcomes(jsonb)')
                                         AND NOT 'delay' = ANY (p.proargnames)) THEN
        DROP FUNCTION webhooks._outcomes(jsonb);
    END IF;
END
$$;

-- Each reported result of a delivery that exists, judged: its webhook's retry settings, the
-- attempts it has spent, whether the endpoint failed (no response or a 5xx) and whether it was
-- the circuit's probe, the delivery's new status and whether the attempt is refunded (a failed
-- probe's). complete() applies it only under the lease the result names.
CREATE OR REPLACE FUNCTION webhooks._outcomes(results jsonb)
RETURNS TABLE (delivery_id bigint, attempt integer, status_code integer, response_excerpt text, error text,
               latency_ms integer, retry_after_seconds integer, webhook_id uuid, max_retries integer,
               retry_backoff_seconds integer, retry_schedule interval[], attempts integer,
               endpoint_failed boolean, probe boolean, new_status text, refund boolean, delay interval)
LANGUAGE sql STABLE
AS $$
    SELECT j.*,
           CASE
               WHEN j.status_code BETWEEN 200 AND 299 THEN 'delivered'
               -- 410 pauses the webhook (complete's `gone`): the delivery waits for its resume.
               WHEN j.probe AND j.endpoint_failed THEN 'pending'
               WHEN j.attempts > j.max_retries THEN 'failed'
               ELSE 'pending'
           END,
           j.probe AND j.endpoint_failed,
           webhooks._retry_delay(j.retry_backoff_seconds, j.attempts, j.status_code, j.retry_after_seconds,
                                 j.retry_schedule)
    FROM (
        SELECT r.*, w.id AS webhook_id, w.max_retries, w.retry_backoff_seconds, w.retry_schedule,
               d.attempts - d.free_attempts AS attempts,
               (r.status_code IS NULL OR r.status_code >= 500) AS endpoint_failed,
               coalesce(e.circuit <> 'closed' AND e.probe_delivery_id = d.id AND e.probe_attempt = r.attempt,
                        false) AS probe
        FROM (
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
        ) r
        CROSS JOIN LATERAL webhooks._delivery_of(r.delivery_id) d
        JOIN webhooks.webhooks w ON w.id = d.webhook_id
        LEFT JOIN webhooks.endpoints e ON e.webhook_id = w.id
    ) j
$$;

-- The error an attempt is logged with: the runner's (or "no response"), a failed probe's
-- refund, and the circuit it `opened`, if it did.
CREATE OR REPLACE FUNCTION webhooks._attempt_error(status_code integer, error text, refund boolean, opened boolean,
                                                   times_opened integer, failures_now integer)
RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT nullif(concat_ws('; ',
        -- No status and an empty error is still no response: the attempt must say what happened.
        CASE WHEN status_code IS NULL THEN coalesce(nullif(error, ''), 'no response') ELSE error END,
        CASE WHEN refund THEN 'circuit probe failed: this attempt does not count' END,
        CASE WHEN opened
             THEN format('circuit opened for %s s after %s consecutive failures',
                         extract(epoch FROM webhooks._circuit_cooldown(times_opened))::float8, failures_now)
        END), '')
$$;

-- complete()'s input: a JSON array of result objects, each field of its type and range.
CREATE OR REPLACE FUNCTION webhooks._check_results(results jsonb)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The runner's reports are valid, and checked in one pass: every key of the right JSON type,
    -- then every integer read as complete() reads it (1.0 or 2^31 do not read). Anything else is
    -- checked again below, key by key, for the message that names the problem (~6 us a result).
    BEGIN
        IF jsonb_typeof(results) = 'array' AND NOT EXISTS (
            SELECT 1 FROM jsonb_array_elements(results) AS e(v)
            WHERE jsonb_typeof(e.v) <> 'object'
               OR coalesce(jsonb_typeof(e.v -> 'delivery_id'), 'null') NOT IN ('number', 'null')
               OR coalesce(jsonb_typeof(e.v -> 'attempt'), 'null') NOT IN ('number', 'null')
               OR coalesce(jsonb_typeof(e.v -> 'status_code'), 'null') NOT IN ('number', 'null')
               OR coalesce(jsonb_typeof(e.v -> 'latency_ms'), 'null') NOT IN ('number', 'null')
               OR coalesce(jsonb_typeof(e.v -> 'retry_after_seconds'), 'null') NOT IN ('number', 'null')
               OR coalesce(jsonb_typeof(e.v -> 'response_excerpt'), 'null') NOT IN ('string', 'null')
               OR coalesce(jsonb_typeof(e.v -> 'error'), 'null') NOT IN ('string', 'null'))
        AND NOT EXISTS (
            SELECT 1 FROM jsonb_to_recordset(results) AS r(
                delivery_id bigint, attempt integer, status_code integer, latency_ms integer,
                retry_after_seconds integer)
            WHERE r.delivery_id IS NULL OR r.attempt IS NULL) THEN
            RETURN;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        NULL;  -- an integer that does not read: the check below says which
    END;
    PERFORM webhooks._check_json_array(results, 'results', '{
        "delivery_id": ["integer", -9223372036854775808, 9223372036854775807, true],
        "attempt": ["integer", -2147483648, 2147483647, true],
        "status_code": ["integer", -2147483648, 2147483647, false],
        "latency_ms": ["integer", -2147483648, 2147483647, false],
        "retry_after_seconds": ["integer", -2147483648, 2147483647, false],
        "response_excerpt": ["string", null, null, false],
        "error": ["string", null, null, false]}');
END
$$;

-- Apply the results of attempts, a JSON array of
--   {"delivery_id": 1, "attempt": 1, "status_code": 200, "response_excerpt": "...",
--    "error": null, "latency_ms": 12, "retry_after_seconds": null}
-- A result is accepted only under the lease it was claimed with: same attempt number, lease not
-- expired. Returns each delivery's new status, or 'refused'.
--
-- Each webhook's circuit learns from the accepted results (see webhooks.endpoints): no response
-- or a 5xx is a failure, any other response shows the endpoint alive and closes the circuit.
-- A failed probe is logged but does not count against its delivery, which waits for the circuit.
-- enable_material off: with statistics taken while few deliveries were leased, the planner
-- matched the report against a materialised scan of every leased delivery, once per result.
CREATE OR REPLACE FUNCTION webhooks.complete(results jsonb)
RETURNS TABLE (delivery_id bigint, attempt integer, status text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off SET enable_material = off
AS $$
#variable_conflict use_column
DECLARE
    answered jsonb;
    changed jsonb;  -- the accepted results of webhooks whose health figures change
BEGIN
    PERFORM webhooks._check_results(results);
    PERFORM webhooks._lock_circuits(results);
    WITH applied AS (
        UPDATE webhooks.deliveries d
        SET status = o.new_status,
            -- A failed probe's attempt keeps its number (the lease's fencing token) and spends no
            -- retry budget: counted as free rather than taken back.
            free_attempts = CASE WHEN o.refund THEN d.free_attempts + 1 ELSE d.free_attempts END,
            next_attempt_at = CASE WHEN o.refund THEN now()
                                   WHEN o.new_status = 'pending' THEN now() + o.delay
                                   ELSE d.next_attempt_at END,
            completed_at = CASE WHEN o.new_status <> 'pending' THEN now() END
        FROM webhooks._outcomes(results) o
        -- Lease checks only the primary key can serve (see _delivery_of): planned with no lease
        -- counted, a scan of the leased index per result cost 84 ms per 200 results (pgTAP 067).
        WHERE d.id = o.delivery_id AND d.attempts = o.attempt
          AND d.status || '' = 'leased' AND d.next_attempt_at + interval '0' > now()
        -- What the steps below need, carried out: joined back to the outcomes instead, each step
        -- was a nested loop of every result against every other (a CTE's size is unknown).
        RETURNING d.id, d.status, o.delivery_id, o.attempt, o.status_code, o.response_excerpt, o.error,
                  o.latency_ms, o.webhook_id, o.endpoint_failed, o.probe, o.refund
    ),
    -- Each webhook's verdict over this batch, and what it does to the circuit.
    verdict AS (
        SELECT o.webhook_id, bool_or(NOT o.endpoint_failed) AS alive,
               count(*) FILTER (WHERE o.endpoint_failed)::integer AS failures,
               bool_or(o.probe) AS probed,
               max(o.delivery_id) FILTER (WHERE o.endpoint_failed) AS last_failed
        FROM applied o
        GROUP BY o.webhook_id
    ),
    transition AS (
        SELECT v.*, e.circuit AS old_circuit, e.times_opened,
               e.consecutive_failures + v.failures AS failures_now,
               CASE
                   WHEN v.alive THEN 'closed'
                   WHEN e.circuit = 'half_open' AND v.probed THEN 'open'
                   WHEN e.circuit = 'closed'
                        AND e.consecutive_failures + v.failures >= webhooks._circuit_failure_threshold() THEN 'open'
                   ELSE e.circuit
               END AS new_circuit
        FROM verdict v JOIN webhooks.endpoints e ON e.webhook_id = v.webhook_id
        WHERE NOT (v.alive AND e.circuit = 'closed' AND e.consecutive_failures = 0)
    ),
    circuit AS (
        UPDATE webhooks.endpoints e
        SET consecutive_failures = CASE WHEN t.alive THEN 0 ELSE t.failures_now END,
            circuit = t.new_circuit,
            times_opened = CASE WHEN t.alive THEN 0
                                WHEN t.new_circuit = 'open' AND t.old_circuit <> 'open' THEN t.times_opened + 1
                                ELSE t.times_opened END,
            retry_at = CASE WHEN t.new_circuit = 'open' AND t.old_circuit <> 'open'
                            THEN now() + webhooks._circuit_cooldown(t.times_opened)
                            WHEN t.new_circuit = 'open' THEN e.retry_at END,
            probe_delivery_id = CASE WHEN t.new_circuit = t.old_circuit THEN e.probe_delivery_id END,
            probe_attempt = CASE WHEN t.new_circuit = t.old_circuit THEN e.probe_attempt END,
            circuit_changed_at = CASE WHEN t.new_circuit <> t.old_circuit THEN now() ELSE e.circuit_changed_at END,
            circuit_reason = CASE
                WHEN t.new_circuit = t.old_circuit THEN e.circuit_reason
                WHEN t.new_circuit = 'closed' THEN 'closed: the endpoint answered'
                ELSE format('opened for %s s after %s consecutive failures',
                            extract(epoch FROM webhooks._circuit_cooldown(t.times_opened))::float8, t.failures_now)
            END
        FROM transition t
        WHERE e.webhook_id = t.webhook_id
    ),
    logged AS (
        INSERT INTO webhooks.delivery_attempts (delivery_id, attempt, status_code, response_excerpt, error, latency_ms,
                                                webhook_id)
        SELECT o.delivery_id, o.attempt, o.status_code, left(o.response_excerpt, 4096),
               webhooks._attempt_error(o.status_code, o.error, o.refund,
                   t.new_circuit = 'open' AND t.old_circuit <> 'open' AND o.delivery_id = t.last_failed,
                   t.times_opened, t.failures_now),
               greatest(o.latency_ms, 0), o.webhook_id
        FROM applied o
        LEFT JOIN transition t ON t.webhook_id = o.webhook_id
    ),
    -- 410 Gone pauses the webhook with its reason rather than dropping its queue.
    gone AS (
        UPDATE webhooks.webhooks w
        SET paused = true, paused_at = now(),
            paused_reason = format('the endpoint answered 410 Gone at %s', now()),
            updated_at = now()
        FROM applied o
        WHERE w.id = o.webhook_id AND o.status_code = 410 AND NOT w.paused
    ),
    -- The webhooks whose health figures this report changes (see _health_changes): a healthy
    -- endpoint's successes mostly change nothing, and _record_health is then not called at all.
    health AS (
        SELECT DISTINCT a.webhook_id
        FROM applied a JOIN webhooks.endpoints e ON e.webhook_id = a.webhook_id
        WHERE webhooks._health_changes(a.status_code, e.failures_in_a_row, e.last_success_at)
    ),
    answer AS (
        SELECT r.delivery_id, r.attempt, coalesce(a.status, 'refused') AS status,
               a.webhook_id IN (SELECT h.webhook_id FROM health h) AS health
        FROM jsonb_to_recordset(results) AS r(delivery_id bigint, attempt integer)
        LEFT JOIN applied a ON a.id = r.delivery_id
    )
    SELECT coalesce(jsonb_agg(jsonb_build_object('delivery_id', x.delivery_id, 'attempt', x.attempt,
                                                 'status', x.status) ORDER BY x.delivery_id), '[]'),
           jsonb_agg(jsonb_build_object('delivery_id', x.delivery_id, 'attempt', x.attempt, 'status', x.status))
               FILTER (WHERE x.health)
    INTO answered, changed
    FROM answer x;
    -- Health figures, alerts and auto-pause, from the accepted results just logged (a statement
    -- of its own: the circuit above already updated the endpoints rows in this one).
    IF changed IS NOT NULL THEN
        PERFORM webhooks._record_health(changed);
    END IF;
    RETURN QUERY
    SELECT a.delivery_id, a.attempt, a.status
    FROM jsonb_to_recordset(answered) AS a(delivery_id bigint, attempt integer, status text)
    ORDER BY a.delivery_id;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.complete(results text)
RETURNS TABLE (delivery_id bigint, attempt integer, status text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM webhooks.complete(webhooks._parse_json_input('results', results))
$$;

-- For the runner: deliveries it would not send because its own network policy refuses their
-- destination (a private address without --allow-cidr). Sending was never tried, so no attempt
-- is spent: each goes back to pending under its lease's terms, as in release(), and its webhook
-- is paused with the runner's reason (the `paused` alert says so; resume_webhook sends the queue
-- once the runner is allowed). `refusals` is [{"delivery_id", "attempt", "reason"}]; returns how
-- many deliveries were handed back.
CREATE OR REPLACE FUNCTION webhooks.hold_refused(refusals jsonb)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
DECLARE
    held integer;
BEGIN
    PERFORM webhooks._check_json_array(refusals, 'refusals', '{
        "delivery_id": ["integer", -9223372036854775808, 9223372036854775807, true],
        "attempt": ["integer", -2147483648, 2147483647, true],
        "reason": ["string", null, null, false]}');
    WITH back AS (
        UPDATE webhooks.deliveries d
        SET status = 'pending', attempts = d.attempts - 1, next_attempt_at = now()
        FROM jsonb_to_recordset(refusals) AS r(delivery_id bigint, attempt integer, reason text)
        WHERE d.id = r.delivery_id AND d.status = 'leased' AND d.attempts = r.attempt
        RETURNING d.webhook_id, r.reason
    ), paused AS (
        UPDATE webhooks.webhooks w
        SET paused = true, paused_at = now(), updated_at = now(),
            paused_reason = left(format('the runner refused to send: %s; then resume_webhook',
                                        coalesce(b.reason, 'its network policy refuses the destination; '
                                                 || 'allow it with --allow-private-networks or --allow-cidr')), 2000)
        FROM (SELECT DISTINCT ON (b.webhook_id) b.webhook_id, b.reason FROM back b ORDER BY b.webhook_id) b
        WHERE w.id = b.webhook_id AND NOT w.paused
    )
    SELECT count(*) INTO held FROM back;
    RETURN held;
END
$$;

GRANT EXECUTE ON FUNCTION webhooks.complete(jsonb), webhooks.complete(text), webhooks.hold_refused
TO webhooks_runner;

COMMENT ON FUNCTION webhooks.complete(jsonb) IS
    'For the runner: apply a JSON array of attempt results under their leases; returns each delivery''s new status or refused.';

COMMENT ON FUNCTION webhooks.complete(text) IS
    'complete() given JSON text: parsed first, so a NUL (\u0000) is WH034 and text that is no JSON WH013.';

COMMENT ON FUNCTION webhooks.hold_refused IS
    'For the runner: hand back deliveries its network policy refused to send ([{"delivery_id", "attempt", "reason"}]) without spending their attempt, and pause their webhooks with the reason.';
