-- pgwebhooks 0015: captures carries no CHECK constraints.
-- Every INSERT statement re-reads and re-plans its table's CHECK constraints from their stored text
-- (the executor keeps them for one statement only), and a capture or a publish() is one INSERT:
-- the three CHECKs here cost a published event about 9 us, a quarter of its time, and every
-- one-row capture the same. Only pgwebhooks' own functions write this table (no role but the
-- capture triggers' owner, webhooks_capture, may even INSERT), so that code keeps what they checked.
ALTER TABLE webhooks.captures DROP CONSTRAINT IF EXISTS captures_operation_valid;
ALTER TABLE webhooks.captures DROP CONSTRAINT IF EXISTS captures_fanned_out_range;
ALTER TABLE webhooks.captures DROP CONSTRAINT IF EXISTS captures_inline_only_single_row;
