BEGIN;
SELECT plan(1);
SELECT has_schema('webhooks');
SELECT * FROM finish();
ROLLBACK;
