-- 098: publish()'s fast path refuses exactly what the full checks refuse, as a publisher would try
-- to slip past it: data at the depth and size limits and one past them, built in the call or read
-- compressed from a table (where its stored size says nothing of its text), reserved and unknown
-- types, and a session flag set by hand. Ids are the ones claim() sends.
BEGIN;
SELECT plan(30);

SELECT lives_ok($$SELECT webhooks.create_event_type('order.created')$$, 'an event type');
CREATE TEMP TABLE hooks AS
SELECT id FROM webhooks.create_webhook('fast', 'https://e.com/fast', '[{"event_type": "order.created"}]');
-- What a publisher can store and hand over: a table of its own (values over 2 kB are compressed).
CREATE TEMP TABLE stash (k text PRIMARY KEY, d jsonb);
GRANT ALL ON stash TO webhooks_publisher;

-- Depth: 64 levels pass, 65 do not; the fast path's size bound (512 bytes) sits between them ------
SELECT is(ARRAY[pg_column_size((repeat('[', 64) || repeat(']', 64))::jsonb),
                pg_column_size((repeat('[', 65) || repeat(']', 65))::jsonb)], ARRAY[512, 520],
          '64 nested arrays take 512 bytes, 65 take 520');
SET LOCAL ROLE webhooks_publisher;
SELECT lives_ok($$SELECT webhooks.publish('order.created', (repeat('[', 64) || repeat(']', 64))::jsonb)$$,
                '64 levels of arrays pass');
SELECT throws_ok($$SELECT webhooks.publish('order.created', (repeat('[', 65) || repeat(']', 65))::jsonb)$$,
                 'WH030', NULL, '65 levels of arrays are WH030');
SELECT lives_ok($$SELECT webhooks.publish('order.created', (repeat('{"":', 63) || '[]' || repeat('}', 63))::jsonb)$$,
                '64 levels of objects pass');
SELECT throws_ok($$SELECT webhooks.publish('order.created', (repeat('{"":', 64) || '[]' || repeat('}', 64))::jsonb)$$,
                 'WH030', NULL, '65 levels of objects are WH030');
SELECT throws_ok($$SELECT webhooks.publish('order.created', (repeat('[', 65) || '1' || repeat(']', 65))::jsonb)$$,
                 'WH030', NULL, '65 levels around a scalar are WH030');

-- Depth, compressed: 65 levels padded past 2 kB compress to under 512 bytes ---------------------
INSERT INTO stash VALUES
    ('deep64', ('["' || repeat('b', 3000) || '",' || repeat('[', 63) || repeat(']', 63) || ']')::jsonb),
    ('deep65', ('["' || repeat('b', 3000) || '",' || repeat('[', 64) || repeat(']', 64) || ']')::jsonb);
SELECT ok((SELECT bool_and(pg_column_compression(d) IS NOT NULL AND pg_column_size(d) < 512) FROM stash
           WHERE k LIKE 'deep%'), 'stored compressed, under 512 bytes each');
SELECT lives_ok($$SELECT webhooks.publish('order.created', (SELECT d FROM stash WHERE k = 'deep64'))$$,
                'compressed, 64 levels pass');
SELECT throws_ok($$SELECT webhooks.publish('order.created', (SELECT d FROM stash WHERE k = 'deep65'))$$,
                 'WH030', NULL, 'compressed, 65 levels are WH030');

-- Size: 1 MiB of JSON text passes, one byte more does not ------------------------------------------
SELECT is(ARRAY[octet_length(to_jsonb(repeat('x', 1048574))::text), octet_length(to_jsonb(repeat('x', 1048575))::text)],
          ARRAY[1048576, 1048577], 'the two strings print as 1 MiB and 1 MiB + 1 byte');
SELECT lives_ok($$SELECT webhooks.publish('order.created', to_jsonb(repeat('x', 1048574)))$$, 'exactly 1 MiB passes');
SELECT throws_ok($$SELECT webhooks.publish('order.created', to_jsonb(repeat('x', 1048575)))$$,
                 'WH031', NULL, '1 MiB + 1 byte is WH031');
SELECT throws_ok($$SELECT webhooks.publish('order.created', to_jsonb(repeat(chr(1), 174763)))$$,
                 'WH031', NULL, 'so is a small jsonb whose text is over 1 MiB (control characters print as \u0001)');

-- Size, compressed: 2 MB of one letter is stored in 23 kB ---------------------------------------
INSERT INTO stash VALUES ('mib', to_jsonb(repeat('x', 1048574))), ('mib+1', to_jsonb(repeat('x', 1048575))),
                         ('2mb', jsonb_build_object('s', repeat('a', 2000000)));
SELECT ok((SELECT bool_and(pg_column_compression(d) IS NOT NULL AND pg_column_size(d) * 6 < 1048576) FROM stash
           WHERE k IN ('mib', 'mib+1', '2mb')), 'stored compressed, each under a sixth of 1 MiB');
SELECT lives_ok($$SELECT webhooks.publish('order.created', (SELECT d FROM stash WHERE k = 'mib'))$$,
                'compressed, exactly 1 MiB passes');
SELECT throws_ok($$SELECT webhooks.publish('order.created', (SELECT d FROM stash WHERE k = 'mib+1'))$$,
                 'WH031', NULL, 'compressed, 1 MiB + 1 byte is WH031');
SELECT throws_ok($$SELECT webhooks.publish('order.created', (SELECT d FROM stash WHERE k = '2mb'))$$,
                 'WH031', NULL, 'compressed, 2 MB is WH031');
RESET ROLE;
SELECT throws_ok($$SELECT webhooks.send_test((SELECT id FROM hooks), event_type => 'order.created',
                                             data => (SELECT d FROM stash WHERE k = '2mb'))$$,
                 'WH031', NULL, 'send_test: compressed, 2 MB is WH031');
SET LOCAL ROLE webhooks_publisher;

-- Types --------------------------------------------------------------------------------------------
SELECT throws_ok($$SELECT webhooks.publish('pgwebhooks.delivery.exhausted', '{}')$$, 'WH032', NULL,
                 'a reserved type is WH032');
SELECT throws_ok($$SELECT webhooks.publish('order.unknown', '{}')$$, 'WH021', NULL, 'an undeclared type is WH021');
SELECT throws_ok($$SELECT webhooks.publish('BAD', '{}')$$, 'WH020', NULL, 'a malformed type is WH020');
SELECT throws_ok($$SELECT webhooks.publish('order.created', NULL)$$, 'WH013', NULL, 'SQL NULL data is WH013');
SELECT throws_ok($$SELECT count(*) FROM webhooks.captures$$, '42501', NULL, 'a publisher reads no capture');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM webhooks.captures), 5, 'only the five accepted events were stored');

-- Ids: the first call of a session, the next ones, a flag set by hand, and the first calls in a
-- restored copy all name an event as claim() sends it ------------------------------------------
TRUNCATE webhooks.captures;
CREATE TEMP TABLE ids (n int, id uuid);
GRANT ALL ON ids TO webhooks_publisher;
CREATE TEMP TABLE got (n text, id text);
CREATE TEMP TABLE salts_before AS SELECT count(*)::int AS n FROM webhooks._salts;
SET LOCAL ROLE webhooks_publisher;
SET pgwebhooks.publish_salt = 'forged';
INSERT INTO ids SELECT 1, webhooks.publish('order.created', '{"n": 1}');
SELECT isnt(current_setting('pgwebhooks.publish_salt'), 'forged', 'a forged flag is replaced');
INSERT INTO ids SELECT 2, webhooks.publish('order.created', '{"n": 2}');
SET pgwebhooks.publish_salt = '';
INSERT INTO ids SELECT 3, webhooks.publish('order.created', '{"n": 3}');
RESET ROLE;
INSERT INTO got SELECT c.body::jsonb -> 'data' ->> 'n', c.headers ->> 'webhook-id' FROM webhooks.claim(100) c;
-- A restored copy (its identity changed), in a new session (no flag set): events not fanned out
-- yet are named under a new salt.
UPDATE webhooks._installation SET identity = 'a restored copy';
RESET pgwebhooks.identity_checked;
RESET pgwebhooks.publish_salt;
SET LOCAL ROLE webhooks_publisher;
INSERT INTO ids SELECT 4, webhooks.publish('order.created', '{"n": 4}');
INSERT INTO ids SELECT 5, webhooks.publish('order.created', '{"n": 5}');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM webhooks._salts), (SELECT n + 1 FROM salts_before), 'the copy started a new salt');
INSERT INTO got SELECT c.body::jsonb -> 'data' ->> 'n', c.headers ->> 'webhook-id' FROM webhooks.claim(100) c;
SELECT is((SELECT array_agg(id ORDER BY n) FROM ids),
          (SELECT array_agg(webhooks._event_uid(c.id, 1) ORDER BY c.id) FROM webhooks.captures c),
          'each id is its capture''s event id');
SELECT is((SELECT array_agg(id ORDER BY n) FROM got), (SELECT array_agg(id::text ORDER BY n) FROM ids),
          'and the webhook-id claim() sends');
SELECT is((SELECT max(first_capture_id) FROM webhooks._salts),
          (SELECT min(c.id) FROM webhooks.captures c WHERE c.data ->> 'n' = '4'),
          'the new salt names events 4 and 5; the three fanned out keep their names');

SELECT * FROM finish();
ROLLBACK;
