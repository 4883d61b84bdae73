-- pgwebhooks: endpoint health, pause without loss, alerts.
--
-- Health figures are counters kept on each webhook's endpoints row by complete() (see
-- _record_health), so webhook_status reads one row per webhook plus its queue and its last
-- hour of attempts, never the whole delivery log.
--
-- Alerts go out as NOTIFY on channel `webhooks_alerts`, one JSON object each:
--   {"kind": "failing" | "paused" | "recovered" | "disabled" | "exhausted", "at": ..., "webhook_id": ...,
--    "name": ..., ...}
-- through webhooks._alert(), which also publishes them as application events
-- (pgwebhooks.webhook.failing|paused|recovered|disabled, pgwebhooks.delivery.exhausted).

-- How many attempts in a row must fail before a webhook counts as failing (and says so once),
-- and the fewest failed attempts an auto-pause needs, however long the failures have lasted.
CREATE OR REPLACE FUNCTION webhooks._failing_threshold()
RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$ SELECT 3 $$;

CREATE OR REPLACE FUNCTION webhooks._auto_pause_min_attempts()
RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$ SELECT 5 $$;

-- The event types alerts are published as, declared on every migrate; existing
-- declarations are left as they are.
INSERT INTO webhooks.event_types AS t (name, description, webhook_ids)
SELECT v.name, v.description, webhooks._subscribers(v.name)
FROM (VALUES
    ('pgwebhooks.webhook.failing', 'pgwebhooks alert: a webhook''s endpoint has failed several attempts in a row'),
    ('pgwebhooks.webhook.paused', 'pgwebhooks alert: a webhook was paused (by hand, a 410 Gone, or automatically)'),
    ('pgwebhooks.webhook.recovered', 'pgwebhooks alert: a failing webhook''s endpoint answered again'),
    ('pgwebhooks.webhook.disabled', 'pgwebhooks alert: a webhook was disabled'),
    ('pgwebhooks.delivery.exhausted', 'pgwebhooks alert: a delivery ran out of retries')) AS v(name, description)
ON CONFLICT (name) DO NOTHING;

-- An alert as a NOTIFY payload, which PostgreSQL caps at 8000 bytes: string fields (a pause
-- reason may be 2,000 characters, an error as long) are cut, with a marker, until it fits.
CREATE OR REPLACE FUNCTION webhooks._alert_note(body jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        (SELECT n.note FROM (
            SELECT l.keep, (SELECT jsonb_object_agg(e.key, CASE
                                WHEN jsonb_typeof(e.value) = 'string' AND length(e.value #>> '{}') > l.keep
                                THEN to_jsonb(left(e.value #>> '{}', l.keep) || '… [truncated]')
                                ELSE e.value END)
                            FROM jsonb_each(body) e)::text AS note
            FROM (VALUES (1000000), (1000), (200), (40)) AS l(keep)) n
         WHERE octet_length(n.note) < 8000 ORDER BY n.keep DESC LIMIT 1),
        jsonb_build_object('kind', body -> 'kind', 'at', body -> 'at', 'webhook_id', body -> 'webhook_id',
                           'truncated', true)::text)
$$;

-- Send one alert: a NOTIFY on webhooks_alerts, and an application event of type
-- pgwebhooks.webhook.<kind> (pgwebhooks.delivery.exhausted) with the same JSON as data, to every
-- webhook subscribed to it except the one the alert is about (its endpoint is the one in
-- trouble). An `exhausted` alert about a delivery of an alert event is not published again, and
-- deliveries of alert events count in no webhook's health (_record_health), so webhooks
-- subscribed to each other's alerts cannot keep feeding each other.
-- Inserts the capture as publish() does (publish() refuses the reserved pgwebhooks.* types).
CREATE OR REPLACE FUNCTION webhooks._alert(kind text, payload jsonb)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    body jsonb := jsonb_build_object('kind', kind, 'at', now()) || coalesce(payload, '{}');
    type_name text := CASE WHEN kind = 'exhausted' THEN 'pgwebhooks.delivery.exhausted'
                           ELSE 'pgwebhooks.webhook.' || kind END;
BEGIN
    PERFORM pg_notify('webhooks_alerts', webhooks._alert_note(body));
    IF kind = 'exhausted' AND starts_with(coalesce(payload ->> 'event_type', ''), 'pgwebhooks.') THEN
        RETURN;
    END IF;
    -- As publish(): a restored copy's ids start a new salt. Unsettled, the capture waits for the
    -- switch like any other (nothing is fanned out before it).
    IF current_setting('pgwebhooks.identity_checked', true) IS DISTINCT FROM webhooks._identity_token() THEN
        PERFORM webhooks._ensure_identity();
    END IF;
    INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count,
                                   event_type, data)
    SELECT 'EVENT', 0, 'webhooks', 'events', x.hooks, 1, t.name, body
    FROM webhooks.event_types t
    CROSS JOIN LATERAL (SELECT array_remove(t.webhook_ids, (payload ->> 'webhook_id')::uuid) AS hooks) x
    WHERE t.name = type_name AND cardinality(x.hooks) > 0;
    IF FOUND THEN
        PERFORM pg_notify('webhooks', '');
    END IF;
END
$$;

-- Whether a reported result changes a webhook's health figures: any failure, the first success
-- after failures, or a success when the last one recorded is over a second old. A healthy
-- endpoint's stream of successes thus updates (and locks) its row at most about once a second:
-- last_success_at is exact to a second.
CREATE OR REPLACE FUNCTION webhooks._health_changes(
    status_code integer, failures_in_a_row integer, last_success_at timestamptz)
RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT NOT coalesce(status_code BETWEEN 200 AND 299, false) OR failures_in_a_row > 0
           OR last_success_at IS NULL OR last_success_at < now() - interval '1 second'
$$;

-- After complete() applied a report (`results`: the accepted ones, {delivery_id, attempt, status}): update the health counters of the webhooks whose rows it
-- locked (see _health_changes), send failing / recovered / exhausted alerts, and pause a
-- webhook whose attempts have all failed for its pause_after (with at least a few attempts).
CREATE OR REPLACE FUNCTION webhooks._record_health(results jsonb)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ch record;
BEGIN
    FOR ch IN
        WITH logged AS (
            -- This transaction's attempts for the reported results: now() is the same instant.
            -- Deliveries of alert events (pgwebhooks.*) are left out: counted, their failures would
            -- raise alerts that are delivered to the other alert subscribers, whose failures raise
            -- alerts delivered back, without end.
            SELECT a.id, a.webhook_id, a.status_code, a.error
            FROM jsonb_to_recordset(results) AS r(delivery_id bigint, attempt integer)
            JOIN webhooks.delivery_attempts a ON a.delivery_id = r.delivery_id AND a.attempt = r.attempt
            JOIN webhooks.deliveries d ON d.id = r.delivery_id
            WHERE a.attempted_at = now() AND a.webhook_id IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM webhooks.captures c
                              WHERE c.id = d.capture_id AND starts_with(c.event_type, 'pgwebhooks.'))
        ), per_hook AS (
            SELECT l.webhook_id,
                   coalesce(bool_or(l.status_code BETWEEN 200 AND 299), false) AS ok,
                   (count(*) FILTER (WHERE NOT coalesce(l.status_code BETWEEN 200 AND 299, false)))::integer AS failures,
                   (array_agg(left(coalesce(l.error, 'HTTP ' || l.status_code), 500) ORDER BY l.id DESC)
                        FILTER (WHERE NOT coalesce(l.status_code BETWEEN 200 AND 299, false)))[1] AS last_error
            FROM logged l GROUP BY l.webhook_id
        ), before AS (
            SELECT e.webhook_id, e.failures_in_a_row FROM webhooks.endpoints e
            WHERE e.webhook_id IN (SELECT p.webhook_id FROM per_hook p)
        )
        UPDATE webhooks.endpoints e SET
            failures_in_a_row = CASE WHEN p.ok THEN 0 ELSE e.failures_in_a_row + p.failures END,
            failing_since = CASE WHEN p.ok THEN NULL ELSE coalesce(e.failing_since, now()) END,
            last_success_at = CASE WHEN p.ok THEN now() ELSE e.last_success_at END,
            last_failure_at = CASE WHEN p.failures > 0 THEN now() ELSE e.last_failure_at END,
            last_error = coalesce(p.last_error, e.last_error)
        FROM per_hook p JOIN before b ON b.webhook_id = p.webhook_id
        WHERE e.webhook_id = p.webhook_id
          -- Only rows complete() locked, in order, before its first write (no deadlocks).
          AND (p.failures > 0 OR e.failures_in_a_row > 0 OR e.last_success_at IS NULL
               OR e.last_success_at < now() - interval '1 second')
        RETURNING e.webhook_id, b.failures_in_a_row AS failures_before, e.failures_in_a_row AS failures_now,
                  e.failing_since, e.last_error, p.ok
    LOOP
        IF ch.failures_before < webhooks._failing_threshold() AND ch.failures_now >= webhooks._failing_threshold() THEN
            PERFORM webhooks._alert('failing', jsonb_build_object(
                'webhook_id', ch.webhook_id, 'name', (SELECT w.name FROM webhooks.webhooks w WHERE w.id = ch.webhook_id),
                'consecutive_failures', ch.failures_now, 'failing_since', ch.failing_since, 'last_error', ch.last_error));
        ELSIF ch.ok AND ch.failures_before >= webhooks._failing_threshold() THEN
            PERFORM webhooks._alert('recovered', jsonb_build_object(
                'webhook_id', ch.webhook_id, 'name', (SELECT w.name FROM webhooks.webhooks w WHERE w.id = ch.webhook_id),
                'failures_before', ch.failures_before));
        END IF;
        -- Auto-pause: the queue is kept; the trigger below sends the `paused` alert.
        UPDATE webhooks.webhooks w
        SET paused = true, paused_at = now(), updated_at = now(),
            paused_reason = format('paused automatically: all %s attempts since %s failed (pause_after %s); last error: %s',
                                   ch.failures_now, ch.failing_since, w.pause_after, ch.last_error)
        WHERE w.id = ch.webhook_id AND NOT w.paused AND w.pause_after IS NOT NULL
          AND ch.failures_now >= webhooks._auto_pause_min_attempts()
          AND ch.failing_since <= now() - w.pause_after;
    END LOOP;
    -- Deliveries whose retries ran out in this report.
    PERFORM webhooks._alert('exhausted', jsonb_build_object(
        'webhook_id', d.webhook_id, 'name', w.name, 'delivery_id', d.id,
        'event_id', webhooks._event_id(c.published_id, d.capture_id, d.n), 'attempts', d.attempts, 'event_type', c.event_type))
    FROM jsonb_to_recordset(results) AS r(delivery_id bigint, attempt integer, status text)
    JOIN webhooks.deliveries d ON d.id = r.delivery_id
    JOIN webhooks.webhooks w ON w.id = d.webhook_id
    LEFT JOIN webhooks.captures c ON c.id = d.capture_id
    WHERE r.status = 'failed' AND NOT coalesce(starts_with(c.event_type, 'pgwebhooks.'), false);
END
$$;

-- `paused` and `disabled` alerts, whoever changes the webhook (pause_webhook, a 410, the
-- auto-pause, update_webhook's enabled = false).
CREATE OR REPLACE FUNCTION webhooks._state_alert()
RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.paused AND NOT OLD.paused THEN
        PERFORM webhooks._alert('paused', jsonb_build_object('webhook_id', NEW.id, 'name', NEW.name,
                                                             'reason', NEW.paused_reason));
    END IF;
    IF OLD.enabled AND NOT NEW.enabled THEN
        PERFORM webhooks._alert('disabled', jsonb_build_object('webhook_id', NEW.id, 'name', NEW.name,
                                                               'reason', NEW.disabled_reason));
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER webhooks_state_alert AFTER UPDATE OF paused, enabled ON webhooks.webhooks
    FOR EACH ROW EXECUTE FUNCTION webhooks._state_alert();

-- Pause: changes keep being captured and queued for the webhook, nothing is sent until resume.
CREATE OR REPLACE FUNCTION webhooks.pause_webhook(id uuid, reason text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webhooks._webhook_exists(id);
    PERFORM webhooks._check_reach(id);  -- 070_webhooks.sql
    IF length(reason) > 2000 THEN
        PERFORM webhooks._fail('WH013', 'reason', format('is %s characters long; at most 2000 are allowed', length(reason)));
    END IF;
    UPDATE webhooks.webhooks w
    SET paused = true, paused_at = now(), updated_at = now(),
        paused_reason = coalesce(reason, 'paused by pause_webhook')
    WHERE w.id = pause_webhook.id AND NOT w.paused;
END
$$;

-- Resume: everything queued meanwhile is sent. The failure streak starts its pause_after window
-- afresh, so a webhook resumed after an auto-pause is not paused again by its first failure.
CREATE OR REPLACE FUNCTION webhooks.resume_webhook(id uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webhooks._webhook_exists(id);
    PERFORM webhooks._check_reach(id);  -- 070_webhooks.sql
    UPDATE webhooks.webhooks w SET paused = false, paused_at = NULL, paused_reason = NULL, updated_at = now()
    WHERE w.id = resume_webhook.id AND w.paused;
    UPDATE webhooks.endpoints e SET failing_since = now()
    WHERE e.webhook_id = resume_webhook.id AND e.failing_since IS NOT NULL;
    PERFORM pg_notify('webhooks', '');
END
$$;

-- One row per webhook. `pending` is everything still owed: deliveries pending or leased, plus
-- changes captured but not yet turned into deliveries (right after commit). Cost: one row per
-- webhook, its queue (the partial due index) and its last hour of attempts; never the log.
-- A function under the view for its settings: with a large outbox the planner's estimates made
-- the plan look expensive enough to JIT-compile (300 ms of compiling for 20 ms of work), and
-- SECURITY DEFINER so that admins read the figures without reading endpoints or captures.
CREATE OR REPLACE FUNCTION webhooks.get_webhook_status()
RETURNS TABLE (id uuid, name text, state text, pending bigint, oldest_pending_at timestamptz,
               consecutive_failures integer, last_success_at timestamptz, last_failure_at timestamptz,
               last_error text, delivered bigint, failed_attempts bigint, p50_latency_ms double precision,
               p95_latency_ms double precision, paused_reason text, disabled_reason text,
               pause_after interval, circuit text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
SELECT
    w.id,
    w.name,
    CASE WHEN NOT w.enabled THEN 'disabled'
         WHEN w.paused THEN 'paused'
         WHEN coalesce(e.failures_in_a_row, 0) >= webhooks._failing_threshold() THEN 'failing'
         ELSE 'healthy' END AS state,
    (q.pending + coalesce(c.captured, 0))::bigint AS pending,
    CASE WHEN q.oldest IS NULL THEN c.oldest WHEN c.oldest IS NULL THEN q.oldest
         ELSE least(q.oldest, c.oldest) END AS oldest_pending_at,
    coalesce(e.failures_in_a_row, 0) AS consecutive_failures,
    e.last_success_at,
    e.last_failure_at,
    e.last_error,
    h.delivered,
    h.failed_attempts,
    h.p50_latency_ms,
    h.p95_latency_ms,
    w.paused_reason,
    w.disabled_reason,
    w.pause_after,
    e.circuit
FROM webhooks.webhooks w
LEFT JOIN webhooks.endpoints e ON e.webhook_id = w.id
CROSS JOIN LATERAL (
    SELECT count(*) AS pending, min(d.created_at) AS oldest
    FROM webhooks.deliveries d
    WHERE d.webhook_id = w.id AND d.status IN ('pending', 'leased')
) q
LEFT JOIN LATERAL (
    -- Not yet fanned out, or past the webhook's cursors (published events and one-row changes,
    -- 041_cursors.sql; some of them may have been given ahead): only enabled webhooks will get
    -- deliveries from them.
    SELECT sum(y.captured) AS captured, min(y.oldest) AS oldest FROM (
        SELECT sum(x.row_count - x.fanned_out) AS captured, min(x.occurred_at) AS oldest
        FROM webhooks.captures x
        WHERE x.fanned_out < x.row_count AND w.id = ANY (x.webhook_ids)
        UNION ALL
        SELECT count(*), min(x.occurred_at)
        FROM webhooks.cursors k
        JOIN webhooks.captures x ON x.route = k.route AND x.route IS NOT NULL AND (x.xid, x.id) > (k.xid, k.id)
        WHERE k.webhook_id = w.id
    ) y
) c ON w.enabled
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE a.status_code BETWEEN 200 AND 299) AS delivered,
           count(*) FILTER (WHERE NOT coalesce(a.status_code BETWEEN 200 AND 299, false)) AS failed_attempts,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY a.latency_ms) AS p50_latency_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY a.latency_ms) AS p95_latency_ms
    FROM webhooks.delivery_attempts a
    WHERE a.webhook_id = w.id AND a.attempted_at > now() - interval '1 hour'
) h
$$;

CREATE OR REPLACE VIEW webhooks.webhook_status AS
SELECT * FROM webhooks.get_webhook_status();

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

GRANT EXECUTE ON FUNCTION webhooks.pause_webhook, webhooks.resume_webhook TO webhooks_admin;
GRANT EXECUTE ON FUNCTION webhooks.get_webhook_status TO webhooks_admin, webhooks_viewer;
GRANT EXECUTE ON FUNCTION webhooks.runner_backlog TO webhooks_admin, webhooks_viewer, webhooks_runner;

COMMENT ON VIEW webhooks.webhook_status IS
    'Health per webhook: state (healthy, failing, paused, disabled), pending (including changes captured but not yet fanned out), oldest_pending_at, consecutive_failures, last success/failure/error, and over the last hour delivered, failed_attempts, p50/p95 latency.';

COMMENT ON FUNCTION webhooks.pause_webhook IS
    'Pause a webhook: its changes keep being captured and queued, nothing is sent until resume_webhook(). Unlike enabled = false, nothing is lost.';

COMMENT ON FUNCTION webhooks.resume_webhook IS
    'Resume a paused webhook (paused by hand, by a 410 Gone or by pause_after): everything queued meanwhile is sent.';

COMMENT ON FUNCTION webhooks.get_webhook_status IS
    'The rows of the webhook_status view (which reads them from here): health per webhook.';

COMMENT ON FUNCTION webhooks.runner_backlog IS
    'For the runner''s /metrics: per webhook its state, pending deliveries, oldest pending time and circuit (no URL, no secret).';
