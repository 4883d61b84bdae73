-- pgwebhooks migration 0001: schema, roles and tables (release 0.1.0). Frozen: never edit a
-- released migration; add the next numbered file instead.
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
-- The outbox tables (captures, events, deliveries, delivery_attempts) carry no foreign keys on purpose:
-- a row-level RI check per captured row would dominate the cost of bulk writes. The management
-- functions keep them consistent (delete_webhook removes a webhook's deliveries).

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
-- Owns the capture trigger functions, which run inside other roles' writes. It may only add to
-- the outbox: whatever code a watched table makes them run (a cast to json of the table owner's
-- own type, say) runs with this role's rights, not the installer's.
DO $$
BEGIN
    CREATE ROLE webhooks_capture NOLOGIN;
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

-- The outbox is written in two steps so that the writer's transaction pays as little as possible.
--
-- 1. Capture (in the writer's transaction): one `captures` row per statement (table, operation,
--    the webhooks subscribed when it ran) and, for statements that change several rows, one
--    `events` row per changed row holding only the row image. Nothing per webhook yet, and no
--    sequence call per row.
-- 2. Fan-out (in claim(), off the writer's path): each capture becomes one `deliveries` row per
--    changed row per webhook that is enabled at that moment.
CREATE TABLE webhooks._installation (
    singleton boolean PRIMARY KEY DEFAULT true,
    -- Makes event ids unique across installations (see _event_uid): a receiver deduplicating on
    -- webhook-id must never confuse a reinstalled database's events with older ones.
    salt      uuid NOT NULL DEFAULT gen_random_uuid(),
    CONSTRAINT installation_singleton CHECK (singleton)
);
INSERT INTO webhooks._installation DEFAULT VALUES;

CREATE TABLE webhooks.captures (
    id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    operation   text NOT NULL,
    relid       oid NOT NULL,
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    webhook_ids uuid[] NOT NULL,
    row_count   integer NOT NULL,
    fanned_out  integer NOT NULL DEFAULT 0,
    occurred_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    -- The change of a single-row statement is kept here rather than in `events`: most OLTP writes
    -- change one row, and one INSERT fewer per transaction is a third of the capture's cost.
    record      json,
    old_record  json,
    CONSTRAINT captures_operation_valid CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE', 'TEST')),
    CONSTRAINT captures_fanned_out_range CHECK (fanned_out BETWEEN 0 AND row_count),
    CONSTRAINT captures_inline_only_single_row CHECK (row_count = 1 OR (record IS NULL AND old_record IS NULL))
);
-- Captures still to fan out: a small, hot index.
CREATE INDEX captures_fan_out_pending ON webhooks.captures (id) WHERE fanned_out < row_count;

-- One row per changed row, however many webhooks receive it. A DELETE keeps the deleted row in
-- `record` only; the payload repeats it as `old_record`. `json`, not `jsonb`: it is cheaper to
-- build and keeps the table's column order in the payload.
CREATE TABLE webhooks.events (
    capture_id bigint NOT NULL,
    n          integer NOT NULL,
    record     json,
    old_record json,
    PRIMARY KEY (capture_id, n)
);

CREATE TABLE webhooks.deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    capture_id      bigint NOT NULL,
    n               integer NOT NULL,
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
