-- pgwebhooks migration 0007: endpoint health, pause without loss, secret headers.
--
-- Pausing is not disabling: a paused webhook keeps capturing and keeps its deliveries being
-- created (fan-out still serves it), only claim() leaves them alone until resume_webhook().
-- `enabled = false` keeps its meaning: stop capturing.
ALTER TABLE webhooks.webhooks ADD COLUMN IF NOT EXISTS paused boolean NOT NULL DEFAULT false;
ALTER TABLE webhooks.webhooks ADD COLUMN IF NOT EXISTS paused_reason text;
ALTER TABLE webhooks.webhooks ADD COLUMN IF NOT EXISTS paused_at timestamptz;
-- Auto-pause after this long with every attempt failing (and at least a few attempts); NULL: never.
ALTER TABLE webhooks.webhooks ADD COLUMN IF NOT EXISTS pause_after interval DEFAULT interval '3 days';
ALTER TABLE webhooks.webhooks DROP CONSTRAINT IF EXISTS webhooks_pause_after_range;
ALTER TABLE webhooks.webhooks ADD CONSTRAINT webhooks_pause_after_range
    CHECK (pause_after BETWEEN interval '1 minute' AND interval '365 days');
ALTER TABLE webhooks.webhooks DROP CONSTRAINT IF EXISTS webhooks_paused_reason_only_when_paused;
ALTER TABLE webhooks.webhooks ADD CONSTRAINT webhooks_paused_reason_only_when_paused
    CHECK (paused OR (paused_reason IS NULL AND paused_at IS NULL));

-- Health counters, kept by complete() so that webhook_status never scans the delivery log.
-- `failures_in_a_row` counts every attempt that was not a 2xx (the circuit's consecutive_failures
-- counts only endpoint failures, 5xx and no response); `failing_since` is the first of them.
ALTER TABLE webhooks.endpoints ADD COLUMN IF NOT EXISTS failures_in_a_row integer NOT NULL DEFAULT 0;
ALTER TABLE webhooks.endpoints ADD COLUMN IF NOT EXISTS failing_since timestamptz;
ALTER TABLE webhooks.endpoints ADD COLUMN IF NOT EXISTS last_success_at timestamptz;
ALTER TABLE webhooks.endpoints ADD COLUMN IF NOT EXISTS last_failure_at timestamptz;
ALTER TABLE webhooks.endpoints ADD COLUMN IF NOT EXISTS last_error text;

-- The last hour's figures come from the attempts log through this index, never from a scan of
-- all deliveries. Attempts logged before this migration have no webhook_id (they are older
-- than an hour soon enough).
ALTER TABLE webhooks.delivery_attempts ADD COLUMN IF NOT EXISTS webhook_id uuid;
CREATE INDEX IF NOT EXISTS delivery_attempts_webhook_recent
    ON webhooks.delivery_attempts (webhook_id, attempted_at);

-- Header values sent with every request but never shown: apart from `webhooks.webhooks` (which
-- admins may read), like the signing secrets.
CREATE TABLE IF NOT EXISTS webhooks.secret_headers (
    webhook_id uuid NOT NULL REFERENCES webhooks.webhooks (id) ON DELETE CASCADE,
    headers    jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (webhook_id),
    CONSTRAINT secret_headers_object CHECK (jsonb_typeof(headers) = 'object')
);
COMMENT ON TABLE webhooks.secret_headers IS
    'Header values sent with a webhook''s requests and never shown by list/get (readable by no admin)';

-- Capture filters, per subscription (see _parse_events and _capture_filtered):
--   columns          an UPDATE is captured for this webhook only if one of these changed;
--   exclude_columns  removed from record and old_record before sending;
--   where_clause     a row predicate; `route_column` / `route_value` when it is a plain
--                    equality on one column, routed by lookup (capture_routes) rather than evaluated.
ALTER TABLE webhooks.subscriptions ADD COLUMN IF NOT EXISTS columns text[];
ALTER TABLE webhooks.subscriptions ADD COLUMN IF NOT EXISTS exclude_columns text[];
ALTER TABLE webhooks.subscriptions ADD COLUMN IF NOT EXISTS where_clause text;
ALTER TABLE webhooks.subscriptions ADD COLUMN IF NOT EXISTS route_column name;
ALTER TABLE webhooks.subscriptions ADD COLUMN IF NOT EXISTS route_value text;

-- Equality predicates by value: one index probe per changed row finds every webhook whose
-- `where` is "column = value", however many there are (a SaaS with a webhook per tenant).
CREATE TABLE IF NOT EXISTS webhooks.capture_routes (
    relid       oid NOT NULL,
    operation   text NOT NULL,
    column_name name NOT NULL,
    value       text NOT NULL,
    webhook_id  uuid NOT NULL REFERENCES webhooks.webhooks (id) ON DELETE CASCADE,
    PRIMARY KEY (relid, operation, column_name, value, webhook_id)
);
COMMENT ON TABLE webhooks.capture_routes IS
    'Webhooks whose where filter is an equality on one column, by value: read by the capture triggers';

-- A multi-row capture whose rows go to different webhooks keeps each row's webhooks in its
-- events row; `routed` tells fan-out to read them.
ALTER TABLE webhooks.events ADD COLUMN IF NOT EXISTS webhook_ids uuid[];
ALTER TABLE webhooks.captures ADD COLUMN IF NOT EXISTS routed boolean NOT NULL DEFAULT false;
