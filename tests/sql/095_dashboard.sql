-- 095: the dashboard's roles and tokens (sql/functions/082_api_tokens.sql). webhooks_viewer, what
-- read-only tokens act as, may call only functions that show things; tokens are stored as their
-- SHA-256 and nothing else; nobody but webhooks_admin mints or revokes them.
BEGIN;
SELECT plan(9);

SELECT is(
    (SELECT array_agg(p.proname::text ORDER BY p.proname) FROM pg_proc p
     WHERE p.pronamespace = 'webhooks'::regnamespace AND has_function_privilege('webhooks_viewer', p.oid, 'EXECUTE')),
    ARRAY['api_tokens_configured', 'authenticate_api_token', 'circuit_failure_threshold', 'delivery_histogram', 'delivery_log', 'delivery_request',
          'get_deliveries', 'get_delivery_attempts', 'get_outbox_blocks', 'get_webhook', 'get_webhook_status', 'list_event_types',
          'list_webhooks', 'runner_backlog', 'runner_outbox', 'signer', 'version'],
    'webhooks_viewer can execute only the functions that show things');
SELECT is_empty(
    $$SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'webhooks'::regnamespace
      AND c.relname NOT IN ('webhook_status', 'outbox_blocks') AND has_table_privilege('webhooks_viewer', c.oid, 'SELECT')$$,
    'webhooks_viewer reads no table, only the views webhook_status and outbox_blocks');
SELECT ok(NOT has_table_privilege('webhooks_admin', 'webhooks.api_tokens', 'SELECT'),
          'webhooks_admin cannot read the token hashes either (list_api_tokens shows them without)');
SELECT ok(NOT has_function_privilege('webhooks_runner', 'webhooks.authenticate_api_token(text)', 'EXECUTE'),
          'the runner has nothing to do with tokens');

SELECT lives_ok($$CREATE TEMP TABLE minted AS SELECT * FROM webhooks.create_api_token('ops', 'admin')$$,
                'a token is minted');
SELECT is((SELECT count(*)::int FROM webhooks.api_tokens t, minted m
           WHERE t.token_sha256 = sha256(convert_to(m.token, 'UTF8'))), 1, 'its SHA-256 is what is stored');
SELECT is((SELECT count(*)::int FROM webhooks.api_tokens t, minted m
           WHERE position(convert_to(m.token, 'UTF8') IN t.token_sha256) > 0
              OR position(m.token IN t.name) > 0), 0, 'and the token itself nowhere');

SET LOCAL ROLE webhooks_viewer;
SELECT throws_ok($$SELECT webhooks.create_api_token('sneaky', 'admin')$$, '42501', NULL,
                 'a read-only role cannot mint itself an admin token');
RESET ROLE;
SET LOCAL ROLE webhooks_admin;
SELECT throws_ok($$SELECT webhooks.revoke_api_token('00000000-0000-0000-0000-000000000000')$$, 'WH042', NULL,
                 'revoking an unknown token names it');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
