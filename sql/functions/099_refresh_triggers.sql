-- pgwebhooks: bring every capture trigger up to date with the functions just installed (a
-- no-op, taking no table lock, where they already are). Last, after the grants.
SELECT webhooks.refresh_triggers();
