-- 098: publish()'s fast path refuses exactly what the full checks refuse, as a publisher would try
-- to slip past it: data at the depth and size limits and one past them, built in the call or read
-- compressed from a table (where its stored size says nothing of its text), reserved and unknown
-- types, and a session flag set by hand. Ids are the ones stored and claim() sends.
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

-- Ids: each event's id is drawn when it is published and stored with it; it is the webhook-id
-- claim() sends, whatever session flag a publisher sets, and a restored copy keeps it for the
-- events it inherited and draws new ones for its own ------------------------------------------
TRUNCATE webhooks.captures;
CREATE TEMP TABLE ids (n int, id uuid);
GRANT ALL ON ids TO webhooks_publisher;
CREATE TEMP TABLE got (n text, id text);
SET LOCAL ROLE webhooks_publisher;
SET pgwebhooks.publish_salt = 'forged';  -- what 0.5.2's publish() trusted once derived from the salt
INSERT INTO ids SELECT 1, webhooks.publish('order.created', '{"n": 1}');
INSERT INTO ids SELECT 2, webhooks.publish('order.created', '{"n": 2}');
INSERT INTO ids SELECT 3, webhooks.publish('order.created', jsonb_build_object('n', 3, 'pad', repeat('p', 600)));
SELECT throws_ok($$SELECT webhooks._check_publish('order.created', '{}')$$, '42501', NULL,
                 'a publisher cannot call publish()''s checked path itself');
RESET ROLE;
INSERT INTO got SELECT c.body::jsonb -> 'data' ->> 'n', c.headers ->> 'webhook-id' FROM webhooks.claim(100) c;
-- An event published but not fanned out when the database was copied; then the copy publishes.
SET LOCAL ROLE webhooks_publisher;
INSERT INTO ids SELECT 4, webhooks.publish('order.created', '{"n": 4}');
RESET ROLE;
UPDATE webhooks._installation SET identity = 'a restored copy';
RESET pgwebhooks.identity_checked;
SET LOCAL ROLE webhooks_publisher;
INSERT INTO ids SELECT 5, webhooks.publish('order.created', '{"n": 5}');
RESET ROLE;
INSERT INTO got SELECT c.body::jsonb -> 'data' ->> 'n', c.headers ->> 'webhook-id' FROM webhooks.claim(100) c;
SELECT is((SELECT array_agg(id ORDER BY n) FROM ids),
          (SELECT array_agg(c.published_id ORDER BY c.id) FROM webhooks.captures c),
          'each id is the one stored with its event');
SELECT is((SELECT array_agg(id ORDER BY n) FROM got), (SELECT array_agg(id::text ORDER BY n) FROM ids),
          'and the webhook-id claim() sends, before and after the copy noticed it moved');
SELECT is((SELECT count(DISTINCT id)::int FROM ids), 5, 'five events, five ids');
SELECT is((SELECT max(first_capture_id) FROM webhooks._salts),
          (SELECT min(c.id) FROM webhooks.captures c WHERE c.data ->> 'n' = '4'),
          'the copy still started a new salt for what was not fanned out (row changes take it)');

SELECT * FROM finish();
ROLLBACK;
