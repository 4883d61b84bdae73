-- pgwebhooks migration 0020: which webhooks may have unfinished deliveries.
--
-- claim(), next_due_in() and the open floors probed every enabled webhook at each call: with
-- 10,000 webhooks of which one had work, claim(200) took 77 ms instead of ~25 and next_due_in
-- 29 ms instead of 0.3. Each webhook's endpoints row now says whether it may have unfinished
-- (pending or leased) deliveries; a webhook at rest ('idle') is not looked at. How a webhook
-- comes to rest without missing a delivery committed meanwhile: 044_resting_webhooks.sql.
-- Every webhook starts 'open' (it may have work): the first claims settle them.
ALTER TABLE webhooks.endpoints ADD COLUMN IF NOT EXISTS work_state text NOT NULL DEFAULT 'open';
ALTER TABLE webhooks.endpoints ADD COLUMN IF NOT EXISTS work_horizon xid8;
ALTER TABLE webhooks.endpoints DROP CONSTRAINT IF EXISTS endpoints_work_state_valid;
ALTER TABLE webhooks.endpoints ADD CONSTRAINT endpoints_work_state_valid
    CHECK (work_state IN ('open', 'emptied', 'idle'));
ALTER TABLE webhooks.endpoints DROP CONSTRAINT IF EXISTS endpoints_work_horizon_when_emptied;
ALTER TABLE webhooks.endpoints ADD CONSTRAINT endpoints_work_horizon_when_emptied
    CHECK (work_horizon IS NULL OR work_state = 'emptied');
COMMENT ON COLUMN webhooks.endpoints.work_state IS
    'open: may have unfinished deliveries; emptied: none seen, waiting out writers that were running; idle: none (not probed by claim)';
COMMENT ON COLUMN webhooks.endpoints.work_horizon IS
    'For emptied: the transaction id every writer that could have missed the mark is below (see _rest_webhooks)';

-- The webhooks claim() looks at: the ones not at rest,
CREATE INDEX IF NOT EXISTS endpoints_not_idle ON webhooks.endpoints (webhook_id) WHERE work_state <> 'idle';

-- and the ones a delivery was inserted for while they were not open. A writer only ever inserts
-- here (no unique key, no row of anyone else's to lock), so it never waits on another writer,
-- an open transaction or a claim; _rest_webhooks opens those webhooks and removes their rows.
CREATE TABLE IF NOT EXISTS webhooks._wakes (
    webhook_id uuid NOT NULL
);
COMMENT ON TABLE webhooks._wakes IS
    'Webhooks a delivery was inserted for while not open (see _open_webhooks); consumed by _rest_webhooks';
CREATE INDEX IF NOT EXISTS wakes_webhook_id ON webhooks._wakes (webhook_id);
