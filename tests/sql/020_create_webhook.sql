-- 020: create_webhook, list_webhooks, get_webhook, update_webhook and delete_webhook on good
-- input: what is returned, how events are normalised, defaults, secrets (generated, kept,
-- never shown again), schema-qualified tables.
BEGIN;
SELECT plan(47);

CREATE TABLE public.users (id serial PRIMARY KEY, email text);
CREATE SCHEMA billing;
CREATE TABLE billing.invoices (id bigserial PRIMARY KEY, amount numeric);

CREATE TEMP TABLE created AS
SELECT * FROM webhooks.create_webhook('users-hook', 'https://example.com/hook',
    '[{"table": "users", "operations": ["insert", "Update"]}]');
CREATE TEMP TABLE created2 AS
SELECT * FROM webhooks.create_webhook(
    name => 'billing-hook', url => 'http://receiver.example:8080/in?x=1',
    events => '[{"table": "billing.invoices"}, {"table": "public.users", "operations": ["DELETE"]}]',
    secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
    description => 'invoices', enabled => false, max_retries => 0, timeout_seconds => 5,
    retry_backoff_seconds => 60, headers => '{"Authorization": "Bearer t0ken", "X-Tenant": "42"}');

-- What create_webhook returns -------------------------------------------------------------------
SELECT is((SELECT count(*)::int FROM created), 1, 'create_webhook returns one row');
SELECT isnt((SELECT id FROM created), NULL, 'it carries the new id');
SELECT is((SELECT name FROM created), 'users-hook', 'and the name');
SELECT is((SELECT url FROM created), 'https://example.com/hook', 'and the url');
SELECT is((SELECT events FROM created),
          '[{"table": "public.users", "operations": ["INSERT", "UPDATE"]}]'::jsonb,
          'events: table schema-qualified, operations upper-cased');
SELECT matches((SELECT secret FROM created), '^whsec_[A-Za-z0-9+/]{43}=$',
               'a missing secret is generated as whsec_ + base64 of 32 bytes');
SELECT is(length(decode(substr((SELECT secret FROM created), 7), 'base64')), 32,
          'the generated key is 32 bytes');
SELECT is((SELECT secret FROM webhooks.secrets WHERE webhook_id = (SELECT id FROM created)),
          (SELECT secret FROM created), 'the returned secret is the stored one');
SELECT isnt((SELECT secret FROM created), (SELECT secret FROM webhooks.create_webhook(
                'other', 'https://example.com', '[{"table": "users"}]'))::text,
            'two generated secrets differ');

-- Defaults -------------------------------------------------------------------------------------
SELECT is((SELECT (max_retries, retry_schedule)::text FROM created),
          '(7,"{00:00:05,00:05:00,00:30:00,02:00:00,05:00:00,10:00:00,10:00:00}")',
          'retries default to the schedule of about 27 hours');
SELECT is((SELECT timeout_seconds FROM created), 30, 'timeout_seconds defaults to 30');
SELECT is((SELECT retry_backoff_seconds FROM created), 5, 'retry_backoff_seconds defaults to 5');
SELECT is((SELECT enabled FROM created), true, 'enabled defaults to true');
SELECT is((SELECT headers FROM created), '{}'::jsonb, 'headers default to {}');
SELECT is((SELECT description FROM created), NULL, 'description defaults to null');
SELECT is((SELECT events FROM webhooks.get_webhook((SELECT id FROM webhooks.webhooks WHERE name = 'other'))),
          '[{"table": "public.users", "operations": ["INSERT", "UPDATE", "DELETE"]}]'::jsonb,
          'operations default to all three');

-- Every argument given, table in another schema, secret kept ------------------------------------
SELECT is((SELECT secret FROM created2), 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'a given secret is returned as is');
SELECT is((SELECT secret FROM webhooks.secrets WHERE webhook_id = (SELECT id FROM created2)),
          'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'a given secret is stored as is');
SELECT is((SELECT events FROM created2),
          '[{"table": "billing.invoices", "operations": ["INSERT", "UPDATE", "DELETE"]},
            {"table": "public.users", "operations": ["DELETE"]}]'::jsonb,
          'a schema-qualified table in another schema, plus a second table');
SELECT is((SELECT relid FROM webhooks.subscriptions WHERE webhook_id = (SELECT id FROM created2)
           ORDER BY relid::regclass::text LIMIT 1), 'billing.invoices'::regclass::oid,
          'the subscription points at billing.invoices');
SELECT is((SELECT (enabled, max_retries, timeout_seconds, retry_backoff_seconds, description)::text FROM created2),
          '(f,0,5,60,invoices)', 'enabled, max_retries, timeout, backoff and description are kept');
SELECT is((SELECT headers FROM created2), '{"Authorization": "Bearer t0ken", "X-Tenant": "42"}'::jsonb,
          'custom headers are kept');
SELECT is((SELECT url FROM created2), 'http://receiver.example:8080/in?x=1', 'an http URL with port and query is accepted');
SELECT lives_ok($$SELECT webhooks.create_webhook('plain-secret', 'https://example.com', '[{"table":"users"}]',
                                                 secret => 'a plain secret of 24 chars')$$,
                'a non-whsec secret of 16+ characters is accepted');
SELECT lives_ok($$SELECT webhooks.create_webhook('quoted', 'https://[::1]:8443/x', '[{"table":"\"billing\".\"invoices\""}]')$$,
                'quoted identifiers and an IPv6 URL are accepted');

-- list_webhooks / get_webhook never show secrets ------------------------------------------------
CREATE TEMP TABLE listed AS SELECT * FROM webhooks.list_webhooks();
SELECT is((SELECT count(*)::int FROM listed), 5, 'list_webhooks lists every webhook');
SELECT hasnt_column('pg_temp', 'listed', 'secret', 'list_webhooks has no secret column');
SELECT is_empty($$SELECT 1 FROM pg_attribute WHERE attrelid = 'pg_temp.listed'::regclass AND attname ILIKE '%secret%'$$,
                'list_webhooks has no column named like secret');
SELECT is_empty($$SELECT 1 FROM listed l, webhooks.secrets s WHERE to_jsonb(l)::text LIKE '%' || s.secret || '%'$$,
                'no secret value appears anywhere in list_webhooks');
CREATE TEMP TABLE got AS SELECT * FROM webhooks.get_webhook((SELECT id FROM created));
SELECT is((SELECT count(*)::int FROM got), 1, 'get_webhook returns the webhook');
SELECT is_empty($$SELECT 1 FROM pg_attribute WHERE attrelid = 'pg_temp.got'::regclass AND attname ILIKE '%secret%'$$,
                'get_webhook has no secret column');
SELECT is_empty($$SELECT 1 FROM got g, webhooks.secrets s WHERE to_jsonb(g)::text LIKE '%' || s.secret || '%'$$,
                'no secret value appears anywhere in get_webhook');
SELECT is((SELECT to_jsonb(g) - 'secret' FROM got g), (SELECT to_jsonb(c) - 'secret' FROM created c),
          'get_webhook shows what create_webhook returned, minus the secret');

-- update_webhook: patch semantics ---------------------------------------------------------------
CREATE TEMP TABLE updated AS SELECT * FROM webhooks.update_webhook((SELECT id FROM created),
    '{"url": "https://example.org/v2", "max_retries": 7, "headers": {"X-A": "b"}, "description": "d"}');
SELECT is((SELECT (url, max_retries, headers::text, description)::text FROM updated),
          '(https://example.org/v2,7,"{""X-A"": ""b""}",d)', 'update_webhook changes the given fields');
SELECT is((SELECT (name, timeout_seconds, retry_backoff_seconds, enabled)::text FROM updated),
          '(users-hook,30,5,t)', 'and keeps the others');
SELECT is((SELECT events FROM updated),
          '[{"table": "public.users", "operations": ["INSERT", "UPDATE"]}]'::jsonb, 'events untouched');
SELECT is((SELECT description FROM webhooks.update_webhook((SELECT id FROM created), '{"description": null}')),
          NULL, 'description can be cleared with null');
SELECT is((SELECT (enabled, disabled_reason IS NOT NULL)::text FROM webhooks.update_webhook((SELECT id FROM created), '{"enabled": false}')),
          '(f,t)', 'disabling keeps a reason');
SELECT is((SELECT (enabled, disabled_reason)::text FROM webhooks.update_webhook((SELECT id FROM created), '{"enabled": true}')),
          '(t,)', 're-enabling clears the reason');
SELECT is((SELECT max_retries FROM webhooks.update_webhook((SELECT id FROM created), '{"max_retries": 4.0}')), 4,
          'an integral JSON number such as 4.0 is accepted as 4');
SELECT lives_ok($$SELECT webhooks.update_webhook((SELECT id FROM created), '{"name": "users-hook"}')$$,
                'a webhook may keep its own name');
SELECT lives_ok($$SELECT webhooks.update_webhook((SELECT id FROM created), '{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}')$$,
                'update_webhook accepts a new secret');
SELECT is((SELECT array_agg(secret) FROM webhooks.secrets WHERE webhook_id = (SELECT id FROM created)),
          ARRAY['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'], 'update_webhook secret replaces the old one at once');

-- delete_webhook --------------------------------------------------------------------------------
SELECT lives_ok($$SELECT webhooks.delete_webhook((SELECT id FROM created2))$$, 'delete_webhook succeeds');
SELECT is_empty($$SELECT 1 FROM webhooks.webhooks WHERE id = (SELECT id FROM created2)$$, 'delete_webhook removes the webhook');
SELECT is_empty($$SELECT 1 FROM webhooks.subscriptions WHERE webhook_id = (SELECT id FROM created2)
                  UNION ALL SELECT 1 FROM webhooks.secrets WHERE webhook_id = (SELECT id FROM created2)$$,
                'and its subscriptions and secrets');
SELECT is((SELECT count(*)::int FROM webhooks.list_webhooks()), 4, 'the others remain');

SELECT * FROM finish();
ROLLBACK;
