-- pgwebhooks migration 0009: attempt numbers that only grow, and a restore check that cannot be
-- skipped by hand (see sql/functions/050_runner_api.sql and 045_restore.sql).
--
-- An attempt number is the fencing token of a lease, so it must never be handed out twice for
-- one delivery. What used to be "refunded" by lowering `attempts` (a failed circuit probe, a
-- lease released unsent) is now counted here instead: the retry budget is
-- attempts - free_attempts, and attempts is the number of attempts logged.
ALTER TABLE webhooks.deliveries ADD COLUMN IF NOT EXISTS free_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE webhooks.deliveries DROP CONSTRAINT IF EXISTS deliveries_free_attempts_range;
ALTER TABLE webhooks.deliveries ADD CONSTRAINT deliveries_free_attempts_range
    CHECK (free_attempts BETWEEN 0 AND attempts);
COMMENT ON COLUMN webhooks.deliveries.free_attempts IS
    'Attempts that spend no retry budget (failed circuit probes, leases released unsent)';

-- A random value only pgwebhooks reads: the session flag that says "identity checked" must
-- hold a value derived from it, so a session cannot set the flag by hand to skip the check.
CREATE TABLE IF NOT EXISTS webhooks._identity_key (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    key      text NOT NULL DEFAULT gen_random_uuid()::text || gen_random_uuid()::text
);
COMMENT ON TABLE webhooks._identity_key IS
    'Per-installation random key behind the restore check''s session flag; readable by no ordinary role';
INSERT INTO webhooks._identity_key DEFAULT VALUES ON CONFLICT DO NOTHING;
REVOKE ALL ON webhooks._identity_key FROM PUBLIC;

-- A test event (send_test) is marked as one when sent: "test": true in the body and a
-- webhook-test header, so a receiver never takes it for a real change.
ALTER TABLE webhooks.captures ADD COLUMN IF NOT EXISTS test boolean NOT NULL DEFAULT false;
