-- 099: capture filters routed by value on one column (tenant_id = N): a one-row statement takes a
-- path whose plan is kept for the session (webhooks._routed_row). Which triggers take it, that it
-- routes as the general query does, and that a route column dropped since still fails closed.
BEGIN;
SELECT plan(17);

CREATE TABLE public.tenant_rows (id int PRIMARY KEY, tenant_id int, region text, at timestamptz);

CREATE FUNCTION pg_temp.hook(hook_name text) RETURNS uuid LANGUAGE sql AS $$
    SELECT id FROM webhooks.webhooks WHERE name = hook_name
$$;
-- Fan out everything captured and say which rows (and operations) each webhook got.
CREATE FUNCTION pg_temp.got(hook_name text) RETURNS text LANGUAGE sql AS $$
    SELECT webhooks._fan_out(10000);
    SELECT coalesce(string_agg(c.operation || ':' || (coalesce(e.record, c.record) ->> 'id'), ',' ORDER BY d.id), '')
    FROM webhooks.deliveries d
    JOIN webhooks.captures c ON c.id = d.capture_id
    LEFT JOIN webhooks.events e ON e.capture_id = d.capture_id AND e.n = d.n
    WHERE d.webhook_id = pg_temp.hook(hook_name)
$$;
-- The same for UPDATEs: "id:whether the old row came too".
CREATE FUNCTION pg_temp.got_old(hook_name text) RETURNS text LANGUAGE sql AS $$
    SELECT webhooks._fan_out(10000);
    SELECT coalesce(string_agg((coalesce(e.record, c.record) ->> 'id') || ':' || (coalesce(e.old_record, c.old_record) IS NOT NULL),
                               ',' ORDER BY d.id), '')
    FROM webhooks.deliveries d
    JOIN webhooks.captures c ON c.id = d.capture_id
    LEFT JOIN webhooks.events e ON e.capture_id = d.capture_id AND e.n = d.n
    WHERE d.webhook_id = pg_temp.hook(hook_name) AND c.operation = 'UPDATE'
$$;
CREATE FUNCTION pg_temp.reset() RETURNS void LANGUAGE sql AS $$
    DELETE FROM webhooks.deliveries; DELETE FROM webhooks.events; DELETE FROM webhooks.captures;
$$;
CREATE FUNCTION pg_temp.route_arg(op text) RETURNS text LANGUAGE sql AS $$
    SELECT CASE WHEN t.tgnargs = 3 THEN split_part(encode(t.tgargs, 'escape'), '\000', 3) END
    FROM pg_trigger t WHERE t.tgrelid = 'public.tenant_rows'::regclass AND t.tgname = 'webhooks_capture_' || op
$$;

DO $$
BEGIN
    PERFORM webhooks.create_webhook('t1', 'https://r.example/t1', '[{"table": "tenant_rows", "where": "tenant_id = 1"}]');
    PERFORM webhooks.create_webhook('t2', 'https://r.example/t2', '[{"table": "tenant_rows", "where": "tenant_id = 2"}]');
    PERFORM webhooks.create_webhook('every', 'https://r.example/every', '[{"table": "tenant_rows"}]');
END $$;
SELECT is(pg_temp.route_arg('insert') || ',' || pg_temp.route_arg('update') || ',' || pg_temp.route_arg('delete'),
          'tenant_id,tenant_id,tenant_id', 'every operation''s trigger routes by the one column');

INSERT INTO tenant_rows VALUES (1, 1, 'eu', now()), (2, 2, 'us', now()), (3, 3, 'eu', now()), (4, NULL, NULL, NULL);
INSERT INTO tenant_rows VALUES (5, 2, 'us', now());
DELETE FROM tenant_rows WHERE id IN (1, 3);
SELECT is(pg_temp.got('t1'), 'INSERT:1,DELETE:1', 'tenant 1 gets its rows, inserted and deleted');
SELECT is(pg_temp.got('t2'), 'INSERT:2,INSERT:5', 'tenant 2 its own, from a multi-row and a one-row statement');
SELECT is(pg_temp.got('every'), 'INSERT:1,INSERT:2,INSERT:3,INSERT:4,INSERT:5,DELETE:1,DELETE:3',
          'a webhook without a filter gets every row');
DELETE FROM tenant_rows WHERE id = 4;
-- A one-row UPDATE within a tenant carries its old row; one moving a row to another tenant goes to
-- that tenant without the old row (which did not pass its filter).
SELECT pg_temp.reset();
UPDATE tenant_rows SET region = 'ap' WHERE id = 2;
UPDATE tenant_rows SET tenant_id = 1 WHERE id = 5;
SELECT is(pg_temp.got_old('t2'), '2:true', 'tenant 2: its row''s UPDATE, with the old row');
SELECT is(pg_temp.got_old('t1'), '5:false', 'tenant 1: the row moved into it, without the old row');
SELECT is(pg_temp.got_old('every'), '2:true,5:true', 'the unfiltered webhook: both, with their old rows');
SELECT pg_temp.reset();
UPDATE tenant_rows SET region = 'eu' WHERE id IN (2, 5);
SELECT is(pg_temp.got_old('t1') || '|' || pg_temp.got_old('t2'), '5:true|2:true',
          'a multi-row UPDATE (the general query, paired by key) routes alike');
SELECT pg_temp.reset();

-- Not the one-column route path: a column whose text differs in JSON, or two route columns.
DO $$ BEGIN PERFORM webhooks.create_webhook('when', 'https://r.example/when',
    '[{"table": "tenant_rows", "operations": ["INSERT"], "where": "at = ''2026-01-01 00:00+00''"}]'); END $$;
SELECT is(pg_temp.route_arg('insert'), NULL, 'a timestamp route column takes the general query');
SELECT is(pg_temp.route_arg('delete'), 'tenant_id', 'the other operations keep their route');
DO $$ BEGIN PERFORM webhooks.delete_webhook(pg_temp.hook('when'));
            PERFORM webhooks.create_webhook('eu', 'https://r.example/eu', '[{"table": "tenant_rows", "where": "region = ''eu''"}]'); END $$;
SELECT is(pg_temp.route_arg('insert'), NULL, 'routes on two columns take the general query');
INSERT INTO tenant_rows VALUES (6, 1, 'eu', now());
SELECT is(pg_temp.got('t1') || '|' || pg_temp.got('eu'), 'INSERT:6|INSERT:6', 'and route alike');
DO $$ BEGIN PERFORM webhooks.delete_webhook(pg_temp.hook('eu')); END $$;
SELECT is(pg_temp.route_arg('insert'), 'tenant_id', 'one route column again: the route path again');

-- The route column given a type whose JSON text keeps what its text drops (char(n)'s padding)
-- since the trigger was made: the route path refuses it, and each webhook's filter is evaluated
-- alone instead: the row still reaches its tenant, nothing is held.
ALTER TABLE tenant_rows ALTER COLUMN tenant_id TYPE char(5);
INSERT INTO tenant_rows VALUES (8, '1', 'eu', now());
SELECT is(pg_temp.got('t1'), 'INSERT:6,INSERT:8', 'a char(5) tenant column still routes its row to its tenant');
SELECT is((SELECT count(*)::int FROM webhooks.held_rows), 0, 'and holds nothing');

-- The route column dropped: the write succeeds; the routed webhooks' rows are held, as for any
-- filter that fails; the unfiltered webhook still gets the row.
ALTER TABLE tenant_rows DROP COLUMN tenant_id;
INSERT INTO tenant_rows VALUES (7, 'eu', now());
SELECT is(pg_temp.got('every'), 'INSERT:6,INSERT:8,INSERT:7', 'the unfiltered webhook gets the row written after the drop');
SELECT is((SELECT string_agg(DISTINCT h.record ->> 'id', ',') FROM webhooks.held_rows h
           WHERE h.webhook_id IN (pg_temp.hook('t1'), pg_temp.hook('t2'))), '7', 'the routed webhooks'' row is held');

SELECT * FROM finish();
ROLLBACK;
