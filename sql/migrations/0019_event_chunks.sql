-- pgwebhooks migration 0019: the row images of a multi-row statement in chunks.
--
-- A bulk statement stored one `events` row per changed row: a tuple header and a primary-key
-- entry for each, a fifth of what a 100,000-row INSERT ... SELECT cost beside no trigger. The
-- capture triggers now store up to 16 consecutive rows per `events` row: `n` is the first row's
-- number, and `records` (and, for an UPDATE, `old_records`) hold the rows' JSON texts in order,
-- NULL for an UPDATE's row whose key changed. A text array, not a JSON array: reading row k is a
-- walk over the elements' lengths, where a JSON array would have to be parsed up to row k (11 us
-- against 4 per delivery for 16 rows). 16 rows of a narrow table stay under the size at which
-- PostgreSQL compresses a value; a wide table's chunk is compressed and read whole, as a wide
-- row is today.
--
-- Rows written before this (one per changed row, `record` and `old_record`) and the paths that
-- still write one per row (capture filters, which address each row to its own webhooks, and
-- images taken read-only) stay readable: row k of a capture is in the `events` row with the
-- greatest `n` not above k, in `records` when it has them, else in `record` (_event_images).
-- Adding two nullable columns takes no table rewrite: a runner may drain during the upgrade.
ALTER TABLE webhooks.events ADD COLUMN IF NOT EXISTS records text[];
ALTER TABLE webhooks.events ADD COLUMN IF NOT EXISTS old_records text[];
