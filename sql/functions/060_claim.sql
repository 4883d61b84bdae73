-- pgwebhooks: what the runner calls to get work. claim() hands out leased, fully signed
-- requests; release() hands back unsent work; next_due_in() (061) says when to ask again. complete()
-- (065) applies the delivery policy to the results. The runner holds no secret and no policy.
-- Plans here are pinned rather than left to statistics. A queue's tables churn faster than
-- autovacuum analyzes them, and a plan made while `deliveries` looked empty (sequential scans,
-- bitmap scans of a webhook's whole history) grew with every delivery ever kept; with
-- enable_seqscan and enable_bitmapscan off, claim() walks each webhook's `deliveries_webhook_due`
-- in order and stops at its limit, whatever the statistics say. jit is off: row estimates for
-- generate_series and unnest make small plans look expensive enough to JIT-compile (~400 ms a
-- call for ~10 ms of work).

-- claim() returns each webhook's max_concurrency since 0.2 (a new result column).
DROP FUNCTION IF EXISTS webhooks.claim(integer, integer, integer, uuid[]);

-- A delivery that cannot be rendered or signed (an event stored before publish()'s limits,
-- a row put into the outbox by hand) must not fail every claim: the failing statement is
-- rolled back, every due delivery of the webhooks served is tried alone (here), those
-- that fail are failed with their reason, and the claim runs again. The rows of a failed
-- attempt are never returned: they are sorted (ORDER BY l.id) after all are rendered, so an
-- error comes before the first row.
--
-- After a claim failed: try each due delivery of the webhooks it served (the oldest `batch_size`
-- of each, the ones no other claim holds) alone, and fail those that cannot be rendered or
-- signed, with the error in their attempt log (a new attempt number that spends nothing).
-- Returns how many were failed; 0 means the claim's error was something else.
CREATE OR REPLACE FUNCTION webhooks._quarantine(serving uuid[], batch_size integer)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d record;
    failed integer := 0;
    why text;
BEGIN
    FOR d IN
        SELECT x.id, x.webhook_id
        FROM unnest(serving) AS s(id)
        CROSS JOIN LATERAL (
            SELECT q.id, q.webhook_id FROM webhooks.deliveries q
            WHERE q.webhook_id = s.id AND q.status IN ('pending', 'leased') AND q.next_attempt_at <= now()
            ORDER BY q.next_attempt_at
            LIMIT batch_size
            FOR UPDATE SKIP LOCKED
        ) x
        LIMIT 10000
    LOOP
        BEGIN
            PERFORM webhooks._render(d.id);
        EXCEPTION WHEN OTHERS THEN
            why := format('not sent: the event cannot be rendered or signed (%s: %s)', SQLSTATE, left(SQLERRM, 500));
            WITH gone AS (
                UPDATE webhooks.deliveries q
                SET status = 'failed', completed_at = now(), attempts = q.attempts + 1,
                    free_attempts = q.free_attempts + 1
                WHERE q.id = d.id
                RETURNING q.id, q.attempts, q.webhook_id)
            INSERT INTO webhooks.delivery_attempts (delivery_id, attempt, error, webhook_id)
            SELECT g.id, g.attempts, why, g.webhook_id FROM gone g;
            RAISE LOG 'pgwebhooks: delivery % failed: %', d.id, why;
            failed := failed + 1;
        END;
    END LOOP;
    RETURN failed;
END
$$;

-- claim()'s first steps, each a statement of its own before the claim's one: check the
-- arguments and fan out (from `fan_out_floor`, see _open_floors).
DROP FUNCTION IF EXISTS webhooks._prepare_claim(integer, integer, integer);
CREATE OR REPLACE FUNCTION webhooks._prepare_claim(batch_size integer, lease_margin_seconds integer,
                                                   per_webhook_limit integer, fan_out_floor bigint)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webhooks._check_range('batch_size', batch_size, 1, 10000);
    PERFORM webhooks._check_range('lease_margin_seconds', lease_margin_seconds, 1, 3600);
    IF per_webhook_limit IS NOT NULL THEN
        PERFORM webhooks._check_range('per_webhook_limit', per_webhook_limit, 1, 10000);
    END IF;
    -- Fan out ahead of this batch, so that other runners find committed work too while this one
    -- holds a large capture.
    -- A restored copy gets new event ids (025_event_ids.sql); while another transaction records
    -- them, nothing is fanned out (already fanned-out deliveries are the original's).
    -- Whether a capture waits is asked before calling _fan_out: its statement is planned at
    -- every call, which cost each claim 0.7 ms when there was nothing to fan out.
    IF NOT webhooks._ensure_identity() THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM webhooks.captures c WHERE c.fanned_out < c.row_count AND c.id >= fan_out_floor) THEN
        PERFORM webhooks._fan_out(batch_size * 4, fan_out_floor);
    END IF;
    -- Published events and one-row changes: each webhook's next ones from its cursors
    -- (041_cursors.sql), once the restore check has rebased them in a copy.
    PERFORM webhooks._rest_routes();
    IF EXISTS (SELECT 1 FROM webhooks._open_routes()) THEN
        PERFORM webhooks._fill_from_cursors(batch_size * 4);
    END IF;
END
$$;

-- Webhooks whose limits or circuit need exact accounting across runners are served under
-- their endpoints row lock, taken in a statement of its own (this one, before the claim's) so
-- that the claim's snapshot sees every lease other runners made for them; one another claim
-- holds is skipped. Others are served lock-free, by any number of claims at once. Returns the
-- webhooks of `exact` locked now.
CREATE OR REPLACE FUNCTION webhooks._lock_exact(exact uuid[])
RETURNS uuid[]
LANGUAGE sql
AS $$
    SELECT coalesce(array_agg(l.webhook_id), '{}')
    FROM (SELECT e.webhook_id FROM webhooks.endpoints e WHERE e.webhook_id = ANY (exact)
          FOR NO KEY UPDATE SKIP LOCKED) l
$$;

-- The read-only steps of claim() are SQL functions the planner inlines into claim's own
-- statements (LANGUAGE sql, not STRICT, not SECURITY DEFINER, no SET clause: claim's settings
-- and search_path apply), so claim() keeps one snapshot and one data-modifying statement:
-- _due_webhooks and _serving_room (045_endpoints.sql), _unsendable (below), _request
-- (050_payloads.sql).

-- Why a claimed delivery can never be sent, or NULL: its event was purged meanwhile (a replay
-- racing purge), or it has no attempt left (its last lease expired, or max_retries was lowered).
-- claim() fails it then rather than lease it again and again: no delivery is attempted more
-- than max_retries + 1 times.
CREATE OR REPLACE FUNCTION webhooks._unsendable(captured boolean, status text, attempts integer,
                                                free_attempts integer, max_retries integer)
RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT CASE
        WHEN NOT captured
            THEN 'not sent: the event was purged before it could be delivered'
        WHEN attempts - free_attempts > max_retries AND status = 'leased'
            THEN 'lease expired before a result was reported (runner stopped or stalled); no attempts left'
        WHEN attempts - free_attempts > max_retries
            THEN format('not sent: no attempts left (%s made, max_retries %s)', attempts, max_retries)
    END
$$;

-- Lease up to `batch_size` due deliveries. Each comes back with its attempt number (the fencing
-- token complete() checks), the exact body and every header already signed, and the webhook's
-- max_concurrency (NULL: the runner's own --per-webhook-concurrency applies).
--
-- Work is chosen per webhook, never by walking all due work in time order: one index probe per
-- enabled webhook not at rest (044_resting_webhooks.sql) finds those with due work (the one whose
-- work has waited longest first); each gets its room (see _room: its max_concurrency minus what
-- is in flight across all runners, one probe while its circuit is not closed, its rate limit's
-- tokens), at most its fair share of the batch, taken from its oldest due deliveries in
-- `deliveries_webhook_due`. A claim therefore costs O(batch + webhooks with unfinished work),
-- whatever one webhook has queued and however many have none; a webhook whose circuit is open,
-- or a paused one, is not looked at beyond that probe.
--
-- `per_webhook_limit` caps one call's deliveries of a webhook without `max_concurrency` (the
-- runner passes twice its --per-webhook-concurrency, which it counts against its own sends);
-- `skip_webhooks` leaves out webhooks the caller has no room for. A lease lasts twice the
-- webhook's timeout (a claimed delivery may wait for one request of its webhook to finish
-- first) plus `lease_margin_seconds`; when it runs out, the delivery is due again.
CREATE OR REPLACE FUNCTION webhooks.claim(
    batch_size integer DEFAULT 100,
    lease_margin_seconds integer DEFAULT 30,
    per_webhook_limit integer DEFAULT NULL,
    skip_webhooks uuid[] DEFAULT '{}')
RETURNS TABLE (delivery_id bigint, attempt integer, webhook_id uuid, url text, body text, headers jsonb,
               timeout_seconds integer, max_concurrency integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
DECLARE
    serving uuid[];
    exact uuid[];
    locked uuid[] := '{}';
    floors jsonb;
BEGIN
    floors := webhooks._open_floors();
    PERFORM webhooks._prepare_claim(batch_size, lease_margin_seconds, per_webhook_limit,
                                    coalesce((floors ->> 'captures')::bigint, 0));
    -- Webhooks without unfinished work come to rest, and are not looked at (044_resting_webhooks.sql).
    PERFORM webhooks._rest_webhooks(floors);
    -- The webhooks with due work, the one whose work has waited longest first.
    SELECT array_agg(x.id ORDER BY x.oldest, x.id), array_agg(x.id) FILTER (WHERE x.exact)
    INTO serving, exact
    FROM webhooks._due_webhooks(skip_webhooks, floors) x;
    IF serving IS NULL THEN RETURN; END IF;
    IF exact IS NOT NULL THEN  -- served under their endpoints row lock (see _lock_exact)
        locked := webhooks._lock_exact(exact);
        serving := ARRAY(SELECT h FROM unnest(serving) WITH ORDINALITY AS u(h, o)
                         WHERE h <> ALL (exact) OR h = ANY (locked) ORDER BY o);
    END IF;
    -- A delivery that cannot be rendered or signed must not fail every claim (see _quarantine).
    -- One subtransaction per claim; the ORDER BY renders every row before the first is returned.
    FOR round IN 1..3 LOOP
        BEGIN
            RETURN QUERY
            WITH hook AS (SELECT * FROM webhooks._serving_room(serving, per_webhook_limit)),
            -- Each webhook's fair share of the batch first; what some leave unused, the next claim fills.
            roomy AS (
                SELECT h.*, ceil(batch_size::numeric / count(*) OVER ())::integer AS share
                FROM hook h WHERE h.room > 0
            ),
            candidate AS (
                SELECT d.id, d.webhook_id, d.status, d.attempts, d.free_attempts, d.capture_id, h.max_retries
                FROM (SELECT h.* FROM roomy h ORDER BY h.ord) h
                CROSS JOIN LATERAL (
                    SELECT d.id, d.webhook_id, d.status, d.attempts, d.free_attempts, d.capture_id
                    FROM webhooks.deliveries d
                    WHERE d.webhook_id = h.id AND d.status IN ('pending', 'leased') AND d.next_attempt_at <= now()
                    ORDER BY d.next_attempt_at
                    LIMIT least(h.room, h.share)
                    FOR UPDATE OF d SKIP LOCKED
                ) d
                LIMIT batch_size
            ),
            -- What can never be sent (see _unsendable) is failed here. OFFSET 0 keeps the capture's
            -- EXISTS a probe per candidate: as a hashed subplan it read every capture kept, each claim.
            judged AS (
                SELECT c.*, webhooks._unsendable(EXISTS (SELECT 1 FROM webhooks.captures x WHERE x.id = c.capture_id
                                                         OFFSET 0),
                                                 c.status, c.attempts, c.free_attempts, c.max_retries) AS fatal
                FROM candidate c
            ),
            -- An expired lease's verdict is logged under its own attempt number; any other verdict
            -- takes a new one, which spends nothing (free_attempts): numbers are never logged twice.
            doomed AS (
                UPDATE webhooks.deliveries d
                SET status = 'failed', completed_at = now(),
                    attempts = CASE WHEN j.status = 'leased' THEN d.attempts ELSE d.attempts + 1 END,
                    free_attempts = CASE WHEN j.status = 'leased' THEN d.free_attempts ELSE d.free_attempts + 1 END
                FROM judged j
                WHERE d.id = j.id AND j.fatal IS NOT NULL
                RETURNING d.id, d.attempts, d.webhook_id, j.fatal
            ),
            doomed_logged AS (
                INSERT INTO webhooks.delivery_attempts (delivery_id, attempt, error, webhook_id)
                SELECT x.id, x.attempts, x.fatal, x.webhook_id FROM doomed x
            ),
            leased AS (
                UPDATE webhooks.deliveries d
                SET status = 'leased',
                    attempts = d.attempts + 1,
                    next_attempt_at = now() + make_interval(secs => 2 * h.timeout_seconds + lease_margin_seconds)
                FROM judged j, hook h
                WHERE d.id = j.id AND j.fatal IS NULL AND h.id = d.webhook_id
                RETURNING d.id, d.attempts, d.capture_id, d.n, d.webhook_id, j.status AS previous_status
            ),
            -- A lease that ran out means a runner died or stalled mid-attempt: say so in the log.
            expired AS (
                INSERT INTO webhooks.delivery_attempts (delivery_id, attempt, error, webhook_id)
                SELECT l.id, l.attempts - 1, 'lease expired before a result was reported (runner stopped or stalled)',
                       l.webhook_id
                FROM leased l WHERE l.previous_status = 'leased'
            ),
            -- Spend the rate limit's tokens; an open circuit whose cooldown is over sends its probe now.
            served AS (
                UPDATE webhooks.endpoints e
                SET tokens = CASE WHEN h.rate IS NULL THEN 0 ELSE webhooks._tokens(h.rate, e.tokens, e.tokens_at) - t.taken END,
                    tokens_at = now(),
                    circuit = CASE WHEN e.circuit = 'open' THEN 'half_open' ELSE e.circuit END,
                    circuit_changed_at = CASE WHEN e.circuit = 'open' THEN now() ELSE e.circuit_changed_at END,
                    circuit_reason = CASE WHEN e.circuit <> 'closed'
                                          THEN format('probing with delivery %s, attempt %s', t.probe, t.probe_attempt)
                                          ELSE e.circuit_reason END,
                    probe_delivery_id = CASE WHEN e.circuit <> 'closed' THEN t.probe END,
                    probe_attempt = CASE WHEN e.circuit <> 'closed' THEN t.probe_attempt END
                FROM (SELECT l.webhook_id, count(*) AS taken, max(l.id) AS probe, max(l.attempts) AS probe_attempt
                      FROM leased l GROUP BY l.webhook_id) t
                JOIN hook h ON h.id = t.webhook_id
                WHERE e.webhook_id = t.webhook_id AND e.webhook_id = ANY (locked)
            )
            SELECT l.id, l.attempts, l.webhook_id, r.url, r.body, r.headers, r.timeout_seconds, h.max_concurrency
            FROM leased l
            JOIN hook h ON h.id = l.webhook_id
            CROSS JOIN LATERAL webhooks._request(l.capture_id, l.n, l.webhook_id, l.attempts) r
            ORDER BY l.id;
            RETURN;
        EXCEPTION WHEN OTHERS THEN
            IF round = 3 OR webhooks._quarantine(serving, batch_size) = 0 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
END
$$;

-- Hand leased deliveries back unsent (a runner shutting down): they are due again at once and
-- the attempt does not count (free_attempts). Its number is not reused: a late report for it
-- is refused. Nothing is logged for it, as nothing was sent.
-- `leases` is a JSON array of {"delivery_id": 1, "attempt": 1}.
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
    SET status = 'pending', free_attempts = d.free_attempts + 1, next_attempt_at = now()
    FROM jsonb_to_recordset(leases) AS l(delivery_id bigint, attempt integer)
    WHERE d.id = l.delivery_id AND d.status = 'leased' AND d.attempts = l.attempt;
    GET DIAGNOSTICS released = ROW_COUNT;
    RETURN released;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.release(leases text)
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT webhooks.release(webhooks._parse_json_input('leases', leases))
$$;

GRANT EXECUTE ON FUNCTION webhooks.claim, webhooks.release(jsonb), webhooks.release(text)
TO webhooks_runner;

COMMENT ON FUNCTION webhooks.claim IS
    'For the runner: lease up to batch_size due deliveries, each with its attempt number, body and signed headers.';

COMMENT ON FUNCTION webhooks.release(jsonb) IS
    'For the runner: hand leased deliveries back unsent ([{"delivery_id", "attempt"}]); the attempt does not count.';

COMMENT ON FUNCTION webhooks.release(text) IS
    'release() given JSON text: parsed first, so a NUL (\u0000) is WH034 and text that is no JSON WH013.';

COMMENT ON TABLE webhooks.deliveries IS
    'Outbox, step 2: one row per event per webhook; status pending -> leased -> delivered | failed (see 0001_tables.sql).';
