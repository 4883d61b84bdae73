-- 080: day-to-day operations (sql/008_operations.sql): send_test, replay, replay_failed and
-- purge. Old rows are made old by moving their timestamps back, never by waiting.
BEGIN;
SELECT plan(28);

CREATE TABLE public.t (id int PRIMARY KEY);
CREATE TEMP TABLE h AS SELECT id FROM webhooks.create_webhook('h', 'https://e.com/h', '[{"table": "t"}]', max_retries => 0);
CREATE FUNCTION pg_temp.fail_all() RETURNS text[] LANGUAGE sql AS $$
    SELECT array_agg(r.status ORDER BY r.delivery_id) FROM webhooks.complete((
        SELECT jsonb_agg(jsonb_build_object('delivery_id', c.delivery_id, 'attempt', c.attempt, 'status_code', 500))
        FROM webhooks.claim() c)) r
$$;

-- send_test ------------------------------------------------------------------------------------
CREATE TEMP TABLE test_delivery AS SELECT webhooks.send_test((SELECT id FROM h)) AS id;
SELECT is((SELECT webhook_id FROM webhooks.deliveries WHERE id = (SELECT id FROM test_delivery)), (SELECT id FROM h),
          'send_test queues a delivery for the webhook and returns its id');
CREATE TEMP TABLE test_claim AS SELECT *, body::jsonb AS p FROM webhooks.claim();
SELECT is((SELECT count(*)::int FROM test_claim), 1, 'the test delivery is claimed');
SELECT is((SELECT p ->> 'event' FROM test_claim), 'TEST', 'as a TEST event');
SELECT is((SELECT p -> 'record' ->> 'message' FROM test_claim), 'test event from pgwebhooks', 'with a message');
SELECT matches((SELECT headers ->> 'webhook-signature' FROM test_claim), '^v1,', 'signed like any other');
SELECT is((SELECT event FROM webhooks.get_deliveries((SELECT id FROM h))), 'TEST', 'get_deliveries shows it');
SELECT is((SELECT status FROM webhooks.complete((SELECT jsonb_agg(jsonb_build_object(
               'delivery_id', delivery_id, 'attempt', attempt, 'status_code', 200)) FROM test_claim))),
          'delivered', 'and completed like any other');
SELECT throws_ok($$SELECT webhooks.send_test('00000000-0000-0000-0000-000000000000')$$, 'WH404', NULL,
                 'send_test: unknown webhook');

-- replay -----------------------------------------------------------------------------------------
INSERT INTO public.t VALUES (1), (2);
SELECT is(pg_temp.fail_all(), ARRAY['failed', 'failed'], 'max_retries 0: the first failure is final');
CREATE TEMP TABLE failed AS SELECT id, capture_id, n FROM webhooks.deliveries WHERE status = 'failed' ORDER BY id;
CREATE TEMP TABLE replayed AS SELECT webhooks.replay((SELECT min(id) FROM failed)) AS id;
SELECT is((SELECT (status, attempts)::text FROM webhooks.deliveries WHERE id = (SELECT id FROM replayed)), '(pending,0)',
          'replay queues a new pending delivery');
SELECT is((SELECT (capture_id, n)::text FROM webhooks.deliveries WHERE id = (SELECT id FROM replayed)),
          (SELECT (capture_id, n)::text FROM failed ORDER BY id LIMIT 1), 'of the same event');
SELECT is((SELECT status FROM webhooks.deliveries WHERE id = (SELECT min(id) FROM failed)), 'failed',
          'the old delivery stays in the log as it was');
CREATE TEMP TABLE replay_claim AS SELECT * FROM webhooks.claim();
SELECT is((SELECT headers ->> 'webhook-id' FROM replay_claim),
          webhooks._event_uid((SELECT capture_id FROM failed ORDER BY id LIMIT 1), (SELECT n FROM failed ORDER BY id LIMIT 1))::text,
          'the replay carries the same webhook-id, so a receiver can deduplicate');
SELECT is((SELECT status FROM webhooks.complete((SELECT jsonb_agg(jsonb_build_object(
               'delivery_id', delivery_id, 'attempt', attempt, 'status_code', 200)) FROM replay_claim))),
          'delivered', 'and can be delivered');
SELECT throws_ok($$SELECT webhooks.replay(-1)$$, 'WH404', 'delivery_id: no delivery with id -1', 'replay: unknown delivery');

-- replay_failed -----------------------------------------------------------------------------------
SELECT is(webhooks.replay_failed((SELECT id FROM h)), 2, 'replay_failed queues every failed delivery');
SELECT is((SELECT count(*)::int FROM webhooks.deliveries WHERE status = 'pending'), 2, 'two pending deliveries');
SELECT is(webhooks.replay_failed((SELECT id FROM h), now() + interval '1 hour'), 0,
          'replay_failed with since after the failures queues nothing');
SELECT throws_ok($$SELECT webhooks.replay_failed('00000000-0000-0000-0000-000000000000')$$, 'WH404', NULL,
                 'replay_failed: unknown webhook');

-- purge -------------------------------------------------------------------------------------------
SELECT is(pg_temp.fail_all(), ARRAY['failed', 'failed'], 'the replays fail again');
SELECT is((SELECT (deliveries, captures)::text FROM webhooks.purge()), '(0,0)', 'purge keeps what is recent');
UPDATE webhooks.deliveries SET completed_at = now() - interval '8 days'
WHERE id IN (SELECT id FROM failed) OR id = (SELECT id FROM test_delivery);
UPDATE webhooks.captures SET occurred_at = now() - interval '8 days';
INSERT INTO public.t VALUES (3);  -- a fresh change, not yet claimed
SELECT is((SELECT (deliveries, captures)::text FROM webhooks.purge()), '(3,1)',
          'purge deletes finished deliveries older than 7 days, and captures nothing needs any more');
SELECT is_empty($$SELECT 1 FROM webhooks.delivery_attempts a WHERE NOT EXISTS
                  (SELECT 1 FROM webhooks.deliveries d WHERE d.id = a.delivery_id)$$,
                'their attempts go with them');
SELECT is((SELECT count(*)::int FROM webhooks.deliveries), 3, 'the replays (finished now) are kept');
SELECT is((SELECT coalesce(sum(cardinality(e.records)), 0)::int FROM webhooks.events e), 2, 'so is the capture they need');
SELECT is((SELECT count(*)::int FROM webhooks.claim()), 1, 'the unclaimed change is untouched');
SELECT is((SELECT (deliveries, captures)::text FROM webhooks.purge('0 seconds')), '(0,0)',
          'purge(0): nothing finished strictly before now');
SELECT throws_ok($$SELECT webhooks.purge('-1 day')$$, 'WH013', NULL, 'purge: a negative interval');

SELECT * FROM finish();
ROLLBACK;
