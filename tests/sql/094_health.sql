-- 094: endpoint health. webhook_status after scripted successes and failures, pause
-- and resume without loss, 410 and auto-pause (time faked by moving failing_since), secret
-- headers sent but never shown, get_deliveries listing queued captures. now() is frozen in the
-- transaction. (Alerts need commits to be delivered: tests/test_health.py listens for them.)
BEGIN;
SELECT plan(37);

CREATE TABLE public.orders (id int PRIMARY KEY, total int);
CREATE TABLE public.other (id int PRIMARY KEY);
SELECT lives_ok($$SELECT webhooks.create_webhook('shop', 'https://receiver.example/shop', '[{"table": "orders"}]',
    max_retries => 10, headers => '{"X-Plain": "shown"}', secret_headers => '{"Authorization": "Bearer s3cr3t"}')$$,
    'create_webhook takes secret_headers');
SELECT lives_ok($$SELECT webhooks.create_webhook('other', 'https://receiver.example/other', '[{"table": "other"}]',
    max_retries => 50, pause_after => '1 hour')$$, 'and pause_after');

CREATE FUNCTION pg_temp.hook(hook_name text) RETURNS uuid LANGUAGE sql AS $$
    SELECT id FROM webhooks.webhooks WHERE name = hook_name
$$;
CREATE TEMP TABLE claims (label text, delivery_id bigint, attempt int, webhook_id uuid, headers jsonb);
CREATE FUNCTION pg_temp.claim(label text, hook_name text) RETURNS int LANGUAGE sql AS $$
    WITH c AS (
        INSERT INTO claims
        SELECT label, c.delivery_id, c.attempt, c.webhook_id, c.headers
        FROM webhooks.claim(100, 30, NULL, ARRAY(SELECT id FROM webhooks.webhooks WHERE name <> hook_name)) c
        RETURNING 1)
    SELECT count(*)::int FROM c
$$;
-- Report every delivery claimed under `label` with one status code (NULL: a connection error).
CREATE FUNCTION pg_temp.report(label text, code int, latency int DEFAULT 10) RETURNS SETOF text LANGUAGE sql AS $$
    SELECT r.status FROM webhooks.complete((
        SELECT jsonb_agg(jsonb_build_object('delivery_id', c.delivery_id, 'attempt', c.attempt,
                                            'status_code', code, 'latency_ms', latency,
                                            'error', CASE WHEN code IS NULL THEN 'connection refused' END))
        FROM claims c WHERE c.label = report.label)) r
$$;
CREATE FUNCTION pg_temp.status(hook_name text) RETURNS webhooks.webhook_status LANGUAGE sql AS $$
    SELECT * FROM webhooks.webhook_status WHERE name = hook_name
$$;
CREATE PROCEDURE pg_temp.all_due(hook_name text) LANGUAGE sql AS $$
    UPDATE webhooks.deliveries SET next_attempt_at = now() - interval '1 second'
    WHERE webhook_id = pg_temp.hook(hook_name) AND status = 'pending'
$$;

-- Right after a commit: pending counts captured changes not yet fanned out ------------------------
INSERT INTO public.orders VALUES (1, 10), (2, 20), (3, 30);
SELECT is((pg_temp.status('shop')).pending, 3::bigint, 'pending counts captured changes before any claim');
SELECT ok((pg_temp.status('shop')).oldest_pending_at BETWEEN now() AND clock_timestamp(), 'oldest_pending_at is the capture''s time');
SELECT is((SELECT count(*)::int FROM webhooks.get_deliveries(pg_temp.hook('shop')) WHERE status = 'queued'
                                                                                 AND delivery_id IS NULL), 3,
          'get_deliveries lists the queued changes');
SELECT is((pg_temp.status('shop')).state, 'healthy', 'a new webhook is healthy');

-- Secret headers: sent, never shown ---------------------------------------------------------------
SELECT is(pg_temp.claim('a', 'shop'), 3, 'three deliveries claimed');
SELECT is((SELECT count(*)::int FROM webhooks.get_deliveries(pg_temp.hook('shop')) WHERE status = 'queued'), 0,
          'once fanned out nothing is listed as queued');
SELECT is((SELECT headers ->> 'Authorization' FROM claims WHERE label = 'a' LIMIT 1), 'Bearer s3cr3t',
          'the secret header is sent');
SELECT is((SELECT headers ->> 'X-Plain' FROM claims WHERE label = 'a' LIMIT 1), 'shown', 'with the plain ones');
SELECT unalike((SELECT l::text FROM webhooks.list_webhooks() l WHERE l.name = 'shop'), '%s3cr3t%',
               'list_webhooks never shows it');
SELECT unalike((SELECT g::text FROM webhooks.get_webhook(pg_temp.hook('shop')) g), '%s3cr3t%',
               'get_webhook never shows it');
SELECT ok(NOT has_table_privilege('webhooks_admin', 'webhooks.secret_headers', 'SELECT'),
          'admins cannot read webhooks.secret_headers');
SELECT throws_ok($$SELECT webhooks.update_webhook(pg_temp.hook('shop'), '{"secret_headers": {"Bad Name": "x"}}')$$,
                 'WH016', NULL, 'a bad secret header is WH016');

-- Scripted failures and successes ----------------------------------------------------------------
SELECT is((SELECT array_agg(s) FROM pg_temp.report('a', 503, 40) s), ARRAY['pending', 'pending', 'pending'],
          'three 503s');
SELECT is((pg_temp.status('shop')).consecutive_failures, 3, 'three failures in a row');
SELECT is((pg_temp.status('shop')).state, 'failing', 'the webhook is failing');
SELECT is((pg_temp.status('shop')).last_error, 'HTTP 503', 'last_error');
SELECT is((pg_temp.status('shop')).pending, 3::bigint, 'still three pending');
SELECT is(((pg_temp.status('shop')).failed_attempts, (pg_temp.status('shop')).delivered)::text, '(3,0)',
          'the last hour: three failed attempts, nothing delivered');
CALL pg_temp.all_due('shop');
UPDATE webhooks.endpoints SET circuit = 'closed', retry_at = NULL WHERE webhook_id = pg_temp.hook('shop');
SELECT is(pg_temp.claim('b', 'shop'), 3, 'claimed again');
SELECT is((SELECT array_agg(s) FROM pg_temp.report('b', 200, 20) s), ARRAY['delivered', 'delivered', 'delivered'],
          'three successes');
SELECT is(((pg_temp.status('shop')).state, (pg_temp.status('shop')).consecutive_failures,
           (pg_temp.status('shop')).last_success_at = now(), (pg_temp.status('shop')).pending)::text,
          '(healthy,0,t,0)', 'healthy again, nothing pending');
SELECT is(((pg_temp.status('shop')).delivered, (pg_temp.status('shop')).failed_attempts,
           (pg_temp.status('shop')).p50_latency_ms, (pg_temp.status('shop')).p95_latency_ms)::text,
          '(3,3,30,40)', 'the last hour: 3 delivered, 3 failed, p50 30 ms, p95 40 ms');

-- Pause without loss -----------------------------------------------------------------------------
SELECT lives_ok($$SELECT webhooks.pause_webhook(pg_temp.hook('shop'), 'maintenance')$$, 'pause');
SELECT is(((pg_temp.status('shop')).state, (pg_temp.status('shop')).paused_reason)::text, '(paused,maintenance)',
          'paused, with the reason');
INSERT INTO public.orders VALUES (4, 40);
SELECT is(pg_temp.claim('c', 'shop'), 0, 'nothing is sent while paused');
SELECT is((SELECT count(*)::int FROM webhooks.deliveries WHERE webhook_id = pg_temp.hook('shop') AND status = 'pending'), 1,
          'but the change is queued (fan-out went on)');
SELECT lives_ok($$SELECT webhooks.resume_webhook(pg_temp.hook('shop'))$$, 'resume');
SELECT is(pg_temp.claim('d', 'shop'), 1, 'the change committed while paused is sent after resume');

-- Auto-pause after pause_after, with at least a few attempts ---------------------------------------
INSERT INTO public.other SELECT generate_series(1, 6);
SELECT is(pg_temp.claim('e', 'other'), 6, 'six deliveries for "other"');
SELECT is((SELECT count(*)::int FROM pg_temp.report('e', 400) s WHERE s = 'pending'), 6, 'all fail (400)');
-- Time passes: the failures began two hours ago.
UPDATE webhooks.endpoints SET failing_since = now() - interval '2 hours' WHERE webhook_id = pg_temp.hook('other');
CALL pg_temp.all_due('other');
SELECT is(pg_temp.claim('f', 'other'), 6, 'claimed again');
SELECT is((SELECT count(*)::int FROM pg_temp.report('f', NULL) s WHERE s = 'pending'), 6, 'fail again');
SELECT is(((pg_temp.status('other')).state, (pg_temp.status('other')).pending)::text, '(paused,6)',
          'auto-paused after pause_after, its queue kept');
SELECT matches((pg_temp.status('other')).paused_reason, 'paused automatically: all 12 attempts',
               'with the reason');

SET LOCAL ROLE webhooks_admin;
SELECT is((SELECT count(*)::int FROM webhooks.webhook_status), 2, 'admins read webhook_status');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
