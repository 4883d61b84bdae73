-- pgwebhooks migration 0002: what hardening needs in the tables.
--
-- A subscription remembers the name its table had when it was last subscribed, so a webhook
-- whose table was dropped can still be listed as watching "public.orders (dropped)".
ALTER TABLE webhooks.subscriptions ADD COLUMN IF NOT EXISTS table_name text;
UPDATE webhooks.subscriptions s
SET table_name = format('%I.%I', n.nspname, c.relname)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = s.relid AND s.table_name IS NULL;
