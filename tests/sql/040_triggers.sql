-- 040: capture triggers follow subscriptions. One webhooks_capture_<op> trigger per subscribed
-- operation, statement-level with transition tables (row-level UPDATE on a table without a
-- primary key), carrying the subscribed webhook ids; added and removed by create_webhook,
-- update_webhook and delete_webhook; other triggers on the table left alone.
BEGIN;
SELECT plan(42);

CREATE TABLE public.users (id serial PRIMARY KEY, email text);
CREATE TABLE public.logs (line text);                        -- no primary key
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, total numeric);
CREATE FUNCTION public.noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
CREATE TRIGGER users_own_trigger AFTER INSERT ON public.users FOR EACH ROW EXECUTE FUNCTION public.noop();

-- The webhook ids a capture trigger carries (its single argument).
CREATE FUNCTION pg_temp.trigger_hooks(rel regclass, name text) RETURNS uuid[] LANGUAGE sql AS $$
    -- The first argument; a statement trigger's second is its route (migration 0023).
    SELECT split_part(encode(tgargs, 'escape'), '\000', 1)::uuid[] FROM pg_trigger WHERE tgrelid = rel AND tgname = name
$$;
CREATE FUNCTION pg_temp.is_row_level(rel regclass, name text) RETURNS boolean LANGUAGE sql AS $$
    SELECT (tgtype & 1) = 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = name
$$;

-- create_webhook installs triggers for the subscribed operations only --------------------------
CREATE TEMP TABLE a AS SELECT id FROM webhooks.create_webhook('a', 'https://e.com/a',
    '[{"table": "users", "operations": ["INSERT", "UPDATE"]}]');
SELECT triggers_are('public', 'users', ARRAY['users_own_trigger', 'webhooks_capture_insert', 'webhooks_capture_update'],
    'INSERT and UPDATE subscribed: insert and update triggers, no delete trigger');
SELECT trigger_is('public', 'users', 'webhooks_capture_insert', 'webhooks', '_capture_table_' || 'public.users'::regclass::oid,
    'the insert trigger calls the table''s own copy of _capture_statement');
SELECT trigger_is('public', 'users', 'webhooks_capture_update', 'webhooks', '_capture_table_' || 'public.users'::regclass::oid,
    'with a primary key, the update trigger calls it too');
SELECT is(pg_temp.is_row_level('public.users', 'webhooks_capture_insert'), false, 'the insert trigger is statement-level');
SELECT is(pg_temp.is_row_level('public.users', 'webhooks_capture_update'), false, 'the update trigger is statement-level');
SELECT is((SELECT tgtype & (4 | 8 | 16) FROM pg_trigger WHERE tgrelid = 'public.users'::regclass AND tgname = 'webhooks_capture_insert')::int,
          4, 'the insert trigger fires on INSERT only');
SELECT is((SELECT tgtype & 2 FROM pg_trigger WHERE tgrelid = 'public.users'::regclass AND tgname = 'webhooks_capture_insert')::int,
          0, 'the insert trigger fires AFTER');
SELECT is((SELECT (tgoldtable, tgnewtable)::text FROM pg_trigger WHERE tgrelid = 'public.users'::regclass AND tgname = 'webhooks_capture_insert'),
          '(,new_rows)', 'the insert trigger has a NEW transition table');
SELECT is((SELECT (tgoldtable, tgnewtable)::text FROM pg_trigger WHERE tgrelid = 'public.users'::regclass AND tgname = 'webhooks_capture_update'),
          '(old_rows,new_rows)', 'the update trigger has OLD and NEW transition tables');
SELECT is(pg_temp.trigger_hooks('public.users', 'webhooks_capture_insert'), ARRAY[(SELECT id FROM a)],
          'the trigger carries the webhook id');
SELECT is((SELECT split_part(encode(tgargs, 'escape'), '\000', 2)::int FROM pg_trigger
           WHERE tgrelid = 'public.users'::regclass AND tgname = 'webhooks_capture_insert'),
          (SELECT route FROM webhooks.table_routes WHERE relid = 'public.users'::regclass AND operation = 'INSERT'),
          'and the route of the table''s one-row INSERTs');

-- Defaults: all three operations; a table in another schema --------------------------------------
CREATE TEMP TABLE b AS SELECT id FROM webhooks.create_webhook('b', 'https://e.com/b', '[{"table": "shop.orders"}]');
SELECT triggers_are('shop', 'orders', ARRAY['webhooks_capture_insert', 'webhooks_capture_update', 'webhooks_capture_delete'],
    'no operations given: all three triggers, on shop.orders');
SELECT is((SELECT (tgoldtable, tgnewtable)::text FROM pg_trigger WHERE tgrelid = 'shop.orders'::regclass AND tgname = 'webhooks_capture_delete'),
          '(old_rows,)', 'the delete trigger has an OLD transition table');
SELECT is((SELECT tgtype & (4 | 8 | 16) FROM pg_trigger WHERE tgrelid = 'shop.orders'::regclass AND tgname = 'webhooks_capture_delete')::int,
          8, 'the delete trigger fires on DELETE only');

-- A table without a primary key: row-level UPDATE trigger ---------------------------------------
CREATE TEMP TABLE c AS SELECT id FROM webhooks.create_webhook('c', 'https://e.com/c', '[{"table": "logs"}]');
SELECT triggers_are('public', 'logs', ARRAY['webhooks_capture_insert', 'webhooks_capture_update', 'webhooks_capture_delete'],
    'logs gets all three triggers');
SELECT is(pg_temp.is_row_level('public.logs', 'webhooks_capture_update'), true, 'without a primary key the UPDATE trigger is row-level');
SELECT trigger_is('public', 'logs', 'webhooks_capture_update', 'webhooks', '_capture_row', 'and calls _capture_row');
SELECT is(pg_temp.is_row_level('public.logs', 'webhooks_capture_insert'), false, 'INSERT stays statement-level');
SELECT is(pg_temp.is_row_level('public.logs', 'webhooks_capture_delete'), false, 'DELETE stays statement-level');

-- update_webhook changing events adds and removes triggers --------------------------------------
SELECT lives_ok($$SELECT webhooks.update_webhook((SELECT id FROM a), '{"events": [{"table": "users", "operations": ["DELETE"]}]}')$$,
    'update_webhook: users INSERT, UPDATE -> DELETE');
SELECT triggers_are('public', 'users', ARRAY['users_own_trigger', 'webhooks_capture_delete'],
    'the insert and update triggers are gone, a delete trigger is there, the table''s own trigger kept');
SELECT lives_ok($$SELECT webhooks.update_webhook((SELECT id FROM a),
                   '{"events": [{"table": "users", "operations": ["INSERT"]}, {"table": "shop.orders", "operations": ["UPDATE"]}]}')$$,
    'update_webhook: users INSERT plus shop.orders UPDATE');
SELECT triggers_are('public', 'users', ARRAY['users_own_trigger', 'webhooks_capture_insert'], 'users: insert trigger only');
SELECT is(pg_temp.trigger_hooks('shop.orders', 'webhooks_capture_update'),
          (SELECT array_agg(id ORDER BY id) FROM (SELECT id FROM a UNION ALL SELECT id FROM b) x),
          'shop.orders update trigger now carries both webhooks');
SELECT is(pg_temp.trigger_hooks('shop.orders', 'webhooks_capture_insert'), ARRAY[(SELECT id FROM b)],
          'shop.orders insert trigger still carries only b');
SELECT lives_ok($$SELECT webhooks.update_webhook((SELECT id FROM a), '{"events": [{"table": "logs", "operations": ["INSERT"]}]}')$$,
    'update_webhook: move a to logs');
SELECT hasnt_trigger('public', 'users', 'webhooks_capture_insert', 'users lost its last capture trigger');
SELECT has_trigger('public', 'users', 'users_own_trigger', 'the table''s own trigger survives');
SELECT is(pg_temp.trigger_hooks('shop.orders', 'webhooks_capture_update'), ARRAY[(SELECT id FROM b)],
          'shop.orders update trigger carries b alone again');
SELECT lives_ok($$SELECT webhooks.update_webhook((SELECT id FROM a), '{"url": "https://e.com/a2"}')$$,
    'update_webhook without events');
SELECT is(pg_temp.trigger_hooks('public.logs', 'webhooks_capture_insert'),
          (SELECT array_agg(id ORDER BY id) FROM (SELECT id FROM a UNION ALL SELECT id FROM c) x),
          'a change without events leaves subscriptions and triggers alone');
SELECT lives_ok($$SELECT webhooks.update_webhook((SELECT id FROM c), '{"enabled": false}')$$, 'disable c');
SELECT is(pg_temp.trigger_hooks('public.logs', 'webhooks_capture_insert'),
          (SELECT array_agg(id ORDER BY id) FROM (SELECT id FROM a UNION ALL SELECT id FROM c) x),
          'a disabled webhook keeps its triggers (enabled is decided at fan-out)');

-- Two webhooks on one table: the trigger lives until the last one goes ---------------------------
SELECT lives_ok($$SELECT webhooks.delete_webhook((SELECT id FROM c))$$, 'delete c');
SELECT is(pg_temp.trigger_hooks('public.logs', 'webhooks_capture_insert'), ARRAY[(SELECT id FROM a)],
          'logs insert trigger kept, carrying a alone');
SELECT triggers_are('public', 'logs', ARRAY['webhooks_capture_insert'],
    'the update and delete triggers only c wanted are gone');
SELECT lives_ok($$SELECT webhooks.delete_webhook((SELECT id FROM a))$$, 'delete a');
SELECT triggers_are('public', 'logs', ARRAY[]::name[], 'deleting the last webhook removes the trigger');

-- A renamed table is followed; a dropped one does not break delete_webhook -----------------------
ALTER TABLE shop.orders RENAME TO purchases;
SELECT is((SELECT events FROM webhooks.get_webhook((SELECT id FROM b))),
          '[{"table": "shop.purchases", "operations": ["INSERT", "UPDATE", "DELETE"]}]'::jsonb,
          'a renamed table shows under its new name');
DROP TABLE shop.purchases;
SELECT lives_ok($$SELECT webhooks.delete_webhook((SELECT id FROM b))$$, 'delete_webhook after its table was dropped');
SELECT is_empty($$SELECT 1 FROM webhooks.subscriptions$$, 'no subscription left');
SELECT is_empty($$SELECT 1 FROM pg_trigger WHERE tgname LIKE 'webhooks\_capture\_%'$$, 'no capture trigger left anywhere');

SELECT * FROM finish();
ROLLBACK;
