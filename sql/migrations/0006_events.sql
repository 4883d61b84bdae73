-- pgwebhooks migration 0006: application events and receiver compatibility (issue 10).
--
-- Application events (webhooks.publish) travel through the same outbox as row changes: one
-- `captures` row each, operation 'EVENT', with the event's type and data. Which webhooks receive
-- it is decided when it is published, from `event_subscriptions` (exact type, `order.*`, `*`).

-- May call webhooks.publish() and nothing else.
DO $$
BEGIN
    CREATE ROLE webhooks_publisher NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

-- The catalogue of event types, shared by published events and table subscriptions that name
-- the type their changes are sent as.
CREATE TABLE IF NOT EXISTS webhooks.event_types (
    name        text PRIMARY KEY,
    description text,
    example     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- The webhooks subscribed to this type (exactly, by pattern or `*`), kept current by a trigger
    -- on event_subscriptions, so that publish() reads one row instead of matching patterns.
    webhook_ids uuid[] NOT NULL DEFAULT '{}',
    CONSTRAINT event_types_name_dotted
        CHECK (name ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$' AND length(name) <= 200)
);

-- Subscriptions by event type: `pattern` is a type, a prefix ending in `.*`, or `*`.
CREATE TABLE IF NOT EXISTS webhooks.event_subscriptions (
    webhook_id uuid NOT NULL REFERENCES webhooks.webhooks (id) ON DELETE CASCADE,
    pattern    text NOT NULL,
    PRIMARY KEY (webhook_id, pattern),
    CONSTRAINT event_subscriptions_pattern_valid
        CHECK (pattern = '*' OR pattern ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?$')
);

-- A table subscription may name the event type its changes are sent as; TRUNCATE may be subscribed.
ALTER TABLE webhooks.subscriptions ADD COLUMN IF NOT EXISTS event_type text;
ALTER TABLE webhooks.subscriptions DROP CONSTRAINT IF EXISTS subscriptions_operations_valid;
ALTER TABLE webhooks.subscriptions ADD CONSTRAINT subscriptions_operations_valid
    CHECK (cardinality(operations) > 0 AND operations <@ ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']);

-- Receiver profile (envelope and extra signature headers) and a fixed retry schedule.
ALTER TABLE webhooks.webhooks ADD COLUMN IF NOT EXISTS profile text NOT NULL DEFAULT 'standard';
ALTER TABLE webhooks.webhooks ADD COLUMN IF NOT EXISTS retry_schedule interval[];
ALTER TABLE webhooks.webhooks DROP CONSTRAINT IF EXISTS webhooks_profile_valid;
ALTER TABLE webhooks.webhooks ADD CONSTRAINT webhooks_profile_valid
    CHECK (profile IN ('standard', 'fluxbase', 'truss', 'rowbase', 'flux', 'supabase', 'hasura'));
ALTER TABLE webhooks.webhooks DROP CONSTRAINT IF EXISTS webhooks_retry_schedule_length;
ALTER TABLE webhooks.webhooks ADD CONSTRAINT webhooks_retry_schedule_length
    CHECK (retry_schedule IS NULL OR cardinality(retry_schedule) BETWEEN 1 AND 50);

-- Application events and TRUNCATE in the outbox. `event_type` names the type of an EVENT (and of
-- a test event of a chosen type); `data` is its payload, kept as given.
ALTER TABLE webhooks.captures ADD COLUMN IF NOT EXISTS event_type text;
ALTER TABLE webhooks.captures ADD COLUMN IF NOT EXISTS data jsonb;
ALTER TABLE webhooks.captures DROP CONSTRAINT IF EXISTS captures_operation_valid;
ALTER TABLE webhooks.captures ADD CONSTRAINT captures_operation_valid
    CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'TEST', 'EVENT'));

-- Installation-wide option: refuse http:// webhook URLs.
ALTER TABLE webhooks._installation ADD COLUMN IF NOT EXISTS https_only boolean NOT NULL DEFAULT false;
