-- 010: the installed schema: tables, named constraints, indexes, roles, and the functions of
-- the documented API with their signatures (argument types, argument names, defaults, SECURITY DEFINER).
BEGIN;
SELECT plan(65);

-- Schema and tables ----------------------------------------------------------------------------
SELECT has_schema('webhooks');
SELECT has_table('webhooks', 'webhooks', 'table webhooks.webhooks');
SELECT has_table('webhooks', 'subscriptions', 'table webhooks.subscriptions');
SELECT has_table('webhooks', 'secrets', 'table webhooks.secrets');
SELECT has_table('webhooks', 'captures', 'table webhooks.captures');
SELECT has_table('webhooks', 'events', 'table webhooks.events');
SELECT has_table('webhooks', 'deliveries', 'table webhooks.deliveries');
SELECT has_table('webhooks', 'delivery_attempts', 'table webhooks.delivery_attempts');

SELECT columns_are('webhooks', 'webhooks', ARRAY[
    'id', 'name', 'url', 'description', 'enabled', 'disabled_reason', 'max_retries',
    'timeout_seconds', 'retry_backoff_seconds', 'headers', 'created_at', 'updated_at',
    'max_concurrency', 'rate_limit_per_second', 'profile', 'retry_schedule',
    'paused', 'paused_reason', 'paused_at', 'pause_after'],
    'webhooks.webhooks holds no secret column (secret headers live in webhooks.secret_headers)');
SELECT col_is_pk('webhooks', 'webhooks', 'id', 'webhooks.id is the primary key');
SELECT col_type_is('webhooks', 'webhooks', 'id', 'uuid', 'webhook ids are uuids');
SELECT col_type_is('webhooks', 'webhooks', 'headers', 'jsonb', 'webhooks.headers is jsonb');
SELECT col_default_is('webhooks', 'webhooks', 'max_retries', '3', 'max_retries defaults to 3');
SELECT col_default_is('webhooks', 'webhooks', 'timeout_seconds', '30', 'timeout_seconds defaults to 30');
SELECT col_default_is('webhooks', 'webhooks', 'retry_backoff_seconds', '5', 'retry_backoff_seconds defaults to 5');
SELECT col_default_is('webhooks', 'deliveries', 'status', 'pending', 'deliveries start pending');
SELECT col_not_null('webhooks', 'secrets', 'secret', 'a secret is never null');

-- Named CHECK constraints -----------------------------------------------------------------------
SELECT ok(
    (SELECT array_agg(conname::text ORDER BY conname) FROM pg_constraint
     WHERE conrelid = 'webhooks.webhooks'::regclass AND contype = 'c') @>
    ARRAY['webhooks_disabled_reason_only_when_disabled', 'webhooks_headers_object',
          'webhooks_max_retries_range', 'webhooks_name_not_blank', 'webhooks_retry_backoff_seconds_range',
          'webhooks_timeout_seconds_range', 'webhooks_url_http'],
    'webhooks.webhooks has its named CHECK constraints');
SELECT ok(
    (SELECT array_agg(conname::text ORDER BY conname) FROM pg_constraint
     WHERE conrelid = 'webhooks.deliveries'::regclass AND contype = 'c') @>
    ARRAY['deliveries_attempts_nonnegative', 'deliveries_completed_iff_final',
          'deliveries_leased_has_attempt', 'deliveries_status_valid'],
    'webhooks.deliveries has its named CHECK constraints');
SELECT has_check('webhooks', 'subscriptions', 'subscriptions has a CHECK on operations');
SELECT has_check('webhooks', 'delivery_attempts', 'delivery_attempts has CHECK constraints');
SELECT has_unique('webhooks', 'webhooks', 'webhook names are unique');

-- The constraints do reject bad rows, whatever the functions do.
SELECT throws_ok(
    $$INSERT INTO webhooks.webhooks (name, url, max_retries) VALUES ('x', 'https://e.com', 51)$$,
    '23514', NULL, 'webhooks_max_retries_range rejects 51');
SELECT throws_ok(
    $$INSERT INTO webhooks.webhooks (name, url) VALUES ('x', 'ftp://e.com')$$,
    '23514', NULL, 'webhooks_url_http rejects ftp://');
SELECT throws_ok(
    $$INSERT INTO webhooks.deliveries (capture_id, n, webhook_id, status)
      VALUES (1, 1, gen_random_uuid(), 'lost')$$,
    '23514', NULL, 'deliveries_status_valid rejects an unknown status');
SELECT throws_ok(
    $$INSERT INTO webhooks.deliveries (capture_id, n, webhook_id, status)
      VALUES (1, 1, gen_random_uuid(), 'delivered')$$,
    '23514', NULL, 'deliveries_completed_iff_final: delivered needs completed_at');
SELECT throws_ok(
    $$INSERT INTO webhooks.deliveries (capture_id, n, webhook_id, status, completed_at)
      VALUES (1, 1, gen_random_uuid(), 'pending', now())$$,
    '23514', NULL, 'deliveries_completed_iff_final: pending has no completed_at');

-- Indexes --------------------------------------------------------------------------------------
SELECT has_index('webhooks', 'deliveries', 'deliveries_webhook_due', ARRAY['webhook_id', 'next_attempt_at'],
                 'claim path index deliveries_webhook_due on (webhook_id, next_attempt_at)');
SELECT has_index('webhooks', 'deliveries', 'deliveries_webhook_id', ARRAY['webhook_id', 'id'],
                 'deliveries_webhook_id on (webhook_id, id)');
SELECT ok(
    (SELECT pg_get_expr(indpred, indrelid) FROM pg_index
     WHERE indexrelid = 'webhooks.deliveries_webhook_due'::regclass) ~ 'pending.*leased',
    'deliveries_webhook_due is partial: only pending and leased rows');
SELECT has_index('webhooks', 'subscriptions', 'subscriptions_relid', 'subscriptions_relid');
SELECT has_index('webhooks', 'delivery_attempts', 'delivery_attempts_delivery_id', 'delivery_attempts_delivery_id');

-- Roles ----------------------------------------------------------------------------------------
SELECT has_role('webhooks_admin');
SELECT has_role('webhooks_runner');
SELECT has_role('webhooks_capture');
SELECT function_owner_is('webhooks', '_capture_statement', ARRAY[]::text[], 'webhooks_capture',
                         'the capture trigger functions belong to the locked-down webhooks_capture role');
-- Code a table's owner wrote may run while a capture takes row images (read-only then, see
-- 030_capture.sql): as webhooks_capture it must be able to read nothing of the outbox, so it can
-- neither forge events nor see another table's images or a webhook's secrets.
SELECT is((SELECT array_agg(t ORDER BY t) FROM unnest(ARRAY['captures', 'events', 'deliveries', 'delivery_attempts',
                                                            'secrets', 'secret_headers', 'webhooks']) t
           WHERE has_table_privilege('webhooks_capture', 'webhooks.' || t, 'SELECT')), NULL,
          'webhooks_capture may read no outbox table, row images and secrets included');

-- Functions with the documented signatures ------------------------------------------------------
SELECT has_function('webhooks', 'create_webhook',
    ARRAY['text', 'text', 'jsonb', 'text', 'text', 'boolean', 'integer', 'integer', 'integer', 'jsonb', 'text', 'interval[]', 'interval', 'jsonb', 'integer', 'integer'],
    'create_webhook(name, url, events, secret, description, enabled, max_retries, timeout_seconds, retry_backoff_seconds, headers, profile, retry_schedule, pause_after, secret_headers, max_concurrency, rate_limit_per_second)');
SELECT is(
    (SELECT proargnames[1:10] FROM pg_proc WHERE oid = 'webhooks.create_webhook(text,text,jsonb,text,text,boolean,integer,integer,integer,jsonb,text,interval[],interval,jsonb,integer,integer)'::regprocedure),
    ARRAY['name', 'url', 'events', 'secret', 'description', 'enabled', 'max_retries',
          'timeout_seconds', 'retry_backoff_seconds', 'headers'],
    'create_webhook argument names match the documented API');
SELECT is(
    (SELECT pronargdefaults::int FROM pg_proc WHERE oid = 'webhooks.create_webhook(text,text,jsonb,text,text,boolean,integer,integer,integer,jsonb,text,interval[],interval,jsonb,integer,integer)'::regprocedure),
    13, 'create_webhook: all but name, url, events have defaults');
SELECT has_function('webhooks', 'list_webhooks', ARRAY[]::text[], 'list_webhooks()');
SELECT has_function('webhooks', 'get_webhook', ARRAY['uuid'], 'get_webhook(id uuid)');
SELECT has_function('webhooks', 'update_webhook', ARRAY['uuid', 'jsonb'], 'update_webhook(id uuid, changes jsonb)');
SELECT has_function('webhooks', 'delete_webhook', ARRAY['uuid'], 'delete_webhook(id uuid)');
SELECT has_function('webhooks', 'get_deliveries', ARRAY['uuid', 'integer', 'integer'], 'get_deliveries(id, limit, offset)');
SELECT is(
    (SELECT proargnames[1:3] FROM pg_proc WHERE oid = 'webhooks.get_deliveries(uuid,integer,integer)'::regprocedure),
    ARRAY['id', 'limit', 'offset'], 'get_deliveries argument names match the documented API');
SELECT has_function('webhooks', 'get_delivery_attempts', ARRAY['bigint'], 'get_delivery_attempts(delivery_id)');
SELECT has_function('webhooks', 'rotate_secret', ARRAY['uuid', 'text', 'interval'], 'rotate_secret(id, new_secret, grace_period)');
SELECT has_function('webhooks', 'claim', ARRAY['integer', 'integer', 'integer', 'uuid[]'], 'claim(batch_size, ...)');
SELECT has_function('webhooks', 'complete', ARRAY['jsonb'], 'complete(results jsonb)');
SELECT has_function('webhooks', 'release', ARRAY['jsonb'], 'release(leases jsonb)');
SELECT has_function('webhooks', 'version', ARRAY[]::text[], 'version()');
SELECT has_function('webhooks', 'send_test', ARRAY['uuid', 'text', 'text', 'jsonb', 'jsonb', 'text', 'jsonb'],
    'send_test(id, event, table, record, old_record, event_type, data)');
SELECT has_function('webhooks', 'replay', ARRAY['bigint'], 'replay(delivery_id)');
SELECT has_function('webhooks', 'replay_failed', ARRAY['uuid', 'timestamptz', 'boolean'], 'replay_failed(id, since, dry_run)');
SELECT has_function('webhooks', 'purge', ARRAY['interval'], 'purge(older_than)');
SELECT function_returns('webhooks', 'complete', ARRAY['jsonb'], 'setof record', 'complete returns rows');

-- Functions that must run with their owner's rights
SELECT is_definer('webhooks', 'create_webhook',
    ARRAY['text', 'text', 'jsonb', 'text', 'text', 'boolean', 'integer', 'integer', 'integer', 'jsonb', 'text', 'interval[]', 'interval', 'jsonb', 'integer', 'integer'],
    'create_webhook is SECURITY DEFINER');
SELECT is_definer('webhooks', 'claim', ARRAY['integer', 'integer', 'integer', 'uuid[]'], 'claim is SECURITY DEFINER');
SELECT is_definer('webhooks', 'complete', ARRAY['jsonb'], 'complete is SECURITY DEFINER');
SELECT is_definer('webhooks', '_capture_statement', ARRAY[]::text[], '_capture_statement is SECURITY DEFINER');
SELECT is_definer('webhooks', '_capture_row', ARRAY[]::text[], '_capture_row is SECURITY DEFINER');
SELECT is_empty(
    $$SELECT p.oid::regprocedure FROM pg_proc p
      WHERE p.pronamespace = 'webhooks'::regnamespace AND p.prosecdef
        AND NOT coalesce(array_to_string(p.proconfig, ',') ~ 'search_path',  false)
        -- These run inside application writes and name everything with its schema instead.
        AND p.proname NOT IN ('_capture_statement', '_capture_row', '_capture_truncate', 'publish')$$,
    'every other SECURITY DEFINER function pins its search_path');
SELECT matches(webhooks.version(), '^[0-9]+\.[0-9]+\.[0-9]+', 'version() reports a version (tests/test_payload_and_headers.py: the package''s)');
SELECT function_lang_is('webhooks', '_sign_headers', ARRAY['text', 'bigint', 'text', 'text[]'],
                        CASE WHEN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'plpython3u')
                             THEN 'plpython3u' ELSE 'sql' END,
                        'signing is PL/Python where plpython3u is installed, else SQL over pgcrypto');

SELECT * FROM finish();
ROLLBACK;
