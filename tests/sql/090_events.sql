-- 090: application events and receiver compatibility: event types, publish(),
-- subscriptions by type, profiles, retry schedules, send_test shapes, TRUNCATE, HTTPS-only, and
-- every bad input of them.
BEGIN;
SELECT plan(73);

CREATE TABLE public.orders (id int PRIMARY KEY, total numeric);
CREATE FUNCTION pg_temp.claimed() RETURNS TABLE (webhook_id uuid, p jsonb, body text, headers jsonb) LANGUAGE sql AS $$
    SELECT c.webhook_id, c.body::jsonb, c.body, c.headers FROM webhooks.claim(1000) c ORDER BY c.delivery_id
$$;

-- event types -------------------------------------------------------------------------------------
SELECT is((SELECT name FROM webhooks.create_event_type('order.completed', 'paid', '{"id": 1}')), 'order.completed',
          'create_event_type returns the type');
SELECT lives_ok($$SELECT webhooks.create_event_type('order.created')$$, 'description and example are optional');
SELECT lives_ok($$SELECT webhooks.create_event_type('user.signup')$$, 'another family');
SELECT throws_ok($$SELECT webhooks.create_event_type('order.completed')$$, 'WH002',
                 'name: event type ''order.completed'' already exists', 'duplicate type');
SELECT throws_ok($$SELECT webhooks.create_event_type('Order.Completed')$$, 'WH020', NULL, 'upper case refused');
SELECT throws_ok($$SELECT webhooks.create_event_type('completed')$$, 'WH020', NULL, 'a name needs a dot');
SELECT throws_ok($$SELECT webhooks.create_event_type('order..x')$$, 'WH020', NULL, 'empty segment refused');
SELECT throws_ok($$SELECT webhooks.create_event_type('order.*')$$, 'WH020', NULL, 'a pattern is not a name');
SELECT throws_ok($$SELECT webhooks.create_event_type(NULL)$$, 'WH020', NULL, 'null name');
SELECT throws_ok($$SELECT webhooks.create_event_type('a.' || repeat('b', 200))$$, 'WH020', NULL, 'too long');
SELECT is((SELECT array_agg(name ORDER BY name) FROM webhooks.list_event_types()),
          ARRAY['order.completed', 'order.created', 'pgwebhooks.delivery.exhausted', 'pgwebhooks.webhook.disabled',
                'pgwebhooks.webhook.failing', 'pgwebhooks.webhook.paused', 'pgwebhooks.webhook.recovered', 'user.signup'],
          'list_event_types lists them in order (the alert types are declared by the install)');

-- subscriptions by event type -------------------------------------------------------------------
CREATE TEMP TABLE hooks AS
SELECT 'exact' AS k, id FROM webhooks.create_webhook('exact', 'https://e.com/1', '[{"event_type": "order.completed"}]')
UNION ALL
SELECT 'prefix', id FROM webhooks.create_webhook('prefix', 'https://e.com/2', '[{"event_type": "order.*"}]')
UNION ALL
SELECT 'all', id FROM webhooks.create_webhook('all', 'https://e.com/3', '[{"event_type": "*"}, {"table": "orders"}]')
UNION ALL
SELECT 'typed', id FROM webhooks.create_webhook('typed', 'https://e.com/4',
    '[{"table": "orders", "operations": ["INSERT", "TRUNCATE"], "event_type": "order.created"}]');
CREATE FUNCTION pg_temp.hook(name text) RETURNS uuid LANGUAGE sql AS $$ SELECT id FROM hooks WHERE k = name $$;
SELECT is((SELECT events FROM webhooks.get_webhook(pg_temp.hook('all'))),
          '[{"table": "public.orders", "operations": ["INSERT", "UPDATE", "DELETE"]}, {"event_type": "*"}]'::jsonb,
          'a webhook shows its table and event type subscriptions');
SELECT is((SELECT events FROM webhooks.get_webhook(pg_temp.hook('typed'))),
          '[{"table": "public.orders", "event_type": "order.created", "operations": ["INSERT", "TRUNCATE"]}]'::jsonb,
          'and the type a table''s changes are sent as');
SELECT is((SELECT subscribers FROM webhooks.list_event_types() WHERE name = 'order.created'), 3,
          'order.created reaches prefix, all and typed');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://e.com', '[{"event_type": "order.unknown"}]')$$,
                 'WH021', 'events[0].event_type: event type ''order.unknown'' is not declared', 'undeclared exact type');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://e.com', '[{"event_type": "order*"}]')$$,
                 'WH020', NULL, 'bad pattern order*');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://e.com', '[{"event_type": "*.completed"}]')$$,
                 'WH020', NULL, 'bad pattern *.completed');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://e.com', '[{"event_type": 7}]')$$,
                 'WH020', NULL, 'event_type not a string');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://e.com', '[{"event_type": "*"}, {"event_type": "*"}]')$$,
                 'WH004', NULL, 'a pattern listed twice');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://e.com', '[{"event_type": "*", "operations": ["INSERT"]}]')$$,
                 'WH004', NULL, 'operations on an event type entry');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://e.com', '[{"table": "orders", "event_type": "order.nope"}]')$$,
                 'WH021', NULL, 'a table entry''s type must be declared');

-- publish ---------------------------------------------------------------------------------------
CREATE TEMP TABLE ev AS SELECT webhooks.publish('order.completed', '{"b": [1, 2], "a": {"x": null}}') AS id;
CREATE TEMP TABLE got AS SELECT * FROM pg_temp.claimed();
SELECT is((SELECT array_agg(k ORDER BY k) FROM got JOIN hooks ON hooks.id = got.webhook_id),
          ARRAY['all', 'exact', 'prefix'], 'an event reaches exact, prefix and * subscribers, not others');
SELECT is((SELECT DISTINCT p ->> 'id' FROM got), (SELECT id::text FROM ev), 'publish returns the event id');
SELECT is((SELECT DISTINCT headers ->> 'webhook-id' FROM got), (SELECT id::text FROM ev), 'which is the webhook-id');
SELECT is((SELECT body FROM got WHERE webhook_id = pg_temp.hook('exact')),
          format('{"id":"%s","type":"order.completed","timestamp":"%s","data":{"a":{"x":null},"b":[1,2]},"webhook_id":"%s"}',
                 (SELECT id FROM ev), (SELECT p ->> 'timestamp' FROM got LIMIT 1), pg_temp.hook('exact')),
          'the envelope, compact, keys in the documented order');
SELECT matches((SELECT p ->> 'timestamp' FROM got LIMIT 1), '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$', 'ISO 8601 UTC, ms');
SELECT is((SELECT count(*)::int FROM pg_temp.claimed()), 0, 'nothing else to claim');
SELECT throws_ok($$SELECT webhooks.publish('order.unknown', '{}')$$, 'WH021', NULL, 'publishing an undeclared type');
SELECT throws_ok($$SELECT webhooks.publish('BAD', '{}')$$, 'WH020', NULL, 'publishing a malformed type');
SELECT throws_ok($$SELECT webhooks.publish('order.completed', NULL)$$, 'WH013', NULL, 'SQL NULL data');
SAVEPOINT s;
SELECT webhooks.publish('order.created', '"rolled back"');
ROLLBACK TO SAVEPOINT s;
SELECT is((SELECT count(*)::int FROM pg_temp.claimed()), 0, 'a rolled-back publish sends nothing');
SELECT lives_ok($$SELECT webhooks.publish('user.signup', '[1]')$$, 'an event nobody subscribes to is accepted');
SELECT is((SELECT count(*)::int FROM pg_temp.claimed()), 1, '...and reaches only the * subscriber');
SELECT throws_ok($$SELECT webhooks.delete_event_type('order.completed')$$, 'WH025', NULL, 'a type in use cannot be deleted');
SELECT throws_ok($$SELECT webhooks.delete_event_type('order.nope')$$, 'WH021', NULL, 'deleting an unknown type');
-- user.signup is reached only through the "*" subscription: still in use.
SELECT throws_ok($$SELECT webhooks.delete_event_type('user.signup')$$, 'WH025',
                 $m$name: event type 'user.signup' is used by webhook 'all', which subscribes to '*'$m$,
                 'a type reached by a wildcard subscription cannot be deleted');
-- publish() reads each type's subscribers from event_types.webhook_ids: kept current.
SELECT lives_ok($$SELECT webhooks.create_event_type('order.refunded')$$, 'a type declared after its subscribers');
SELECT is((SELECT webhook_ids FROM webhooks.event_types WHERE name = 'order.refunded'),
          (SELECT array_agg(id ORDER BY id) FROM hooks WHERE k IN ('prefix', 'all')), '...has them at once');
CREATE TEMP TABLE temp_hook AS SELECT id FROM webhooks.create_webhook('temp', 'https://e.com/t', '[{"event_type": "order.refunded"}]');
SELECT ok((SELECT (SELECT id FROM temp_hook) = ANY (webhook_ids) FROM webhooks.event_types WHERE name = 'order.refunded'),
          'a new subscriber joins the type');
SELECT webhooks.update_webhook((SELECT id FROM temp_hook), '{"events": [{"event_type": "user.*"}]}');
SELECT ok((SELECT NOT (SELECT id FROM temp_hook) = ANY (webhook_ids) FROM webhooks.event_types WHERE name = 'order.refunded'),
          'an unsubscribed webhook leaves the type');
SELECT webhooks.update_webhook((SELECT id FROM temp_hook), '{"events": [{"event_type": "*"}]}');
SELECT webhooks.delete_webhook((SELECT id FROM temp_hook));
SELECT is((SELECT webhook_ids FROM webhooks.event_types WHERE name = 'order.refunded'),
          (SELECT array_agg(id ORDER BY id) FROM hooks WHERE k IN ('prefix', 'all')), 'a deleted webhook leaves every type');
SELECT webhooks.publish('order.refunded', '{}');
SELECT is((SELECT count(*)::int FROM pg_temp.claimed()), 2, '...and receives nothing of what is published next');

-- table subscriptions with a type, and TRUNCATE ---------------------------------------------------
INSERT INTO public.orders VALUES (1, 10);
CREATE TEMP TABLE rows_got AS SELECT * FROM pg_temp.claimed();
SELECT is((SELECT p ->> 'type' FROM rows_got WHERE webhook_id = pg_temp.hook('typed')), 'order.created',
          'a typed table subscription sends its changes with that type');
SELECT ok((SELECT NOT p ? 'type' FROM rows_got WHERE webhook_id = pg_temp.hook('all')), 'an untyped one has no type');
TRUNCATE public.orders;
CREATE TEMP TABLE trunc AS SELECT * FROM pg_temp.claimed();
SELECT is((SELECT count(*)::int FROM trunc), 1, 'TRUNCATE: one event, to the webhook subscribed to it only');
SELECT is((SELECT p ->> 'event' FROM trunc), 'TRUNCATE', 'as a TRUNCATE event');
SELECT ok((SELECT p -> 'record' = 'null' AND p -> 'old_record' = 'null' FROM trunc), 'with no record');

-- profiles ----------------------------------------------------------------------------------------
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://e.com', '[{"table": "orders"}]', profile => 'stripe')$$,
                 'WH022', NULL, 'unknown profile');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://e.com', '[{"table": "orders"}]', profile => NULL)$$,
                 'WH022', NULL, 'null profile');
SELECT throws_ok($$SELECT webhooks.update_webhook(pg_temp.hook('all'), '{"profile": "nope"}')$$, 'WH022', NULL,
                 'update: unknown profile');
SELECT throws_ok($$SELECT webhooks.update_webhook(pg_temp.hook('all'), '{"profile": 3}')$$, 'WH012', NULL,
                 'update: profile not a string');
SELECT lives_ok($$SELECT webhooks.update_webhook(pg_temp.hook('all'), '{"profile": "supabase"}')$$, 'update: profile');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://e.com', '[{"table": "orders"}]',
                   headers => '{"X-Truss-Signature": "forged"}')$$, 'WH010', NULL, 'profile signature headers are reserved');

-- retry schedules ---------------------------------------------------------------------------------
CREATE TEMP TABLE sched AS SELECT id, max_retries FROM webhooks.create_webhook('sched', 'https://e.com/s',
    '[{"event_type": "order.created"}]', retry_schedule => '{1 minute,5 minutes,30 minutes}');
SELECT is((SELECT max_retries FROM sched), 3, 'a schedule sets the number of retries');
SELECT webhooks.publish('order.created', '{}');
CREATE TEMP TABLE sc AS SELECT c.* FROM webhooks.claim(1000) c WHERE c.webhook_id = (SELECT id FROM sched);
SELECT is((SELECT status FROM webhooks.complete((SELECT jsonb_agg(jsonb_build_object('delivery_id', delivery_id,
           'attempt', attempt, 'status_code', 500)) FROM sc))), 'pending', 'a failure is retried');
SELECT is((SELECT next_attempt_at - now() FROM webhooks.deliveries WHERE id = (SELECT delivery_id FROM sc)),
          interval '1 minute', 'after the schedule''s first delay, exactly');
SELECT is(webhooks._retry_delay(5, 2, 500, NULL, '{1 minute,5 minutes}'), interval '5 minutes', 'second delay');
SELECT is(webhooks._retry_delay(5, 9, 500, NULL, '{1 minute,5 minutes}'), interval '5 minutes', 'the last one repeats');
SELECT is(webhooks._retry_delay(5, 1, 429, 600, '{1 minute}'), interval '10 minutes', 'a longer Retry-After wins');
SELECT is(webhooks._retry_delay(5, 1, 429, 5, '{1 minute}'), interval '1 minute', 'a shorter one does not');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://e.com', '[{"table": "orders"}]', retry_schedule => '{}')$$,
                 'WH023', NULL, 'empty schedule');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://e.com', '[{"table": "orders"}]', retry_schedule => '{0 seconds}')$$,
                 'WH023', NULL, 'zero delay');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://e.com', '[{"table": "orders"}]', retry_schedule => '{2 days}')$$,
                 'WH023', NULL, 'delay above a day');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://e.com', '[{"table": "orders"}]', retry_schedule => '{1 minute,NULL}')$$,
                 'WH023', NULL, 'null delay');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM sched), '{"retry_schedule": ["soon"]}')$$,
                 'WH023', NULL, 'update: not an interval');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM sched), '{"retry_schedule": "1 minute"}')$$,
                 'WH023', NULL, 'update: not an array');
SELECT is((SELECT max_retries FROM webhooks.update_webhook((SELECT id FROM sched), '{"retry_schedule": ["1 second", "2 seconds"]}')),
          2, 'update: a new schedule sets the retries');

-- HTTPS only --------------------------------------------------------------------------------------
SELECT webhooks.create_webhook('plain', 'http://e.com/p', '[{"table": "orders"}]');
SELECT throws_ok($$SELECT webhooks.require_https()$$, 'WH024', NULL, 'cannot be turned on while an http:// webhook exists');
SELECT webhooks.delete_webhook((SELECT id FROM webhooks.webhooks WHERE name = 'plain'));
SELECT is(webhooks.require_https(), true, 'turned on');
SELECT throws_ok($$SELECT webhooks.create_webhook('p2', 'http://e.com/p', '[{"table": "orders"}]')$$, 'WH024', NULL,
                 'http:// refused');
SELECT throws_ok($$SELECT webhooks.update_webhook(pg_temp.hook('all'), '{"url": "http://e.com/x"}')$$, 'WH024', NULL,
                 'update to http:// refused');
SELECT lives_ok($$SELECT webhooks.create_webhook('p3', 'https://e.com/p', '[{"table": "orders"}]')$$, 'https:// accepted');
SELECT is(webhooks.require_https(false), false, 'turned off again');

SELECT * FROM finish();
ROLLBACK;
