-- pgwebhooks migration 0003: isolation between webhooks. Work is chosen per webhook, so one
-- webhook's backlog (a dead endpoint, a paused webhook) costs the others nothing; each endpoint
-- has a circuit breaker and optional limits of its own, honoured across any number of runners.

-- Per-webhook limits. NULL: the runner's --per-webhook-concurrency, and no rate limit.
ALTER TABLE webhooks.webhooks ADD COLUMN IF NOT EXISTS max_concurrency integer;
ALTER TABLE webhooks.webhooks ADD COLUMN IF NOT EXISTS rate_limit_per_second integer;
ALTER TABLE webhooks.webhooks DROP CONSTRAINT IF EXISTS webhooks_max_concurrency_range;
ALTER TABLE webhooks.webhooks ADD CONSTRAINT webhooks_max_concurrency_range
    CHECK (max_concurrency BETWEEN 1 AND 10000);
ALTER TABLE webhooks.webhooks DROP CONSTRAINT IF EXISTS webhooks_rate_limit_per_second_range;
ALTER TABLE webhooks.webhooks ADD CONSTRAINT webhooks_rate_limit_per_second_range
    CHECK (rate_limit_per_second BETWEEN 1 AND 100000);

-- What claim() and complete() know about each webhook's endpoint, one row per webhook (created
-- with the webhook). Its row lock is what makes limits hold across runners: claim() takes it
-- (SKIP LOCKED) for a webhook with max_concurrency, a rate limit or a circuit not closed before
-- counting what is in flight; complete() takes it when a report changes the circuit.
--
-- Circuit breaker:
--
--   closed ──`failure_threshold` consecutive failures──► open ──retry_at passes, claim()──► half_open
--     ▲                                                   ▲   (one probe delivery leased)      │
--     │                                                   └───────────probe fails──────────────┤
--     └────────────────────────any response that is not a failure (probe or not)──────────────┘
--
-- A failure is no HTTP response (connection error, timeout) or a 5xx. While open, the
-- webhook's deliveries are not claimed, so they spend no attempts; a failed probe does not count
-- against its delivery either (the attempt is logged, with the circuit's state change).
CREATE TABLE IF NOT EXISTS webhooks.endpoints (
    webhook_id           uuid PRIMARY KEY REFERENCES webhooks.webhooks (id) ON DELETE CASCADE,
    circuit              text NOT NULL DEFAULT 'closed',
    consecutive_failures integer NOT NULL DEFAULT 0,
    times_opened         integer NOT NULL DEFAULT 0,  -- in a row, without a success: the backoff's exponent
    retry_at             timestamptz,                 -- open: when a probe may go
    probe_delivery_id    bigint,                      -- half_open: the probe and its attempt number
    probe_attempt        integer,
    circuit_changed_at   timestamptz,
    circuit_reason       text,
    -- Token bucket for rate_limit_per_second: `tokens` as of `tokens_at`, refilled at the rate,
    -- holding at most one second's worth.
    tokens               double precision NOT NULL DEFAULT 0,
    tokens_at            timestamptz NOT NULL DEFAULT '1970-01-01 00:00:00+00',  -- a new bucket starts full
    CONSTRAINT endpoints_circuit_valid CHECK (circuit IN ('closed', 'open', 'half_open')),
    CONSTRAINT endpoints_open_has_retry_at CHECK (circuit <> 'open' OR retry_at IS NOT NULL),
    CONSTRAINT endpoints_failures_nonnegative CHECK (consecutive_failures >= 0 AND times_opened >= 0)
);
COMMENT ON TABLE webhooks.endpoints IS
    'Per-webhook delivery state: circuit breaker (closed, open, half_open) and rate-limit tokens';
INSERT INTO webhooks.endpoints (webhook_id) SELECT id FROM webhooks.webhooks ON CONFLICT DO NOTHING;

-- A webhook's due work in time order: claim() takes each webhook's share from here, so the cost
-- of a claim does not grow with any one webhook's backlog.
CREATE INDEX IF NOT EXISTS deliveries_webhook_due ON webhooks.deliveries (webhook_id, next_attempt_at)
    WHERE status IN ('pending', 'leased');
-- What is in flight per webhook (leases not yet expired), for its concurrency limit: kept apart
-- from the due index, where a dead endpoint's scheduled retries would have to be stepped over.
CREATE INDEX IF NOT EXISTS deliveries_webhook_leased ON webhooks.deliveries (webhook_id, next_attempt_at)
    WHERE status = 'leased';
-- The old claim path, all due work in time order, goes: nothing walks it any more, and the
-- planner would pick it for "one webhook's due work in time order" (stepping over every other
-- webhook's earlier due work, a dead endpoint's whole backlog) when statistics suggest it.
DROP INDEX IF EXISTS webhooks.deliveries_due;
