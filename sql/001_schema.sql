-- pgwebhooks 001: schema, roles and tables.
--
-- Delivery state machine (deliveries.status):
--
--   pending ──claim()──► leased ──complete(2xx)──────────────► delivered
--      ▲                   │  ──complete(410 / retries spent)──► failed
--      └──complete(retry)──┤
--      └──release()────────┘   (a lease that expires is claimed again as it stands)
--
-- `next_attempt_at` is the one clock the claim path reads: for a pending delivery it is when
-- the next attempt is due, for a leased one it is when the lease runs out. Claiming therefore
-- needs a single index range scan, and an expired lease needs no sweeper.
--
-- The outbox tables (events, deliveries, delivery_attempts) carry no foreign keys on purpose:
-- a row-level RI check per captured row would dominate the cost of bulk writes. The management
-- functions keep them consistent (delete_webhook removes a webhook's deliveries).

CREATE EXTENSION IF NOT EXISTS plpython3u;

CREATE SCHEMA IF NOT EXISTS webhooks;
COMMENT ON SCHEMA webhooks IS 'pgwebhooks: row changes as signed HTTP webhooks';

-- Roles are cluster-wide: another database may have created them already, possibly at the
-- same moment.
DO $$
BEGIN
    CREATE ROLE webhooks_admin NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
DO $$
BEGIN
    CREATE ROLE webhooks_runner NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

CREATE TABLE webhooks.webhooks (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                  text NOT NULL,
    url                   text NOT NULL,
    description           text,
    enabled               boolean NOT NULL DEFAULT true,
    disabled_reason       text,
    max_retries           integer NOT NULL DEFAULT 3,
    timeout_seconds       integer NOT NULL DEFAULT 30,
    retry_backoff_seconds integer NOT NULL DEFAULT 5,
    headers               jsonb NOT NULL DEFAULT '{}',
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhooks_name_unique UNIQUE (name),
    CONSTRAINT webhooks_name_not_blank CHECK (btrim(name) <> '' AND length(name) <= 200),
    CONSTRAINT webhooks_url_http CHECK (url ~* '^https?://'),
    CONSTRAINT webhooks_max_retries_range CHECK (max_retries BETWEEN 0 AND 50),
    CONSTRAINT webhooks_timeout_seconds_range CHECK (timeout_seconds BETWEEN 1 AND 300),
    CONSTRAINT webhooks_retry_backoff_seconds_range CHECK (retry_backoff_seconds BETWEEN 1 AND 86400),
    CONSTRAINT webhooks_headers_object CHECK (jsonb_typeof(headers) = 'object'),
    CONSTRAINT webhooks_disabled_reason_only_when_disabled CHECK (enabled IS FALSE OR disabled_reason IS NULL)
);

-- Which tables and operations a webhook receives. `relid` follows the table through renames.
CREATE TABLE webhooks.subscriptions (
    webhook_id uuid NOT NULL REFERENCES webhooks.webhooks (id) ON DELETE CASCADE,
    relid      oid NOT NULL,
    operations text[] NOT NULL,
    PRIMARY KEY (webhook_id, relid),
    CONSTRAINT subscriptions_operations_valid
        CHECK (cardinality(operations) > 0 AND operations <@ ARRAY['INSERT', 'UPDATE', 'DELETE'])
);
CREATE INDEX subscriptions_relid ON webhooks.subscriptions (relid);

-- Signing secrets. Several may be valid at once while a secret is rotated: the old one keeps
-- signing until `expires_at`, the current one has none.
CREATE TABLE webhooks.secrets (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id uuid NOT NULL REFERENCES webhooks.webhooks (id) ON DELETE CASCADE,
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    CONSTRAINT secrets_secret_not_blank CHECK (secret <> '')
);
CREATE INDEX secrets_webhook_id ON webhooks.secrets (webhook_id);

-- One row per captured change, however many webhooks receive it. A DELETE keeps the deleted row
-- in `record` only; the payload repeats it as `old_record`.
CREATE TABLE webhooks.events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uid         uuid NOT NULL DEFAULT gen_random_uuid(),
    operation   text NOT NULL,
    relid       oid NOT NULL,
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    record      jsonb,
    old_record  jsonb,
    occurred_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    CONSTRAINT events_operation_valid CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE', 'TEST'))
);

CREATE TABLE webhooks.deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        bigint NOT NULL,
    webhook_id      uuid NOT NULL,
    status          text NOT NULL DEFAULT 'pending',
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    CONSTRAINT deliveries_status_valid
        CHECK (status IN ('pending', 'leased', 'delivered', 'failed')),
    CONSTRAINT deliveries_attempts_nonnegative CHECK (attempts >= 0),
    CONSTRAINT deliveries_leased_has_attempt CHECK (status <> 'leased' OR attempts > 0),
    CONSTRAINT deliveries_completed_iff_final
        CHECK ((status IN ('delivered', 'failed')) = (completed_at IS NOT NULL))
);
-- The claim path: due work in time order.
CREATE INDEX deliveries_due ON webhooks.deliveries (next_attempt_at)
    WHERE status IN ('pending', 'leased');
-- get_deliveries(): a webhook's deliveries, newest first.
CREATE INDEX deliveries_webhook_id ON webhooks.deliveries (webhook_id, id);

CREATE TABLE webhooks.delivery_attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id      bigint NOT NULL,
    attempt          integer NOT NULL,
    status_code      integer,
    response_excerpt text,
    error            text,
    latency_ms       integer,
    attempted_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT delivery_attempts_attempt_positive CHECK (attempt > 0),
    CONSTRAINT delivery_attempts_status_code_range CHECK (status_code BETWEEN 100 AND 599),
    CONSTRAINT delivery_attempts_outcome_known CHECK (status_code IS NOT NULL OR error IS NOT NULL),
    CONSTRAINT delivery_attempts_latency_nonnegative CHECK (latency_ms >= 0)
);
CREATE INDEX delivery_attempts_delivery_id ON webhooks.delivery_attempts (delivery_id, attempt);
