-- 067: what one complete() call reads. A report of a few results finds each delivery by its
-- primary key: it never walks the webhook's whole history of deliveries (deliveries_webhook_id),
-- whatever the statistics say, and never matches each result against every leased delivery.
-- The statistics here were taken while the outbox was empty, as after a quiet night.
BEGIN;
SELECT plan(7);

CREATE TABLE public.busy (id int PRIMARY KEY);
SELECT lives_ok($$SELECT webhooks.create_webhook('busy', 'https://receiver.example/busy', '[{"table": "busy"}]')$$,
                'webhook "busy"');
ANALYZE;  -- the outbox empty: every estimate of it below is a guess

-- A history: 400 deliveries delivered.
INSERT INTO public.busy SELECT g FROM generate_series(1, 400) g;
CREATE TEMP TABLE leases AS SELECT delivery_id, attempt FROM webhooks.claim(400, 30, 400);
SELECT is((SELECT count(*) FROM webhooks.complete((
              SELECT jsonb_agg(jsonb_build_object('delivery_id', delivery_id, 'attempt', attempt,
                                                  'status_code', 200, 'latency_ms', 1))
              FROM leases)) WHERE status = 'delivered'), 400::bigint, 'a history of 400 delivered');

-- Then 200 new ones, leased and reported.
INSERT INTO public.busy SELECT g FROM generate_series(401, 600) g;
TRUNCATE leases;
INSERT INTO leases SELECT delivery_id, attempt FROM webhooks.claim(200, 30, 200);
CREATE TEMP TABLE reads AS
SELECT pg_stat_get_xact_tuples_returned('webhooks.deliveries_webhook_id'::regclass) AS history,
       pg_stat_get_xact_tuples_returned('webhooks.deliveries_pkey'::regclass) AS by_key;
SELECT is((SELECT count(*) FROM webhooks.complete((
              SELECT jsonb_agg(jsonb_build_object('delivery_id', delivery_id, 'attempt', attempt,
                                                  'status_code', CASE WHEN delivery_id % 5 = 0 THEN 503 ELSE 200 END,
                                                  'retry_after_seconds', 3, 'latency_ms', 1))
              FROM leases)) WHERE status <> 'refused'), 200::bigint, '200 results accepted');
SELECT cmp_ok(pg_stat_get_xact_tuples_returned('webhooks.deliveries_webhook_id'::regclass) - (SELECT history FROM reads),
              '<', 100::bigint, 'the report did not walk the webhook''s 600 deliveries');

-- Beside another webhook's 5,000 pending deliveries, counted when none was leased: the leased
-- partial index looked empty, and the planner scanned it and looked every result up again for
-- each leased delivery (201,400 reads by key; about 2,800 now).
CREATE TABLE public.other (id int PRIMARY KEY);
SELECT lives_ok($$SELECT webhooks.create_webhook('other', 'https://receiver.example/other', '[{"table": "other"}]')$$,
                'webhook "other"');
INSERT INTO public.other SELECT g FROM generate_series(1, 5000) g;
INSERT INTO public.busy SELECT g FROM generate_series(601, 800) g;
SELECT webhooks._fan_out(10000);
ANALYZE webhooks.deliveries;
TRUNCATE leases;
INSERT INTO leases SELECT delivery_id, attempt FROM webhooks.claim(200, 30, 200,
    ARRAY[(SELECT id FROM webhooks.webhooks WHERE name = 'other')]);
UPDATE reads SET by_key = pg_stat_get_xact_tuples_returned('webhooks.deliveries_pkey'::regclass);
SELECT is((SELECT count(*) FROM webhooks.complete((
              SELECT jsonb_agg(jsonb_build_object('delivery_id', delivery_id, 'attempt', attempt,
                                                  'status_code', 200, 'latency_ms', 1))
              FROM leases)) WHERE status = 'delivered'), 200::bigint, '200 more delivered');
SELECT cmp_ok(pg_stat_get_xact_tuples_returned('webhooks.deliveries_pkey'::regclass) - (SELECT by_key FROM reads),
              '<', 10000::bigint, 'each result is looked up a few times by key, not once per leased delivery');

SELECT * FROM finish();
ROLLBACK;
