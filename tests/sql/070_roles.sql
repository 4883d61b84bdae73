-- 070: who may do what (sql/007_privileges.sql). webhooks_admin manages webhooks and reads
-- everything; webhooks_runner can only claim / complete / release and reads nothing, secrets
-- least of all; an application role's writes fire the capture triggers but it cannot see the
-- outbox or call any webhooks function. Internal `_` functions are nobody's but the owner's.
BEGIN;
SELECT plan(65);

CREATE TABLE public.accounts (id serial PRIMARY KEY, name text);
CREATE ROLE app_writer NOLOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.accounts TO app_writer;
GRANT USAGE ON SEQUENCE public.accounts_id_seq TO app_writer;
-- Somewhere every role can leave results for the assertions that follow.
CREATE TEMP TABLE scratch (k text, v jsonb);
GRANT ALL ON scratch TO PUBLIC;

-- The grants, as the catalogs see them ------------------------------------------------------------
SELECT is(
    (SELECT array_agg(p.proname::text ORDER BY p.proname) FROM pg_proc p
     WHERE p.pronamespace = 'webhooks'::regnamespace AND has_function_privilege('webhooks_runner', p.oid, 'EXECUTE')),
    -- runner_backlog: the per-webhook backlog for /metrics (no URL, no secret);
    -- circuit_failure_threshold: the breaker's number, read by the runner instead of copied.
    -- maintain: the runner keeps the outbox bounded on a timer; retention: what it keeps.
    -- runner_busy: the runner says its claims come back full, so writers need not NOTIFY it.
    -- runner_outbox: the outbox's size and the blocks each webhook keeps, for /metrics.
    ARRAY['circuit_failure_threshold', 'claim', 'complete', 'complete', 'hold_refused', 'maintain', 'next_due_in', 'release', 'release', 'retention', 'runner_backlog', 'runner_busy', 'runner_outbox', 'version'],
    'webhooks_runner can execute circuit_failure_threshold, claim, next_due_in, complete, release (jsonb and text), hold_refused, maintain, retention, runner_backlog, runner_busy, runner_outbox and version, nothing else');
SELECT is_empty(
    $$SELECT p.oid::regprocedure FROM pg_proc p
      WHERE p.pronamespace = 'webhooks'::regnamespace AND p.proname LIKE '\_%'
        AND (has_function_privilege('webhooks_admin', p.oid, 'EXECUTE')
             OR has_function_privilege('webhooks_runner', p.oid, 'EXECUTE')
             OR has_function_privilege('app_writer', p.oid, 'EXECUTE'))$$,
    'no internal _ function is executable by admin, runner or an application role');
SELECT is_empty(
    $$SELECT p.oid::regprocedure FROM pg_proc p
      WHERE p.pronamespace = 'webhooks'::regnamespace AND has_function_privilege('app_writer', p.oid, 'EXECUTE')$$,
    'an application role (PUBLIC) can execute no webhooks function at all');
SELECT is_empty(
    $$SELECT f FROM unnest(ARRAY['create_webhook', 'list_webhooks', 'get_webhook', 'update_webhook', 'delete_webhook',
                                'get_deliveries', 'get_delivery_attempts', 'rotate_secret']) f
      WHERE NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.pronamespace = 'webhooks'::regnamespace AND p.proname = f
                        AND has_function_privilege('webhooks_admin', p.oid, 'EXECUTE'))$$,
    'webhooks_admin can execute every management function');
SELECT is_empty(
    $$SELECT c.oid::regclass FROM pg_class c
      WHERE c.relnamespace = 'webhooks'::regnamespace AND c.relkind IN ('r', 'v', 'S', 'p')
        AND (has_table_privilege('webhooks_runner', c.oid, 'SELECT, INSERT, UPDATE, DELETE')
             OR has_table_privilege('app_writer', c.oid, 'SELECT, INSERT, UPDATE, DELETE'))$$,
    'neither the runner nor an application role has any privilege on any webhooks table');
SELECT is_empty(
    $$SELECT c.oid::regclass FROM pg_class c
      WHERE c.relnamespace = 'webhooks'::regnamespace AND c.relkind IN ('r', 'p')
        AND has_table_privilege('webhooks_admin', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')$$,
    'webhooks_admin cannot write to the tables behind the functions'' back');
SELECT is(has_schema_privilege('app_writer', 'webhooks', 'USAGE'), false, 'an application role cannot even use the schema');
SELECT is(
    (SELECT array_agg(c.relname::text ORDER BY c.relname) FROM pg_class c
     WHERE c.relnamespace = 'webhooks'::regnamespace AND c.relkind IN ('r', 'p')
       AND has_table_privilege('webhooks_capture', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')),
    ARRAY['capture_routes', 'captures', 'events', 'held_rows'],
    'webhooks_capture (owner of the capture triggers) touches captures, events and held_rows (filters that failed), and reads capture_routes (filters'' routing)');
SELECT is_empty(
    $$SELECT c.oid::regclass FROM pg_class c
      WHERE c.relnamespace = 'webhooks'::regnamespace AND c.relkind IN ('r', 'p')
        AND has_table_privilege('webhooks_capture', c.oid, 'SELECT, UPDATE, DELETE, TRUNCATE')
        AND c.relname <> 'capture_routes'  -- filter values and webhook ids: no secret, nothing captured$$,
    'and can only append to them: no secret, no webhook, no delivery is readable by it');

-- webhooks_admin ---------------------------------------------------------------------------------
GRANT SELECT ON public.accounts TO webhooks_admin;  -- a webhook only watches what its creator may read
SET LOCAL ROLE webhooks_admin;
SELECT lives_ok($$INSERT INTO scratch SELECT 'hook', to_jsonb(w) FROM webhooks.create_webhook('accounts', 'https://e.com/acc',
                  '[{"table": "accounts"}]', secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') w$$,
                'admin: create_webhook');
SELECT is((SELECT count(*)::int FROM webhooks.list_webhooks()), 1, 'admin: list_webhooks');
SELECT lives_ok($$SELECT webhooks.update_webhook((SELECT (v ->> 'id')::uuid FROM scratch WHERE k = 'hook'), '{"max_retries": 5}')$$,
                'admin: update_webhook');
SELECT lives_ok($$SELECT webhooks.get_deliveries((SELECT (v ->> 'id')::uuid FROM scratch WHERE k = 'hook'))$$,
                'admin: get_deliveries');
SELECT throws_ok($$SELECT secret FROM webhooks.secrets$$, '42501', NULL, 'admin: cannot read secrets');
SELECT throws_ok($$SELECT * FROM webhooks.captures$$, '42501', NULL,
                 'admin: cannot read captured rows (they may come from tables it may not read)');
SELECT throws_ok($$SELECT * FROM webhooks.events$$, '42501', NULL, 'admin: cannot read captured row images');
SELECT lives_ok($$SELECT * FROM webhooks.webhooks, webhooks.subscriptions, webhooks.deliveries, webhooks.delivery_attempts
                  LIMIT 1$$, 'admin: reads webhooks and delivery logs');
SELECT throws_ok($$INSERT INTO webhooks.webhooks (name, url) VALUES ('sneaky', 'https://e.com')$$, '42501', NULL,
                 'admin: cannot insert into webhooks.webhooks directly');
SELECT throws_ok($$UPDATE webhooks.deliveries SET status = 'delivered'$$, '42501', NULL,
                 'admin: cannot update deliveries directly');
SELECT throws_ok($$SELECT webhooks._generate_secret()$$, '42501', NULL, 'admin: cannot execute _generate_secret');
SELECT throws_ok($$SELECT webhooks._sync_triggers('public.accounts'::regclass)$$, '42501', NULL, 'admin: cannot execute _sync_triggers');
RESET ROLE;
SELECT is(current_user, 'postgres'::name, 'RESET ROLE restores the superuser');

-- An application role ------------------------------------------------------------------------------
SET LOCAL ROLE app_writer;
SELECT lives_ok($$INSERT INTO public.accounts (name) VALUES ('alice'), ('bob')$$, 'app: INSERT into the watched table');
SELECT lives_ok($$UPDATE public.accounts SET name = upper(name)$$, 'app: UPDATE it');
SELECT lives_ok($$DELETE FROM public.accounts WHERE name = 'BOB'$$, 'app: DELETE from it');
SELECT throws_ok($$SELECT * FROM webhooks.events$$, '42501', NULL, 'app: cannot read webhooks.events');
SELECT throws_ok($$SELECT * FROM webhooks.captures$$, '42501', NULL, 'app: cannot read webhooks.captures');
SELECT throws_ok($$SELECT * FROM webhooks.deliveries$$, '42501', NULL, 'app: cannot read webhooks.deliveries');
SELECT throws_ok($$SELECT * FROM webhooks.secrets$$, '42501', NULL, 'app: cannot read webhooks.secrets');
SELECT throws_ok($$INSERT INTO webhooks.events (capture_id, n, record) VALUES (1, 1, '{}')$$, '42501', NULL,
                 'app: cannot forge events');
SELECT throws_ok($$SELECT webhooks.create_webhook('mine', 'https://e.com', '[{"table": "accounts"}]')$$, '42501', NULL,
                 'app: cannot call create_webhook');
SELECT throws_ok($$SELECT * FROM webhooks.claim()$$, '42501', NULL, 'app: cannot call claim');
SELECT throws_ok($$SELECT webhooks.list_webhooks()$$, '42501', NULL, 'app: cannot call list_webhooks');
SELECT throws_ok($$DROP TRIGGER webhooks_capture_insert ON public.accounts$$, '42501', NULL,
                 'app: cannot drop the capture trigger of a table it does not own');
RESET ROLE;
SELECT is((SELECT array_agg(operation || ':' || row_count ORDER BY id) FROM webhooks.captures),
          ARRAY['INSERT:2', 'UPDATE:2', 'DELETE:1'], 'the application role''s writes were captured');

-- webhooks_runner ----------------------------------------------------------------------------------
SET LOCAL ROLE webhooks_runner;
SELECT lives_ok($$INSERT INTO scratch SELECT 'claim', to_jsonb(c) FROM webhooks.claim() c$$, 'runner: claim');
SELECT is((SELECT count(*)::int FROM scratch WHERE k = 'claim'), 5, 'runner: gets the five deliveries');
SELECT is((SELECT count(*)::int FROM scratch WHERE k = 'claim' AND v -> 'headers' ->> 'webhook-signature' ~ '^v1,'), 5,
          'runner: each signed, without access to the secret');
SELECT is((SELECT array_agg(DISTINCT c.status) FROM webhooks.complete((
               SELECT jsonb_agg(jsonb_build_object('delivery_id', v -> 'delivery_id', 'attempt', v -> 'attempt',
                                                   'status_code', 200, 'latency_ms', 5))
               FROM scratch WHERE k = 'claim')) c),
          ARRAY['delivered'], 'runner: complete');
SELECT is(webhooks.release('[]'), 0, 'runner: release');
SELECT matches(webhooks.version(), '^[0-9]+\.[0-9]+\.[0-9]+', 'runner: version');
SELECT throws_ok($$SELECT * FROM webhooks.secrets$$, '42501', NULL, 'runner: cannot read webhooks.secrets');
SELECT throws_ok($$SELECT secret FROM webhooks.secrets$$, '42501', NULL, 'runner: not even the secret column');
SELECT throws_ok($$SELECT * FROM webhooks.webhooks$$, '42501', NULL, 'runner: cannot read webhooks.webhooks');
SELECT throws_ok($$SELECT * FROM webhooks.events$$, '42501', NULL, 'runner: cannot read webhooks.events');
SELECT throws_ok($$SELECT * FROM webhooks.deliveries$$, '42501', NULL, 'runner: cannot read webhooks.deliveries');
SELECT throws_ok($$SELECT * FROM webhooks.delivery_attempts$$, '42501', NULL, 'runner: cannot read webhooks.delivery_attempts');
SELECT throws_ok($$UPDATE webhooks.deliveries SET status = 'pending'$$, '42501', NULL, 'runner: cannot write deliveries');
SELECT throws_ok($$SELECT webhooks.create_webhook('r', 'https://e.com', '[{"table": "accounts"}]')$$, '42501', NULL,
                 'runner: cannot call create_webhook');
SELECT throws_ok($$SELECT webhooks.list_webhooks()$$, '42501', NULL, 'runner: cannot call list_webhooks');
SELECT throws_ok($$SELECT webhooks.rotate_secret((SELECT (v ->> 'id')::uuid FROM scratch WHERE k = 'hook'))$$, '42501', NULL,
                 'runner: cannot call rotate_secret (it returns a secret)');
SELECT throws_ok($$SELECT webhooks.get_deliveries((SELECT (v ->> 'id')::uuid FROM scratch WHERE k = 'hook'))$$, '42501', NULL,
                 'runner: cannot call get_deliveries');
SELECT throws_ok($$SELECT webhooks._sign_headers('x', 1, '{}', ARRAY['s'])$$, '42501', NULL, 'runner: cannot call _sign_headers');
SELECT throws_ok($$SELECT webhooks._generate_secret()$$, '42501', NULL, 'runner: cannot call _generate_secret');
SELECT throws_ok($$SELECT webhooks._fan_out(10)$$, '42501', NULL, 'runner: cannot call _fan_out');
SELECT throws_ok($$SELECT webhooks._retry_delay(1, 1, 500, NULL)$$, '42501', NULL, 'runner: cannot call _retry_delay');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM webhooks.deliveries WHERE status = 'delivered'), 5, 'the runner''s results were applied');
SELECT is((SELECT count(*)::int FROM webhooks.delivery_attempts), 5, 'and logged');
SELECT is_empty($$SELECT 1 FROM scratch, webhooks.secrets s
                  WHERE k = 'claim' AND (v::text LIKE '%' || s.secret || '%'
                                         OR v::text LIKE '%' || 'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' || '%')$$,
                'no secret appears in anything the runner received');

-- SECURITY DEFINER functions are not fooled by the caller's search_path ------------------------------
CREATE SCHEMA evil;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'epoch'::timestamptz $$;
CREATE FUNCTION evil.row_to_json(public.accounts) RETURNS json LANGUAGE sql AS $$ SELECT '{"evil": true}'::json $$;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
SET LOCAL ROLE app_writer;
SET LOCAL search_path = evil, pg_catalog, public;
SELECT lives_ok($$INSERT INTO public.accounts (name) VALUES ('carol')$$, 'app: insert with a hostile search_path');
RESET search_path;
RESET ROLE;
SELECT is((SELECT c.record ->> 'name' FROM webhooks.captures c ORDER BY id DESC LIMIT 1), 'carol',
          'the capture used pg_catalog.row_to_json, not the caller''s');

-- A key whose equality operator lives in a schema the capture role cannot use ------------------------
CREATE SCHEMA locked;
REVOKE ALL ON SCHEMA locked FROM PUBLIC;
CREATE EXTENSION citext SCHEMA locked;
CREATE TABLE public.emails (email locked.citext PRIMARY KEY, n int);
GRANT USAGE ON SCHEMA locked TO app_writer;
GRANT ALL ON public.emails TO app_writer;
SELECT lives_ok($$SELECT webhooks.create_webhook('emails', 'https://e.com/emails', '[{"table": "emails"}]')$$,
                'a webhook on a table with a citext key (citext in a locked-down schema)');
SET LOCAL ROLE app_writer;
SELECT lives_ok($$INSERT INTO public.emails VALUES ('Ann@Example.com', 1), ('bo@example.com', 2)$$, 'app: insert two rows');
SELECT lives_ok($$UPDATE public.emails SET n = n * 10$$, 'app: a multi-row UPDATE still succeeds');
RESET ROLE;
SELECT is((SELECT array_agg((e.old_record ->> 'n') || '->' || (e.record ->> 'n') ORDER BY e.n)
           FROM webhooks.events e JOIN webhooks.captures c ON c.id = e.capture_id
           WHERE c.table_name = 'emails' AND c.operation = 'UPDATE'),
          ARRAY['1->10', '2->20'], 'and each new row is paired with its old row');

SELECT * FROM finish();
ROLLBACK;
