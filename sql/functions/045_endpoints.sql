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
