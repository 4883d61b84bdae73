-- 091: capture filters: columns, exclude_columns, where (validated with WH017 / WH018,
-- evaluated at capture, routed by value for equalities), key-changing UPDATEs, NULLs, dropped
-- columns (the filter fails closed: rows held for that webhook, never the write failed), functions
-- that are not built in refused.
BEGIN;
SELECT plan(30);

CREATE TABLE public.orders (id int PRIMARY KEY, tenant_id int, status text, total int, password_hash text,
                            note text);
CREATE TABLE public.parts (id int, k int) PARTITION BY RANGE (id);

CREATE FUNCTION pg_temp.hook(hook_name text) RETURNS uuid LANGUAGE sql AS $$
    SELECT id FROM webhooks.webhooks WHERE name = hook_name
$$;
-- Fan out everything captured and say which rows each webhook got, as "id" lists.
CREATE FUNCTION pg_temp.got(hook_name text) RETURNS text LANGUAGE sql AS $$
    SELECT webhooks._fan_out(10000);
    SELECT coalesce(string_agg(coalesce(e.record, c.record) ->> 'id', ',' ORDER BY d.id), '')
    FROM webhooks.deliveries d
    JOIN webhooks.captures c ON c.id = d.capture_id
    LEFT JOIN webhooks.events e ON e.capture_id = d.capture_id AND e.n = d.n
    WHERE d.webhook_id = pg_temp.hook(hook_name)
$$;
CREATE FUNCTION pg_temp.reset() RETURNS void LANGUAGE sql AS $$
    DELETE FROM webhooks.deliveries; DELETE FROM webhooks.events; DELETE FROM webhooks.captures;
$$;

-- Validation --------------------------------------------------------------------------------------
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://r.example/x', '[{"table": "orders", "columns": ["nope"]}]')$$,
                 'WH017', NULL, 'columns must name columns of the table');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://r.example/x', '[{"table": "orders", "exclude_columns": []}]')$$,
                 'WH017', NULL, 'exclude_columns must be a non-empty array');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://r.example/x', '[{"table": "orders", "where": "nope > 1"}]')$$,
                 'WH018', NULL, 'a where naming no column is refused when prepared');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://r.example/x', '[{"table": "orders", "where": "total + 1"}]')$$,
                 'WH018', NULL, 'a where that is not boolean is refused');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://r.example/x', '[{"table": "orders", "where": "true) AS keep, (true"}]')$$,
                 'WH018', NULL, 'a where closing its parenthesis early to add a column is refused');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://r.example/x', '[{"table": "orders", "where": "true; DROP TABLE orders"}]')$$,
                 'WH018', NULL, 'a second statement is refused');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://r.example/x', '[{"table": "orders", "where": "true --"}]')$$,
                 'WH018', NULL, 'a comment is refused');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://r.example/x', '[{"table": "parts", "where": "k = 1"}]')$$,
                 'WH018', NULL, 'filters on a partitioned table are refused');
SELECT throws_ok($$SELECT webhooks.create_webhook('x', 'https://r.example/x', '[{"table": "orders", "where": "note = '';--''"}]')$$,
                 'WH018', NULL, 'not even quoted text may hold ; or -- (one EXECUTE must be one statement)');
SELECT lives_ok($$SELECT webhooks.create_webhook('x', 'https://r.example/x', '[{"table": "orders", "where": "note = chr(59) AND (old).total IS NULL"}]')$$,
                'a semicolon is written chr(59); the old row is (old).column');
SELECT webhooks.delete_webhook(pg_temp.hook('x'));

-- Filters -----------------------------------------------------------------------------------------
DO $$
BEGIN
    PERFORM webhooks.create_webhook('all', 'https://r.example/all', '[{"table": "orders"}]');
    PERFORM webhooks.create_webhook('status', 'https://r.example/status',
        '[{"table": "orders", "operations": ["UPDATE"], "columns": ["status", "total"]}]');
    PERFORM webhooks.create_webhook('big', 'https://r.example/big',
        '[{"table": "orders", "where": "total > 100 AND status <> ''draft''"}]');
    PERFORM webhooks.create_webhook('t1', 'https://r.example/t1', '[{"table": "orders", "where": "tenant_id = 1"}]');
    PERFORM webhooks.create_webhook('t2', 'https://r.example/t2', '[{"table": "orders", "where": "tenant_id = 2"}]');
    PERFORM webhooks.create_webhook('secretless', 'https://r.example/s',
        '[{"table": "orders", "exclude_columns": ["password_hash"]}]');
END $$;
SELECT is((SELECT count(*)::int FROM webhooks.capture_routes), 6, 'tenant equalities are routes (3 operations each)');
SELECT is((SELECT events -> 0 ->> 'where' FROM webhooks.get_webhook(pg_temp.hook('big'))), 'total > 100 AND status <> ''draft''',
          'get_webhook shows the filter');

INSERT INTO orders VALUES (1, 1, 'new', 50, 'h1', NULL), (2, 2, 'new', 500, 'h2', NULL), (3, 3, 'draft', 900, 'h3', NULL),
                          (4, NULL, NULL, NULL, 'h4', NULL);
SELECT is(pg_temp.got('all'), '1,2,3,4', 'unfiltered: every row');
SELECT is(pg_temp.got('big'), '2', 'where: only rows matching (NULLs do not match)');
SELECT is(pg_temp.got('t1') || '|' || pg_temp.got('t2'), '1|2', 'routed by tenant');
SELECT is(pg_temp.got('status'), '', 'columns: INSERT not subscribed');
SELECT pg_temp.reset();

UPDATE orders SET note = 'x' WHERE id = 1;
SELECT is(pg_temp.got('status'), '', 'columns: an UPDATE of another column is not sent');
UPDATE orders SET note = 'y', status = 'paid' WHERE id IN (1, 2);
SELECT is(pg_temp.got('status'), '1,2', 'columns: an UPDATE changing one of them is sent (multi-row, paired by key)');
UPDATE orders SET total = NULL WHERE id = 4;
SELECT is(pg_temp.got('status'), '1,2', 'a change from NULL to NULL is no change');
UPDATE orders SET total = 7 WHERE id = 4;
SELECT is(pg_temp.got('status'), '1,2,4', 'NULL to a value is a change');
UPDATE orders SET id = id + 10 WHERE id IN (1, 2);
SELECT is(pg_temp.got('status'), '1,2,4,11,12', 'a key-changing UPDATE finds no old row: sent');
SELECT pg_temp.reset();

-- exclude_columns: stripped when the request is built
INSERT INTO orders VALUES (5, 1, 'new', 1, 'secret-hash', NULL);
CREATE TEMP TABLE bodies AS SELECT c.webhook_id, c.body::jsonb AS body FROM webhooks.claim(100) c;
SELECT is((SELECT string_agg(x, ',' ORDER BY x) FROM bodies b, jsonb_object_keys(b.body -> 'record') x
           WHERE b.webhook_id = pg_temp.hook('secretless')), 'id,note,status,tenant_id,total',
          'exclude_columns: never in the body');
SELECT is((SELECT b.body -> 'record' ->> 'password_hash' FROM bodies b WHERE b.webhook_id = pg_temp.hook('all')),
          'secret-hash', 'another webhook of the table still gets it');
SELECT pg_temp.reset();

-- A write rejected by every filter stores nothing.
DO $$ BEGIN PERFORM webhooks.delete_webhook(pg_temp.hook('all')); PERFORM webhooks.delete_webhook(pg_temp.hook('secretless')); END $$;
INSERT INTO orders VALUES (20, 9, 'draft', 1, 'h', NULL);
SELECT is((SELECT count(*)::int FROM webhooks.captures), 0, 'a row no webhook wants is not stored');

-- Dropped column: the filter fails closed for its webhook alone, the write succeeds.
ALTER TABLE orders DROP COLUMN status;
SELECT lives_ok($$INSERT INTO orders VALUES (21, 5, 1000, 'h', NULL)$$, 'a write after a filter''s column was dropped succeeds');
SELECT is(pg_temp.got('big'), '', 'the failing webhook gets nothing sent');
SELECT is((SELECT string_agg(record ->> 'id', ',') FROM webhooks.held_rows WHERE webhook_id = pg_temp.hook('big')), '21',
          'its row is held for it');
SELECT is((SELECT status || ': ' || error FROM webhooks.get_deliveries(pg_temp.hook('big'))),
          'held: column "status" does not exist', 'get_deliveries shows it held, with the error');
SELECT pg_temp.reset();

-- A filter is data: a function that is not built in is refused (it would have run as the definer).
CREATE TABLE public.loot (v text);
CREATE FUNCTION public.sneaky(int) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN INSERT INTO public.loot VALUES ('x'); RETURN true; END $f$;
SELECT throws_ok($$SELECT webhooks.create_webhook('sneak', 'https://r.example/sn', '[{"table": "orders", "where": "public.sneaky(id)"}]')$$,
                 'WH027', NULL, 'a where may not call a function that is not built in');
INSERT INTO orders VALUES (30, 5, 1, 'h', NULL);
SELECT is((SELECT count(*)::int FROM public.loot), 0, 'which never ran');

SELECT * FROM finish();
ROLLBACK;
