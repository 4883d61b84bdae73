-- pgwebhooks 0012: replay_failed replays each failed delivery once.
-- The failed delivery remembers the delivery that replays it; replay_failed() skips the ones that
-- have one, so a second call (or two at once) queues nothing new. Nullable and without default:
-- adding it rewrites no row.
ALTER TABLE webhooks.deliveries ADD COLUMN IF NOT EXISTS replayed_as bigint;
COMMENT ON COLUMN webhooks.deliveries.replayed_as IS
    'The delivery replay_failed() queued to replay this one; NULL if it has not.';

-- The fluxbase_hex receiver profile: X-Fluxbase-Signature as a bare hex HMAC of the body.
ALTER TABLE webhooks.webhooks DROP CONSTRAINT IF EXISTS webhooks_profile_valid;
ALTER TABLE webhooks.webhooks ADD CONSTRAINT webhooks_profile_valid
    CHECK (profile IN ('standard', 'fluxbase', 'fluxbase_hex', 'truss', 'rowbase', 'flux', 'supabase', 'hasura'));
