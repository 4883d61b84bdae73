-- pgwebhooks migration 0016: bounded tables by default (webhooks.maintain()).
--
-- How long finished work (delivered and failed deliveries, their attempts, and the captured
-- changes no delivery needs any more) is kept before maintain() removes it. Pending, leased and
-- held work is kept whatever its age.
ALTER TABLE webhooks._installation ADD COLUMN IF NOT EXISTS retention interval NOT NULL DEFAULT interval '7 days';
ALTER TABLE webhooks._installation DROP CONSTRAINT IF EXISTS installation_retention_range;
ALTER TABLE webhooks._installation ADD CONSTRAINT installation_retention_range
    CHECK (retention BETWEEN interval '0' AND interval '100 years');
COMMENT ON COLUMN webhooks._installation.retention IS
    'How long maintain() keeps finished deliveries, their attempts and unneeded captures (set_retention)';

-- Whether any delivery still needs a capture: one index probe per capture. Without it, each
-- maintain() call would read the whole deliveries table to learn which captures it may delete.
CREATE INDEX IF NOT EXISTS deliveries_capture_id ON webhooks.deliveries (capture_id);

-- Where maintain() goes on from: each call walks the ids from where the last one stopped, so a
-- long stretch of rows it must keep (a paused webhook's old backlog) cannot use up every call's
-- time budget before it reaches the rows it may remove. NULL: start a new pass from the oldest.
CREATE TABLE IF NOT EXISTS webhooks._maintain_cursor (
    only_row        boolean PRIMARY KEY DEFAULT true,
    deliveries_from bigint,
    captures_from   bigint,
    CONSTRAINT maintain_cursor_single_row CHECK (only_row)
);
COMMENT ON TABLE webhooks._maintain_cursor IS
    'Where the next maintain() call goes on walking deliveries and captures (NULL: from the oldest)';
INSERT INTO webhooks._maintain_cursor DEFAULT VALUES ON CONFLICT DO NOTHING;
