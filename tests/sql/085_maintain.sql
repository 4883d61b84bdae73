-- 085: maintain() keeps the outbox bounded and never removes work that is still to be done.
-- Old rows are made old by moving their timestamps back, never by waiting.
BEGIN;
SELECT plan(29);

CREATE TABLE public.t (id int PRIMARY KEY);
CREATE TEMP TABLE h AS SELECT id FROM webhooks.create_webhook('h', 'https://e.com/h', '[{"table": "t"}]', max_retries => 0);
CREATE FUNCTION pg_temp.report(code int) RETURNS void LANGUAGE sql AS $$
    SELECT count(*) FROM webhooks.complete((
        SELECT jsonb_agg(jsonb_build_object('delivery_id', c.delivery_id, 'attempt', c.attempt, 'status_code', code))
        FROM webhooks.claim() c))
$$;
-- Everything now in the outbox happened 30 days ago.
CREATE FUNCTION pg_temp.age_everything() RETURNS void LANGUAGE sql AS $$
    UPDATE webhooks.deliveries SET created_at = created_at - interval '30 days',
        completed_at = completed_at - interval '30 days';
    UPDATE webhooks.delivery_attempts SET attempted_at = attempted_at - interval '30 days';
    UPDATE webhooks.captures SET occurred_at = occurred_at - interval '30 days';
$$;
CREATE FUNCTION pg_temp.maintained() RETURNS text LANGUAGE sql AS $$
    SELECT (m.deliveries, m.attempts, m.captures, m.more, m.busy)::text FROM webhooks.maintain() m
$$;

-- The setting -------------------------------------------------------------------------------------
SELECT is(webhooks.retention(), interval '7 days', 'retention is 7 days by default');
SELECT throws_ok($$SELECT webhooks.set_retention('-1 day')$$, 'WH055',
                 'retention: ''-1 days'' is out of range; expected an interval from 0 to 100 years, like ''7 days''',
                 'a negative retention is refused, naming the field and the value');
SELECT throws_ok($$SELECT webhooks.set_retention(NULL)$$, 'WH055', NULL, 'a null retention is refused');
SELECT throws_ok($$SELECT webhooks.set_retention('1000 years')$$, 'WH055', NULL, 'a retention over 100 years is refused');
SELECT is(webhooks.retention(), interval '7 days', 'a refused retention changes nothing');
SELECT throws_ok($$SELECT webhooks.maintain(NULL)$$, 'WH056', NULL, 'maintain: a null time budget is refused');
SELECT throws_ok($$SELECT webhooks.maintain('2 hours')$$, 'WH056', NULL, 'maintain: a time budget over an hour is refused');
SELECT throws_ok($$SELECT webhooks.maintain('1 second', 0)$$, 'WH008', NULL, 'maintain: batch_size 0 is refused');
SELECT is(pg_temp.maintained(), '(0,0,0,f,f)', 'an empty outbox: nothing to do, nothing more');

-- What goes and what stays -------------------------------------------------------------------------
INSERT INTO public.t VALUES (1);                 -- delivered
SELECT pg_temp.report(200);
INSERT INTO public.t VALUES (2), (3);            -- failed (a multi-row capture with events)
SELECT pg_temp.report(500);
INSERT INTO public.t VALUES (4);                 -- failed, then replayed: the replay is pending
SELECT pg_temp.report(500);
INSERT INTO public.t VALUES (5);                 -- leased, never reported
CREATE TEMP TABLE leased AS SELECT delivery_id AS id FROM webhooks.claim();
SELECT webhooks.pause_webhook((SELECT id FROM h));
CREATE TEMP TABLE replay AS SELECT webhooks.replay(max(id)) AS id FROM webhooks.deliveries WHERE status = 'failed';
INSERT INTO public.t VALUES (6), (7);            -- pending behind a pause
SELECT count(*) FROM webhooks.claim();           -- fans them out; a paused webhook's are not leased
INSERT INTO public.t VALUES (8);                 -- captured, not fanned out yet
SELECT pg_temp.age_everything();
CREATE TEMP TABLE before AS
SELECT (SELECT count(*) FROM webhooks.deliveries) AS deliveries, (SELECT count(*) FROM webhooks.delivery_attempts) AS attempts,
       (SELECT count(*) FROM webhooks.captures) AS captures, (SELECT coalesce(sum(cardinality(e.records)), 0) FROM webhooks.events e) AS events;
SELECT is((SELECT (deliveries, attempts, captures, events)::text FROM before), '(8,4,6,4)', 'the outbox before maintain()');

SELECT is(pg_temp.maintained(), '(4,4,2,f,f)',
          'maintain() removes the 4 finished deliveries, their 4 attempts and the 2 captures only they needed');
SELECT is((SELECT array_agg(status ORDER BY id) FROM webhooks.deliveries), ARRAY['leased', 'pending', 'pending', 'pending'],
          'the pending replay, the leased and the paused deliveries stay');
SELECT ok(EXISTS (SELECT 1 FROM webhooks.deliveries WHERE id = (SELECT id FROM replay)), 'the replay stays');
SELECT is((SELECT count(*)::int FROM webhooks.captures c WHERE EXISTS (SELECT 1 FROM webhooks.deliveries d WHERE d.capture_id = c.id)),
          3, 'every capture a delivery needs stays (the replayed one, the leased one, the paused multi-row one)');
SELECT is((SELECT coalesce(sum(cardinality(e.records)), 0)::int FROM webhooks.events e), 2, 'with the events of the paused multi-row capture');
SELECT is((SELECT count(*)::int FROM webhooks.captures c WHERE NOT EXISTS (SELECT 1 FROM webhooks.deliveries d WHERE d.capture_id = c.id)),
          1, 'a capture not yet given to its webhook stays (a one-row change on its route: 0.7.0)');
SELECT is((SELECT array_agg(id ORDER BY id) FROM webhooks.deliveries WHERE status = 'leased'),
          (SELECT array_agg(id) FROM leased), 'the lease is untouched');
SELECT is(pg_temp.maintained(), '(0,0,0,f,f)', 'a second call finds nothing left');

-- Recent work waits for the retention ------------------------------------------------------------
SELECT webhooks.resume_webhook((SELECT id FROM h));
UPDATE webhooks.deliveries SET next_attempt_at = now() - interval '1 second' WHERE status = 'leased';  -- the lease ran out
SELECT pg_temp.report(200);
SELECT is((SELECT count(*)::int FROM webhooks.deliveries WHERE status IN ('delivered', 'failed')), 5,
          'everything is finished now (the expired lease had no attempt left: failed)');
SELECT is(pg_temp.maintained(), '(0,0,0,f,f)', 'finished just now: kept for the retention');
SELECT is(webhooks.set_retention('0'), interval '0', 'set_retention returns the setting');
SELECT is(webhooks.retention(), interval '0', 'and keeps it');
-- now() is the transaction's start, so "before now() - 0" still excludes what finished in it.
UPDATE webhooks.deliveries SET created_at = created_at - interval '1 second', completed_at = completed_at - interval '1 second';
UPDATE webhooks.captures SET occurred_at = occurred_at - interval '1 second';
SELECT is(pg_temp.maintained(), '(5,5,4,f,f)', 'with retention 0, everything finished goes, with its captures');
SELECT is((SELECT coalesce(sum(cardinality(e.records)), 0)::int FROM webhooks.events e), 0, 'and their events');

-- Batches under a budget ------------------------------------------------------------------------------
INSERT INTO public.t SELECT g FROM generate_series(100, 104) g;
INSERT INTO public.t VALUES (200);
INSERT INTO public.t VALUES (201);
SELECT pg_temp.report(200);
UPDATE webhooks.deliveries SET created_at = created_at - interval '1 second', completed_at = completed_at - interval '1 second';
UPDATE webhooks.captures SET occurred_at = occurred_at - interval '1 second';
-- A budget of 1 ms with batches of one row: each call takes at least one batch, and says when more remains.
CREATE TEMP TABLE calls (i int, deliveries bigint, captures bigint, more boolean);
DO $$
DECLARE
    m record;
BEGIN
    FOR i IN 1..100 LOOP
        SELECT * INTO m FROM webhooks.maintain('1 millisecond', 1);
        INSERT INTO calls VALUES (i, m.deliveries, m.captures, m.more);
        EXIT WHEN NOT m.more;
    END LOOP;
END $$;
SELECT is((SELECT (sum(deliveries), sum(captures))::text FROM calls), '(7,3)',
          'small batches remove everything in the end: 7 deliveries, 3 captures');
SELECT is((SELECT more FROM calls ORDER BY i DESC LIMIT 1), false, 'and the last call says nothing more remains');


-- A long stretch of work to keep cannot starve what lies beyond it -----------------------------------
-- 5,000 old pending deliveries (a paused webhook's backlog) come before an old delivered one. Each
-- call goes on where the last one stopped, so tiny budgets still get through in the end.
SELECT webhooks.set_retention('7 days');
INSERT INTO webhooks.deliveries (capture_id, n, webhook_id, created_at, next_attempt_at)
SELECT -2, 1, (SELECT id FROM h), now() - interval '30 days', now() + interval '1 day'
FROM generate_series(1, 5000);
INSERT INTO webhooks.deliveries (capture_id, n, webhook_id, status, attempts, created_at, completed_at)
VALUES (-1, 1, (SELECT id FROM h), 'delivered', 1, now() - interval '30 days', now() - interval '30 days');
TRUNCATE calls;
DO $$
DECLARE
    m record;
BEGIN
    FOR i IN 1..2000 LOOP
        SELECT * INTO m FROM webhooks.maintain('1 millisecond', 10);
        INSERT INTO calls VALUES (i, m.deliveries, m.captures, m.more);
        EXIT WHEN NOT m.more;
    END LOOP;
END $$;
SELECT is((SELECT more FROM calls ORDER BY i DESC LIMIT 1), false, 'the pass ends');
SELECT is((SELECT count(*)::int FROM webhooks.deliveries WHERE capture_id = -1), 0,
          'the old delivered delivery behind the backlog is removed');
SELECT is((SELECT count(*)::int FROM webhooks.deliveries WHERE status = 'pending'), 5000, 'the backlog stays, all of it');

SELECT * FROM finish();
ROLLBACK;
