-- 050: what the capture triggers record, observed through the payloads claim() hands out:
-- INSERT / UPDATE / DELETE images, fan-out to several webhooks (payload stored once), one webhook
-- on several tables, unsubscribed operations and disabled webhooks, bulk statements, schema
-- changes, tables without a primary key, key changes, and rolled-back writes.
BEGIN;
SELECT plan(57);

CREATE TABLE public.users (id int PRIMARY KEY, email text, score int);
CREATE TABLE public.orders (id int PRIMARY KEY, total numeric);
CREATE TABLE public.logs (line text, level int);                  -- no primary key
CREATE TABLE public.bulk (id int PRIMARY KEY, v text);
CREATE TYPE public.mood AS ENUM ('ok', 'meh');
CREATE TABLE public.moods (id int PRIMARY KEY, m public.mood);  -- images taken read-only
CREATE SCHEMA "Shop";
CREATE TABLE "Shop"."Line Items" ("Id" int PRIMARY KEY, qty int);

-- Everything due, claimed now, with the body parsed. Each call returns only what is new.
CREATE FUNCTION pg_temp.claimed() RETURNS TABLE (webhook_id uuid, p jsonb, body text) LANGUAGE sql AS $$
    SELECT c.webhook_id, c.body::jsonb, c.body FROM webhooks.claim(10000) c ORDER BY c.delivery_id
$$;
-- How many row images the outbox holds (single-row changes inline in captures, others in events,
-- up to 16 to an events row).
CREATE FUNCTION pg_temp.stored_images() RETURNS bigint LANGUAGE sql AS $$
    SELECT (SELECT coalesce(sum(coalesce(cardinality(e.records), 1)), 0) FROM webhooks.events e)::bigint
         + (SELECT count(*) FROM webhooks.captures c
            WHERE NOT EXISTS (SELECT 1 FROM webhooks.events e WHERE e.capture_id = c.id))
$$;

CREATE TEMP TABLE hooks AS SELECT 'all'::text AS k, id FROM webhooks.create_webhook('all', 'https://e.com/all',
    '[{"table": "users"}, {"table": "orders", "operations": ["INSERT"]}]');
INSERT INTO hooks SELECT 'ins', id FROM webhooks.create_webhook('ins', 'https://e.com/ins',
    '[{"table": "users", "operations": ["INSERT"]}]');
INSERT INTO hooks SELECT 'misc', id FROM webhooks.create_webhook('misc', 'https://e.com/misc',
    '[{"table": "logs"}, {"table": "\"Shop\".\"Line Items\""}, {"table": "moods"}]');
CREATE FUNCTION pg_temp.hook(name text) RETURNS uuid LANGUAGE sql AS $$ SELECT id FROM hooks WHERE k = name $$;

-- INSERT, seen by two webhooks --------------------------------------------------------------
INSERT INTO public.users VALUES (1, 'ada@example.com', 10);
CREATE TEMP TABLE c1 AS SELECT * FROM pg_temp.claimed();
SELECT is((SELECT count(*)::int FROM c1), 2, 'one INSERT, two subscribed webhooks: two deliveries');
SELECT is((SELECT array_agg(webhook_id ORDER BY webhook_id) FROM c1),
          (SELECT array_agg(id ORDER BY id) FROM hooks WHERE k IN ('all', 'ins')), 'one for each webhook');
SELECT is(pg_temp.stored_images(), 1::bigint, 'the row image is stored once');
SELECT is((SELECT count(DISTINCT p ->> 'id')::int FROM c1), 1, 'both payloads carry the same event id');
SELECT is((SELECT p -> 'record' FROM c1 LIMIT 1), '{"id": 1, "email": "ada@example.com", "score": 10}'::jsonb,
          'INSERT: record is the new row');
SELECT is((SELECT p -> 'old_record' FROM c1 LIMIT 1), 'null'::jsonb, 'INSERT: old_record is null');
SELECT is((SELECT (p ->> 'event', p ->> 'schema', p ->> 'table')::text FROM c1 LIMIT 1), '(INSERT,public,users)',
          'INSERT: event, schema and table');
SELECT is((SELECT (p ->> 'webhook_id')::uuid FROM c1 WHERE webhook_id = pg_temp.hook('ins')), pg_temp.hook('ins'),
          'webhook_id names the receiving webhook');
SELECT is((SELECT (body::json -> 'record')::text FROM c1 LIMIT 1), '{"id":1,"email":"ada@example.com","score":10}',
          'the record keeps the table''s column order');

-- UPDATE and DELETE, only subscribed operations ---------------------------------------------
UPDATE public.users SET score = 11 WHERE id = 1;
CREATE TEMP TABLE c2 AS SELECT * FROM pg_temp.claimed();
SELECT is((SELECT array_agg(webhook_id) FROM c2), ARRAY[pg_temp.hook('all')],
          'UPDATE goes to the webhook subscribed to UPDATE only');
SELECT is((SELECT (p ->> 'event', p -> 'record' ->> 'score', p -> 'old_record' ->> 'score')::text FROM c2),
          '(UPDATE,11,10)', 'UPDATE: record is the new row, old_record the previous one');
DELETE FROM public.users WHERE id = 1;
CREATE TEMP TABLE c3 AS SELECT * FROM pg_temp.claimed();
SELECT is((SELECT array_agg(webhook_id) FROM c3), ARRAY[pg_temp.hook('all')], 'DELETE goes to the webhook subscribed to DELETE only');
SELECT is((SELECT p -> 'record' FROM c3), '{"id": 1, "email": "ada@example.com", "score": 11}'::jsonb,
          'DELETE: record is the deleted row');
SELECT is((SELECT p -> 'old_record' FROM c3), (SELECT p -> 'record' FROM c3), 'DELETE: old_record repeats it');
SELECT is((SELECT count(*)::int FROM webhooks.captures WHERE operation = 'DELETE' AND old_record IS NOT NULL), 0,
          'DELETE: the deleted row is stored once, as record');
CREATE TEMP TABLE ids_before AS SELECT pg_sequence_last_value('webhooks.captures_id_seq') AS last_id;
UPDATE public.users SET score = 0 WHERE false;
DELETE FROM public.users WHERE id = 999;
INSERT INTO public.bulk SELECT g, 'x' FROM generate_series(1, 0) g;
UPDATE public.moods SET m = 'ok';
SELECT is((SELECT count(*)::int FROM pg_temp.claimed()), 0, 'statements that change no row send nothing');
SELECT is((SELECT count(*)::int FROM webhooks.captures WHERE operation IN ('UPDATE', 'DELETE')), 2,
          'and record nothing');
SELECT is(pg_sequence_last_value('webhooks.captures_id_seq'), (SELECT last_id FROM ids_before),
          'and spend no capture id (direct, bulk and read-only paths alike)');

-- One webhook on several tables --------------------------------------------------------------
INSERT INTO public.orders VALUES (7, 99.5);
INSERT INTO public.users VALUES (2, 'bob@example.com', 1);
CREATE TEMP TABLE c4 AS SELECT * FROM pg_temp.claimed() WHERE webhook_id = pg_temp.hook('all');
SELECT is((SELECT array_agg(p ->> 'table' ORDER BY p ->> 'table') FROM c4), ARRAY['orders', 'users'],
          'one webhook receives changes from both of its tables');
SELECT is((SELECT p -> 'record' FROM c4 WHERE p ->> 'table' = 'orders'), '{"id": 7, "total": 99.5}'::jsonb,
          'numeric values come through as JSON numbers');
UPDATE public.orders SET total = 1;
SELECT is((SELECT count(*)::int FROM pg_temp.claimed()), 0, 'orders UPDATE is not subscribed: nothing sent');

-- Quoted identifiers ----------------------------------------------------------------------------
INSERT INTO "Shop"."Line Items" VALUES (1, 3);
CREATE TEMP TABLE c5 AS SELECT * FROM pg_temp.claimed();
SELECT is((SELECT (p ->> 'schema', p ->> 'table')::text FROM c5), '(Shop,"Line Items")',
          'schema and table names are sent unquoted, case kept');
SELECT is((SELECT p -> 'record' FROM c5), '{"Id": 1, "qty": 3}'::jsonb, 'column names keep their case');

-- Disabled webhooks get no deliveries -------------------------------------------------------------
SELECT lives_ok($$SELECT webhooks.update_webhook(pg_temp.hook('ins'), '{"enabled": false}')$$, 'disable "ins"');
INSERT INTO public.users VALUES (3, 'cy@example.com', 0);
SELECT is((SELECT array_agg(webhook_id) FROM pg_temp.claimed()), ARRAY[pg_temp.hook('all')],
          'a disabled webhook gets no delivery, the other still does');
SELECT is((SELECT count(*)::int FROM webhooks.deliveries WHERE webhook_id = pg_temp.hook('ins')
           AND capture_id = (SELECT max(id) FROM webhooks.captures)), 0,
          'no delivery row is even created for it');
SELECT lives_ok($$SELECT webhooks.update_webhook(pg_temp.hook('ins'), '{"enabled": true}')$$, 're-enable "ins"');
INSERT INTO public.users VALUES (4, 'di@example.com', 0);
SELECT is((SELECT count(*)::int FROM pg_temp.claimed()), 2, 're-enabled: it receives new changes again');

-- Bulk statements: one capture, one image per row, however many webhooks ------------------------
CREATE TEMP TABLE bulk_hooks AS
SELECT id FROM webhooks.create_webhook('bulk1', 'https://e.com/b1', '[{"table": "bulk"}]')
UNION ALL SELECT id FROM webhooks.create_webhook('bulk2', 'https://e.com/b2', '[{"table": "bulk", "operations": ["INSERT"]}]');
CREATE TEMP TABLE images_before AS SELECT pg_temp.stored_images() AS n;
INSERT INTO public.bulk SELECT g, 'v' || g FROM generate_series(1, 1000) g;
SELECT is(pg_temp.stored_images() - (SELECT n FROM images_before), 1000::bigint,
          'INSERT ... SELECT of 1000 rows stores 1000 images, not 2000');
SELECT is((SELECT row_count FROM webhooks.captures WHERE table_name = 'bulk'), 1000, 'in a single capture');
-- claim() fans out about batch_size deliveries per call, so a huge capture never blocks it.
SELECT is((SELECT count(*)::int FROM webhooks.claim(100)), 100, 'claim(100) hands out 100 of them');
CREATE TEMP TABLE c6 AS SELECT * FROM pg_temp.claimed();
SELECT is((SELECT count(*)::int FROM c6) + 100, 2000, 'the rest comes with the next claim: 2000 deliveries in all');
SELECT is((SELECT count(*)::int FROM webhooks.deliveries WHERE webhook_id IN (SELECT id FROM bulk_hooks)), 2000,
          '1000 deliveries per webhook');
SELECT is((SELECT count(DISTINCT p -> 'record' ->> 'id')::int FROM c6 WHERE webhook_id = (SELECT id FROM webhooks.webhooks WHERE name = 'bulk1')),
          (SELECT count(*)::int FROM c6 WHERE webhook_id = (SELECT id FROM webhooks.webhooks WHERE name = 'bulk1')),
          'each row is its own event');
UPDATE public.bulk SET v = v || '!' WHERE id <= 10;
CREATE TEMP TABLE c7 AS SELECT * FROM pg_temp.claimed();
SELECT is((SELECT count(*)::int FROM c7), 10, 'a 10-row UPDATE: 10 deliveries to the UPDATE subscriber');
SELECT is((SELECT count(*)::int FROM c7 WHERE p -> 'record' ->> 'v' = (p -> 'old_record' ->> 'v') || '!'
           AND p -> 'record' -> 'id' = p -> 'old_record' -> 'id'), 10,
          'each paired with its own old row');

-- Chunks of 16 rows per events row (migration 0019) --------------------------------------------
UPDATE public.bulk SET v = 'w' || id WHERE id <= 40;
CREATE TEMP TABLE ch8 AS SELECT * FROM pg_temp.claimed() WHERE webhook_id = (SELECT id FROM webhooks.webhooks WHERE name = 'bulk1');
SELECT is((SELECT count(*)::int FROM ch8 WHERE p -> 'record' ->> 'v' = 'w' || (p -> 'record' ->> 'id')
           AND p -> 'old_record' -> 'id' = p -> 'record' -> 'id' AND p -> 'old_record' ->> 'v' <> p -> 'record' ->> 'v'), 40,
          'a 40-row UPDATE, in three chunks: each row with its own old row');
SELECT is((SELECT count(DISTINCT p -> 'record' ->> 'id')::int FROM ch8), 40, 'no row twice');
SELECT is((SELECT array_agg(cardinality(e.records) ORDER BY e.n) FROM webhooks.events e
           WHERE e.capture_id = (SELECT max(id) FROM webhooks.captures WHERE table_name = 'bulk')), ARRAY[16, 16, 8],
          'stored as three events rows of 16, 16 and 8');
UPDATE public.bulk SET id = CASE WHEN id = 50 THEN 10050 ELSE id END, v = v || '?' WHERE id BETWEEN 41 AND 60;
CREATE TEMP TABLE ch9 AS SELECT * FROM pg_temp.claimed() WHERE webhook_id = (SELECT id FROM webhooks.webhooks WHERE name = 'bulk1');
SELECT is((SELECT array_agg((p -> 'record' ->> 'id')::int) FROM ch9 WHERE p -> 'old_record' = 'null'::jsonb), ARRAY[10050],
          'in a chunk, the row whose key changed has no old row');
SELECT is((SELECT count(*)::int FROM ch9 WHERE p -> 'old_record' ->> 'v' || '?' = p -> 'record' ->> 'v'
           AND p -> 'old_record' -> 'id' = p -> 'record' -> 'id'), 19, 'the 19 others keep theirs');
DELETE FROM public.bulk WHERE id BETWEEN 61 AND 80;
SELECT is((SELECT array_agg((p -> 'record' ->> 'id')::int ORDER BY (p -> 'record' ->> 'id')::int) FROM pg_temp.claimed()
           WHERE webhook_id = (SELECT id FROM webhooks.webhooks WHERE name = 'bulk1')),
          (SELECT array_agg(g) FROM generate_series(61, 80) g), 'a 20-row DELETE: each deleted row once');
-- Rows stored one per events row (before 0.5.0, and by capture filters) are still read.
WITH c AS (
    INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count)
    VALUES ('INSERT', 'public.bulk'::regclass, 'public', 'bulk', ARRAY[(SELECT id FROM webhooks.webhooks WHERE name = 'bulk1')], 2)
    RETURNING id
)
INSERT INTO webhooks.events (capture_id, n, record) SELECT c.id, g, json_build_object('id', -g, 'v', 'old') FROM c, generate_series(1, 2) g;
SELECT is((SELECT array_agg((p -> 'record' ->> 'id')::int ORDER BY (p -> 'record' ->> 'id')::int) FROM pg_temp.claimed()
           WHERE webhook_id = (SELECT id FROM webhooks.webhooks WHERE name = 'bulk1')), ARRAY[-2, -1],
          'a capture stored one row per events row (before 0.5.0): each row its own image');

-- Schema changes are followed ---------------------------------------------------------------------
ALTER TABLE public.users ADD COLUMN plan text DEFAULT 'free';
INSERT INTO public.users (id, email, score) VALUES (5, 'ed@example.com', 0);
SELECT is((SELECT p -> 'record' FROM pg_temp.claimed() WHERE webhook_id = pg_temp.hook('all')),
          '{"id": 5, "email": "ed@example.com", "score": 0, "plan": "free"}'::jsonb, 'an added column appears');
ALTER TABLE public.users DROP COLUMN score;
ALTER TABLE public.users RENAME COLUMN email TO mail;
UPDATE public.users SET plan = 'pro' WHERE id = 5;
CREATE TEMP TABLE c8 AS SELECT * FROM pg_temp.claimed();
SELECT is((SELECT p -> 'record' FROM c8), '{"id": 5, "mail": "ed@example.com", "plan": "pro"}'::jsonb,
          'a dropped column disappears, a renamed one is renamed');
SELECT is((SELECT p -> 'old_record' FROM c8), '{"id": 5, "mail": "ed@example.com", "plan": "free"}'::jsonb,
          'old_record has the new shape too');
ALTER TABLE public.users RENAME TO members;
INSERT INTO public.members VALUES (6, 'fa@example.com', 'free');
SELECT is((SELECT array_agg(p ->> 'table') FROM pg_temp.claimed()), ARRAY['members', 'members'],
          'a renamed table keeps being captured, under its new name');

-- A table without a primary key (row-level UPDATE capture) -----------------------------------------
INSERT INTO public.logs VALUES ('a', 1), ('b', 2);
UPDATE public.logs SET level = level * 10;
CREATE TEMP TABLE c9 AS SELECT * FROM pg_temp.claimed() WHERE p ->> 'event' = 'UPDATE';
SELECT is((SELECT count(*)::int FROM c9), 2, 'UPDATE of 2 rows without a primary key: 2 events');
SELECT is((SELECT array_agg((p -> 'old_record' ->> 'level') || '->' || (p -> 'record' ->> 'level') ORDER BY p -> 'record' ->> 'line') FROM c9),
          ARRAY['1->10', '2->20'], 'each with its own old_record');

-- Primary key changes ---------------------------------------------------------------------------
UPDATE public.orders SET id = 8 WHERE id = 7;  -- orders: INSERT only, so this sends nothing
UPDATE public.members SET id = 60 WHERE id = 6;
CREATE TEMP TABLE c10 AS SELECT * FROM pg_temp.claimed();
SELECT is((SELECT (p -> 'record' ->> 'id', p -> 'old_record' ->> 'id')::text FROM c10), '(60,6)',
          'a single-row UPDATE of the key is delivered with its old row');
UPDATE public.members SET id = id + 1000 WHERE id IN (2, 3);
CREATE TEMP TABLE c11 AS SELECT * FROM pg_temp.claimed();
SELECT is((SELECT array_agg(p -> 'record' ->> 'id' ORDER BY p -> 'record' ->> 'id') FROM c11), ARRAY['1002', '1003'],
          'a multi-row UPDATE of the key is still delivered');
SELECT is((SELECT count(*)::int FROM c11 WHERE p -> 'old_record' = 'null'::jsonb), 2,
          'with old_record null: the old rows cannot be paired');

-- Rolled-back writes send nothing --------------------------------------------------------------
CREATE TEMP TABLE counts_before AS SELECT (SELECT count(*) FROM webhooks.captures) AS captures,
                                          (SELECT count(*) FROM webhooks.events) AS events;
SAVEPOINT s;
INSERT INTO public.members VALUES (7, 'gu@example.com', 'free');
INSERT INTO public.bulk SELECT g, 'x' FROM generate_series(2001, 2100) g;
UPDATE public.logs SET level = 0;
ROLLBACK TO SAVEPOINT s;
SELECT is((SELECT count(*) FROM webhooks.captures), (SELECT captures FROM counts_before), 'rolled back: no capture survives');
SELECT is((SELECT count(*) FROM webhooks.events), (SELECT events FROM counts_before), 'rolled back: no event survives');
SELECT is((SELECT count(*)::int FROM pg_temp.claimed()), 0, 'rolled back: nothing to claim');
SAVEPOINT t;
INSERT INTO public.members VALUES (8, 'ha@example.com', 'free');
RELEASE SAVEPOINT t;
SELECT is((SELECT count(*)::int FROM pg_temp.claimed()), 2, 'a released savepoint''s write is sent');

-- TRUNCATE is captured only where subscribed by name ------------------------------------------------
TRUNCATE public.logs;
SELECT is((SELECT count(*)::int FROM pg_temp.claimed()), 0, 'TRUNCATE of a table not subscribed to it sends nothing');

SELECT * FROM finish();
ROLLBACK;
