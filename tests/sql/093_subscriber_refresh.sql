-- 093: event_types.webhook_ids is maintained incrementally: a subscription change recomputes only
-- the types its patterns match (exact, order.*, *), and stays right through updates, deletes,
-- a deleted webhook's cascade, TRUNCATE and types declared afterwards.
BEGIN;
SELECT plan(16);

-- Many unrelated types: the work of one exact subscription must not grow with them.
SELECT webhooks.create_event_type(format('bulk%s.thing', g)) FROM generate_series(1, 300) g;
SELECT webhooks.create_event_type(n) FROM unnest(ARRAY['order.created', 'order.paid', 'order.item.added',
                                                      'invoice.sent', 'orderly.thing']) n;
CREATE TEMP TABLE hooks (k text PRIMARY KEY, id uuid);
CREATE FUNCTION pg_temp.subs(type text) RETURNS text[] LANGUAGE sql AS $$
    SELECT coalesce(array_agg(h.k ORDER BY h.k), '{}') FROM webhooks.event_types t
    JOIN hooks h ON h.id = ANY (t.webhook_ids) WHERE t.name = type
$$;
CREATE FUNCTION pg_temp.consistent() RETURNS boolean LANGUAGE sql AS $$
    SELECT bool_and(t.webhook_ids = webhooks._subscribers(t.name)) FROM webhooks.event_types t
$$;
CREATE FUNCTION pg_temp.scans() RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables
    WHERE relid = 'webhooks.event_subscriptions'::regclass
$$;

CREATE TEMP TABLE before AS SELECT pg_temp.scans() AS n;
INSERT INTO hooks SELECT 'a', id FROM webhooks.create_webhook('a', 'https://e.example/a', '[{"event_type": "order.created"}]');
SELECT cmp_ok(pg_temp.scans() - (SELECT n FROM before), '<', 20::bigint,
              'an exact subscription recomputes its own type, not the 305 declared (counted in scans of event_subscriptions)');
SELECT is(pg_temp.subs('order.created'), ARRAY['a'], 'exact: its type');
SELECT is(pg_temp.subs('order.paid'), '{}'::text[], 'exact: no other');

INSERT INTO hooks SELECT 'b', id FROM webhooks.create_webhook('b', 'https://e.example/b', '[{"event_type": "order.*"}]');
SELECT is(pg_temp.subs('order.created') || pg_temp.subs('order.paid') || pg_temp.subs('order.item.added'),
          ARRAY['a', 'b', 'b', 'b'], 'order.* reaches every order. type, nested ones too');
SELECT is(pg_temp.subs('orderly.thing') || pg_temp.subs('invoice.sent'), '{}'::text[],
          'and not orderly.thing (the dot is part of the prefix) nor another family');

INSERT INTO hooks SELECT 'c', id FROM webhooks.create_webhook('c', 'https://e.example/c', '[{"event_type": "*"}]');
SELECT is((SELECT count(*)::int FROM webhooks.event_types t WHERE (SELECT id FROM hooks WHERE k = 'c') = ANY (t.webhook_ids)),
          (SELECT count(*)::int FROM webhooks.event_types), '* reaches every type');

SELECT lives_ok($$SELECT * FROM webhooks.update_webhook((SELECT id FROM hooks WHERE k = 'b'), '{"events": [{"event_type": "invoice.*"}]}')$$,
                'b moves from order.* to invoice.*');
SELECT is(pg_temp.subs('order.paid'), ARRAY['c'], 'order.paid loses b');
SELECT is(pg_temp.subs('invoice.sent'), ARRAY['b', 'c'], 'invoice.sent gains it');

SELECT lives_ok($$SELECT webhooks.delete_webhook((SELECT id FROM hooks WHERE k = 'c'))$$, 'c (on *) is deleted');
SELECT is(pg_temp.subs('order.created') || pg_temp.subs('bulk7.thing'), ARRAY['a'], 'the cascade removes it everywhere');

UPDATE webhooks.event_subscriptions SET pattern = 'order.paid' WHERE webhook_id = (SELECT id FROM hooks WHERE k = 'a');
SELECT is(pg_temp.subs('order.created') || pg_temp.subs('order.paid'), ARRAY['a'],
          'an UPDATE of a pattern moves the webhook from the old type to the new one');

SELECT webhooks.create_event_type('invoice.paid');
SELECT is(pg_temp.subs('invoice.paid'), ARRAY['b'], 'a type declared later starts with its subscribers');

TRUNCATE webhooks.event_subscriptions;
SELECT is((SELECT count(*)::int FROM webhooks.event_types WHERE webhook_ids <> '{}'), 0, 'TRUNCATE empties every type');
INSERT INTO hooks SELECT 'd', id FROM webhooks.create_webhook('d', 'https://e.example/d',
    '[{"event_type": "invoice.sent"}, {"event_type": "order.*"}]');
SELECT is(pg_temp.subs('invoice.sent') || pg_temp.subs('order.item.added') || pg_temp.subs('invoice.paid'),
          ARRAY['d', 'd'], 'several patterns in one statement');
SELECT ok(pg_temp.consistent(), 'every type''s webhook_ids equals a full recompute');

SELECT * FROM finish();
ROLLBACK;
