-- 092: every operation on a webhook needs the right its creation needed, as an attacker holding
-- webhooks_admin but not SELECT on the watched table would try it; test row changes need the
-- right to make that change; secret headers do not follow a URL change; credentials in the URL
-- cannot be combined with an Authorization header.
BEGIN;
SELECT plan(38);

CREATE TABLE public.payroll (id int PRIMARY KEY, salary int);
CREATE ROLE wh_owner IN ROLE webhooks_admin;      -- created the webhook: SELECT and INSERT
CREATE ROLE wh_outsider IN ROLE webhooks_admin;   -- an admin who may not read payroll
CREATE ROLE wh_neighbour IN ROLE webhooks_admin;  -- another admin who may read it
GRANT SELECT, INSERT ON public.payroll TO wh_owner;
GRANT SELECT ON public.payroll TO wh_neighbour;
CREATE TEMP TABLE ids (k text PRIMARY KEY, v text);
GRANT ALL ON ids TO PUBLIC;

SET ROLE wh_owner;
INSERT INTO ids SELECT 'hook', id::text FROM webhooks.create_webhook('payroll', 'https://owner.example/h',
    '[{"table": "public.payroll"}]', secret_headers => '{"X-Api-Key": "owner-key"}');
INSERT INTO ids SELECT 'delivery', webhooks.send_test((SELECT v::uuid FROM ids WHERE k = 'hook'))::text;
RESET ROLE;
CREATE FUNCTION pg_temp.hook() RETURNS uuid LANGUAGE sql AS $$ SELECT v::uuid FROM ids WHERE k = 'hook' $$;
CREATE FUNCTION pg_temp.delivery() RETURNS bigint LANGUAGE sql AS $$ SELECT v::bigint FROM ids WHERE k = 'delivery' $$;
GRANT EXECUTE ON FUNCTION pg_temp.hook(), pg_temp.delivery() TO PUBLIC;

-- The outsider: nothing on the webhook -------------------------------------------------------------
SET ROLE wh_outsider;
SELECT throws_ok($$SELECT * FROM webhooks.rotate_secret(pg_temp.hook())$$, 'WH014', NULL,
                 'an admin who may not read the table cannot rotate (and so learn) the webhook''s secret');
SELECT throws_ok($$SELECT webhooks.send_test(pg_temp.hook())$$, 'WH014', NULL, 'nor send a test through it');
SELECT throws_ok($$SELECT webhooks.replay(pg_temp.delivery())$$, 'WH014', NULL, 'nor replay its deliveries');
SELECT throws_ok($$SELECT webhooks.replay_failed(pg_temp.hook())$$, 'WH014', NULL, 'nor replay its failures');
SELECT throws_ok($$SELECT webhooks.pause_webhook(pg_temp.hook())$$, 'WH014', NULL, 'nor pause it');
SELECT throws_ok($$SELECT webhooks.resume_webhook(pg_temp.hook())$$, 'WH014', NULL, 'nor resume it');
SELECT throws_ok($$SELECT webhooks.delete_webhook(pg_temp.hook())$$, 'WH014', NULL, 'nor delete it');
SELECT throws_ok($$SELECT * FROM webhooks.update_webhook(pg_temp.hook(), '{"description": "x"}')$$, 'WH014', NULL,
                 'nor update it');
SELECT throws_ok($$SELECT * FROM webhooks.get_deliveries(pg_temp.hook())$$, 'WH014', NULL,
                 'nor read its delivery log (receivers'' answers may echo the rows)');
SELECT throws_ok($$SELECT * FROM webhooks.get_delivery_attempts(pg_temp.delivery())$$, 'WH014', NULL,
                 'nor the attempts of one delivery');
SELECT is((SELECT count(*)::int FROM webhooks.get_webhook(pg_temp.hook())), 1,
          'get_webhook still shows its settings (no secret, no row), like list_webhooks');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM webhooks.secrets WHERE webhook_id = pg_temp.hook()), 1,
          'no secret was added by the refused rotation');
SELECT is((SELECT count(*)::int FROM webhooks.deliveries WHERE webhook_id = pg_temp.hook()), 1,
          'no delivery was added by the refused test or replays');

-- The neighbour who may read the table: everything works -------------------------------------------
SET ROLE wh_neighbour;
SELECT is((SELECT count(*)::int FROM webhooks.rotate_secret(pg_temp.hook(), grace_period => '1 hour')), 1,
          'a neighbour admin who may read the table rotates the secret');
SELECT ok(webhooks.send_test(pg_temp.hook()) IS NOT NULL, 'sends a test');
SELECT ok(webhooks.replay(pg_temp.delivery()) IS NOT NULL, 'replays a delivery');
SELECT is(webhooks.replay_failed(pg_temp.hook()), 0, 'replays failures (none)');
SELECT lives_ok($$SELECT webhooks.pause_webhook(pg_temp.hook())$$, 'pauses');
SELECT lives_ok($$SELECT webhooks.resume_webhook(pg_temp.hook())$$, 'resumes');
SELECT is((SELECT count(*)::int FROM webhooks.get_deliveries(pg_temp.hook())), 3, 'reads the log');
SELECT is((SELECT count(*)::int FROM webhooks.get_delivery_attempts(pg_temp.delivery())), 0, 'and attempts');

-- Test row changes need the right to make them -----------------------------------------------------
SELECT throws_ok($$SELECT webhooks.send_test(pg_temp.hook(), 'INSERT', 'public.payroll', '{"id": 1, "salary": 1}')$$,
                 'WH035', NULL, 'a neighbour without INSERT cannot have the webhook sign a test INSERT of the table');
SELECT throws_ok($$SELECT webhooks.send_test(pg_temp.hook(), 'delete', 'payroll', '{"id": 1}')$$,
                 'WH035', NULL, 'nor a DELETE (lower case, unqualified name)');
RESET ROLE;
SET ROLE wh_owner;
SELECT ok(webhooks.send_test(pg_temp.hook(), 'INSERT', 'public.payroll', '{"id": 1, "salary": 1}') IS NOT NULL,
          'the owner, who may INSERT, can');
SELECT throws_ok($$SELECT webhooks.send_test(pg_temp.hook(), 'UPDATE', 'public.payroll', '{"id": 1}', '{"id": 1}')$$,
                 'WH035', NULL, 'but not a test UPDATE, which it may not do');
RESET ROLE;

-- Secret headers stay with their URL ----------------------------------------------------------------
SET ROLE wh_neighbour;
SELECT lives_ok($$SELECT * FROM webhooks.update_webhook(pg_temp.hook(), '{"description": "still here"}')$$,
                'another change');
RESET ROLE;
SELECT is((SELECT headers FROM webhooks.secret_headers WHERE webhook_id = pg_temp.hook()), '{"X-Api-Key": "owner-key"}',
          'keeps the secret headers');
SET ROLE wh_neighbour;
SELECT lives_ok($$SELECT * FROM webhooks.update_webhook(pg_temp.hook(), '{"url": "https://neighbour.example/mine"}')$$,
                'a neighbour admin points the webhook at an address of theirs');
RESET ROLE;
SELECT is((SELECT headers FROM webhooks.secret_headers WHERE webhook_id = pg_temp.hook()), '{}',
          'the secret headers given for the old URL are gone');
CREATE TEMP TABLE claimed AS SELECT * FROM webhooks.claim();
SELECT ok((SELECT count(*) FROM claimed WHERE url = 'https://neighbour.example/mine') > 0, 'deliveries go to the new URL');
SELECT is((SELECT count(*)::int FROM claimed WHERE headers ? 'X-Api-Key'), 0, 'without the old URL''s secret header');
SELECT lives_ok($$SELECT * FROM webhooks.update_webhook(pg_temp.hook(),
                    '{"url": "https://owner.example/h2", "secret_headers": {"X-Api-Key": "new-key"}}')$$,
                'a URL change may restate them in the same call');
SELECT is((SELECT headers FROM webhooks.secret_headers WHERE webhook_id = pg_temp.hook()), '{"X-Api-Key": "new-key"}',
          'and then they are kept');

-- URL credentials and an Authorization header -------------------------------------------------------
SELECT throws_ok($$SELECT * FROM webhooks.create_webhook('creds1', 'https://user:pw@e.example/h', '[{"table": "public.payroll"}]',
                    headers => '{"Authorization": "Bearer x"}')$$, 'WH036', NULL,
                 'a URL with user:password plus an Authorization header is refused');
SELECT throws_ok($$SELECT * FROM webhooks.create_webhook('creds2', 'https://user:pw@e.example/h', '[{"table": "public.payroll"}]',
                    secret_headers => '{"authorization": "Bearer x"}')$$, 'WH036', NULL,
                 'also as a secret header, in any case');
SELECT throws_ok($$SELECT * FROM webhooks.update_webhook(pg_temp.hook(),
                    '{"url": "https://user:pw@owner.example/h2", "secret_headers": {"Authorization": "Bearer x"}}')$$,
                 'WH036', NULL, 'and by update_webhook');
SELECT throws_ok($$SELECT * FROM webhooks.update_webhook(pg_temp.hook(),
                    '{"url": "https://user:pw@owner.example/h3", "headers": {"Authorization": "Bearer x"}}')$$,
                 'WH036', 'headers: has an Authorization header, but the url https://***@owner.example/h3 carries '
                 'user:password credentials (sent as Authorization: Basic); the runner cannot send both',
                 'a plain header too; the message does not repeat the password');
SELECT lives_ok($$SELECT * FROM webhooks.update_webhook(pg_temp.hook(), '{"url": "https://user:pw@owner.example/h3"}')$$,
                'credentials alone are fine (the URL change dropped the secret headers)');
SELECT * FROM finish();
ROLLBACK;
