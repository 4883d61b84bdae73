-- pgwebhooks: endpoints. Each webhook's endpoints row holds its circuit breaker, rate-limit
-- tokens and health counters; the functions here decide how much of a webhook claim() and
-- next_due_in() may take now.

-- Each webhook's endpoints row (circuit breaker, rate-limit tokens) is created with it, in the
-- same transaction: claim() must never wait for another transaction's insert of that row.
CREATE OR REPLACE FUNCTION webhooks._add_endpoint()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO webhooks.endpoints (webhook_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER webhooks_add_endpoint AFTER INSERT ON webhooks.webhooks
    FOR EACH ROW EXECUTE FUNCTION webhooks._add_endpoint();

-- The circuit breaker's settings: this many failures in a row open an endpoint's circuit, for a
-- cooldown that doubles with each opening in a row (1 s, 2 s, 4 s ... at most 30 s) so that a
-- dead endpoint sees a probe every half minute, not one request per delivery.
CREATE OR REPLACE FUNCTION webhooks._circuit_failure_threshold()
RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$ SELECT 5 $$;

-- The same number for the runner, which reads it rather than keeping a copy (internal functions
-- stay out of every role's reach).
CREATE OR REPLACE FUNCTION webhooks.circuit_failure_threshold()
RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT webhooks._circuit_failure_threshold() $$;
GRANT EXECUTE ON FUNCTION webhooks.circuit_failure_threshold TO webhooks_admin, webhooks_runner, webhooks_viewer;
COMMENT ON FUNCTION webhooks.circuit_failure_threshold IS
    'Failures in a row (no response, timeout, 5xx) that open an endpoint''s circuit; the runner reads it at start';

CREATE OR REPLACE FUNCTION webhooks._circuit_cooldown(times_opened integer)
RETURNS interval
LANGUAGE sql IMMUTABLE
AS $$ SELECT make_interval(secs => least(power(2, least(greatest(times_opened, 0), 10)), 30)) $$;

-- A rate limit's tokens now: refilled at `rate` a second since `tokens_at`, at most one second's worth.
CREATE OR REPLACE FUNCTION webhooks._tokens(rate integer, tokens double precision, tokens_at timestamptz)
RETURNS double precision
LANGUAGE sql STABLE
AS $$ SELECT least(rate::float8, tokens + rate * extract(epoch FROM now() - tokens_at)::float8) $$;

-- How many more deliveries of a webhook may be leased now. A webhook's `max_concurrency` is
-- counted against the leases in flight across all runners (only meaningful under its endpoints
-- row lock); `runner_limit` (what the runner may start of one webhook, which it counts against
-- its own sends) caps one claim, with a max_concurrency or without: a max_concurrency of 10000
-- must not fill a runner with one webhook. One probe at a time while its circuit is
-- not closed; whole tokens of its rate limit.
CREATE OR REPLACE FUNCTION webhooks._room(
    webhook_id uuid, max_concurrency integer, runner_limit integer, rate integer, circuit text,
    tokens double precision, tokens_at timestamptz)
RETURNS integer
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT greatest(0, least(
        CASE WHEN max_concurrency IS NULL THEN coalesce(runner_limit, 1000000) ELSE max_concurrency - f.n END,
        coalesce(runner_limit, 1000000),
        CASE WHEN circuit = 'closed' THEN 1000000 ELSE 1 - f.n END,
        CASE WHEN rate IS NULL THEN 1000000 ELSE floor(webhooks._tokens(rate, tokens, tokens_at))::integer END))
    FROM (SELECT CASE WHEN max_concurrency IS NULL AND circuit = 'closed' THEN 0  -- no need to count
                      ELSE (SELECT count(*)::integer FROM webhooks.deliveries d
                            WHERE d.webhook_id = _room.webhook_id AND d.status = 'leased'
                              AND d.next_attempt_at > now()) END AS n) f
$$;

-- The webhooks with due work, with when their oldest due delivery became due and whether their
-- limits or circuit need exact accounting across runners. A paused webhook keeps its queue
-- (fan-out still creates its deliveries); nothing is sent. One at rest is not looked at; one
-- without unfinished work above its open floor (`floors`, see _open_floors) is not scanned in
-- time order.
DROP FUNCTION IF EXISTS webhooks._due_webhooks(uuid[]);
CREATE OR REPLACE FUNCTION webhooks._due_webhooks(skip_webhooks uuid[], floors jsonb)
RETURNS TABLE (id uuid, oldest timestamptz, exact boolean)
LANGUAGE sql STABLE
AS $$
    SELECT w.id, n.oldest,
           w.max_concurrency IS NOT NULL OR w.rate_limit_per_second IS NOT NULL OR e.circuit <> 'closed'
    -- From the webhooks not at rest (044_resting_webhooks.sql), each joined to its settings: the
    -- lateral joins keep that order whatever the statistics say of how many are at rest (taken
    -- while they were all open, they made the planner walk every webhook instead).
    FROM webhooks._unrested() u
    CROSS JOIN LATERAL (SELECT e.* FROM webhooks.endpoints e WHERE e.webhook_id = u.webhook_id OFFSET 0) e
    CROSS JOIN LATERAL (SELECT w.* FROM webhooks.webhooks w WHERE w.id = e.webhook_id OFFSET 0) w
    CROSS JOIN LATERAL (
        SELECT d.next_attempt_at AS oldest FROM webhooks.deliveries d
        WHERE d.webhook_id = w.id AND d.status IN ('pending', 'leased') AND d.next_attempt_at <= now()
          -- Asked first (it refers to no row of `d`: a one-time filter of this scan), in
          -- `deliveries_webhook_open`: the first unfinished delivery at or above the webhook's
          -- floor, or another webhook's (the row comparison keeps the probe on that index, see
          -- 0018_open_floor.sql). Written out: a function would not be inlined.
          AND (SELECT o.id FROM webhooks.deliveries o
               WHERE (o.webhook_id, o.id + 0) >= (w.id, coalesce((floors ->> w.id::text)::bigint, 0))
                 AND o.webhook_id = w.id AND o.status IN ('pending', 'leased')
                 AND o.id + 0 >= coalesce((floors ->> w.id::text)::bigint, 0)
               ORDER BY o.webhook_id, o.id + 0 LIMIT 1) IS NOT NULL
        ORDER BY d.next_attempt_at LIMIT 1
    ) n
    WHERE w.enabled AND NOT w.paused AND w.id <> ALL (coalesce(skip_webhooks, '{}'))
      AND (e.circuit <> 'open' OR e.retry_at <= now())
$$;

-- The webhooks one claim serves, in order (`ord`), each with its settings and its room now (see
-- _room); none for a circuit opened since claim() chose them.
CREATE OR REPLACE FUNCTION webhooks._serving_room(serving uuid[], per_webhook_limit integer)
RETURNS TABLE (id uuid, max_retries integer, timeout_seconds integer, rate integer, ord bigint,
               max_concurrency integer, room integer)
LANGUAGE sql STABLE
AS $$
    SELECT w.id, w.max_retries, w.timeout_seconds, w.rate_limit_per_second, s.ord, w.max_concurrency,
           CASE WHEN e.circuit = 'open' AND e.retry_at > now() THEN 0
                ELSE webhooks._room(w.id, w.max_concurrency, per_webhook_limit,
                                    w.rate_limit_per_second, e.circuit, e.tokens, e.tokens_at) END
    FROM unnest(serving) WITH ORDINALITY AS s(id, ord)
    JOIN webhooks.webhooks w ON w.id = s.id
    JOIN webhooks.endpoints e ON e.webhook_id = s.id
$$;
