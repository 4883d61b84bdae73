-- 030: every bad input to the management API raises its own WH SQLSTATE (see the table at the
-- top of sql/003_validation.sql) with a message that starts with the offending field, and
-- nothing is written: no webhook, subscription, secret or trigger, no change to an existing one.
BEGIN;
SELECT plan(104);

CREATE TABLE public.users (id serial PRIMARY KEY, email text);
CREATE TABLE public.orders (id serial PRIMARY KEY, total numeric);
CREATE TEMP TABLE hook AS
SELECT id FROM webhooks.create_webhook('taken', 'https://example.com/hook',
    '[{"table": "users", "operations": ["INSERT"]}]');

-- What is there before any failure, to compare with at the end.
CREATE TEMP TABLE before AS SELECT
    (SELECT count(*) FROM webhooks.webhooks) AS webhooks,
    (SELECT count(*) FROM webhooks.subscriptions) AS subscriptions,
    (SELECT count(*) FROM webhooks.secrets) AS secrets,
    (SELECT array_agg(secret ORDER BY id) FROM webhooks.secrets) AS secret_values,
    (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'webhooks\_capture\_%') AS triggers,
    (SELECT to_jsonb(w) FROM webhooks.webhooks w) AS taken_row;

-- name (WH001, WH002) ---------------------------------------------------------------------------
SELECT throws_ok($$SELECT webhooks.create_webhook('', 'https://e.com', '[{"table":"users"}]')$$,
    'WH001', 'name: must not be empty or blank, got ''''', 'empty name');
SELECT throws_ok($$SELECT webhooks.create_webhook('   ', 'https://e.com', '[{"table":"users"}]')$$,
    'WH001', 'name: must not be empty or blank, got ''   ''', 'blank name');
SELECT throws_ok($$SELECT webhooks.create_webhook(NULL, 'https://e.com', '[{"table":"users"}]')$$,
    'WH001', 'name: must not be empty or blank, got null', 'null name');
SELECT throws_ok($$SELECT webhooks.create_webhook(repeat('n', 201), 'https://e.com', '[{"table":"users"}]')$$,
    'WH001', 'name: is 201 characters long; at most 200 are allowed', 'name too long');
SELECT throws_ok($$SELECT webhooks.create_webhook('taken', 'https://e.com', '[{"table":"users"}]')$$,
    'WH002', 'name: a webhook named ''taken'' already exists', 'duplicate name');

-- url (WH003) -----------------------------------------------------------------------------------
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'ftp://e.com/x', '[{"table":"users"}]')$$,
    'WH003', 'url: ''ftp://e.com/x'' is not an http:// or https:// URL', 'ftp:// url');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'example.com/hook', '[{"table":"users"}]')$$,
    'WH003', 'url: ''example.com/hook'' is not an http:// or https:// URL', 'url without a scheme');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'javascript:alert(1)', '[{"table":"users"}]')$$,
    'WH003', NULL, 'javascript: url');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', '', '[{"table":"users"}]')$$,
    'WH003', 'url: must not be empty', 'empty url');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', NULL, '[{"table":"users"}]')$$,
    'WH003', 'url: must not be empty', 'null url');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'http://', '[{"table":"users"}]')$$,
    'WH003', 'url: ''http://'' is not a well-formed URL', 'url without a host');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'http://exa mple.com', '[{"table":"users"}]')$$,
    'WH003', 'url: ''http://exa mple.com'' contains a space or a control character', 'url with a space in the host');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com/a b', '[{"table":"users"}]')$$,
    'WH003', NULL, 'url with a space in the path');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'http://host:99999', '[{"table":"users"}]')$$,
    'WH003', 'url: port 99999 in ''http://host:99999'' is out of range 1-65535', 'port above 65535');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'http://host:0/', '[{"table":"users"}]')$$,
    'WH003', NULL, 'port 0');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'http://host:/x', '[{"table":"users"}]')$$,
    'WH003', NULL, 'empty port');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com/' || repeat('a', 2048), '[{"table":"users"}]')$$,
    'WH003', 'url: is 2062 characters long; at most 2048 are allowed', 'url too long');

-- events (WH004), schema (WH005), table (WH006), operations (WH007) ---------------------------
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '{"table":"users"}')$$,
    'WH004', 'events: must be a non-empty JSON array like [{"table": "users", "operations": ["INSERT"]}], got {"table": "users"}',
    'events not an array');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[]')$$,
    'WH004', NULL, 'events an empty array');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', NULL)$$,
    'WH004', NULL, 'events null');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '["users"]')$$,
    'WH004', 'events[0]: "users" is not an event type (a string entry is a type like "order.completed" or a pattern like "order.*"); to watch a table write {"table": "users"}',
    'a string entry is an event type, not a table');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}, 7]')$$,
    'WH004', 'events[1]: must be an object, got 7', 'the second element is named events[1]');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users","ops":["INSERT"]}]')$$,
    'WH004', 'events[0]: has unknown keys in {"ops": ["INSERT"], "table": "users"}; expected "table", "operations", "event_type" and optionally "columns", "exclude_columns", "where"',
    'event with an unknown key');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"operations":["INSERT"]}]')$$,
    'WH004', 'events[0].table: must be a non-empty string', 'event without a table');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":5}]')$$,
    'WH004', 'events[0].table: must be a non-empty string', 'table not a string');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":" "}]')$$,
    'WH004', NULL, 'blank table');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"},{"table":"public.users"}]')$$,
    'WH004', 'events[1].table: table public.users is listed twice; give all its operations in one entry',
    'the same table twice');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"nosuch.users"}]')$$,
    'WH005', 'events[0].table: schema nosuch does not exist', 'unknown schema');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"nope"}]')$$,
    'WH006', 'events[0].table: table public.nope does not exist', 'unknown table');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"\"Users\""}]')$$,
    'WH006', 'events[0].table: table public."Users" does not exist', 'a quoted table name keeps its case');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"a.b.c"}]')$$,
    'WH006', NULL, 'three-part table name');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users;drop"}]')$$,
    'WH006', NULL, 'not an identifier');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"webhooks.deliveries"}]')$$,
    'WH006', 'events[0].table: webhooks.deliveries cannot be watched: system catalogs, temporary tables and pgwebhooks'' own tables are never captured', 'the outbox itself cannot be watched');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"pg_catalog.pg_class_oid_index"}]')$$,
    'WH006', NULL, 'an index is not a table');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users","operations":[]}]')$$,
    'WH007', 'events[0].operations: must be a non-empty array of "INSERT", "UPDATE", "DELETE", "TRUNCATE", got []',
    'empty operations');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users","operations":"INSERT"}]')$$,
    'WH007', NULL, 'operations not an array');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users","operations":["SELECT"]}]')$$,
    'WH007', 'events[0].operations: "SELECT" is not an operation; expected INSERT, UPDATE, DELETE or TRUNCATE',
    'unknown operation SELECT');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users","operations":["INSERT", null]}]')$$,
    'WH007', NULL, 'null operation');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users","operations":[1]}]')$$,
    'WH007', NULL, 'numeric operation');
-- A good first entry is not half-applied when a later one is bad.
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"orders"}, {"table":"nope"}]')$$,
    'WH006', 'events[1].table: table public.nope does not exist', 'a bad second entry after a good one');

-- settings out of range (WH008) -----------------------------------------------------------------
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', max_retries => -1)$$,
    'WH008', 'max_retries: -1 is out of range; expected an integer from 0 to 50', 'negative max_retries');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', max_retries => 1000)$$,
    'WH008', 'max_retries: 1000 is out of range; expected an integer from 0 to 50', 'absurd max_retries');
-- A NULL max_retries means "not given" (the default schedule); a given one is still checked.
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', max_retries => 51, retry_backoff_seconds => NULL)$$,
    'WH008', NULL, 'max_retries out of range with the backoff left NULL');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', timeout_seconds => 0)$$,
    'WH008', 'timeout_seconds: 0 is out of range; expected an integer from 1 to 300', 'timeout 0');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', timeout_seconds => 10000)$$,
    'WH008', 'timeout_seconds: 10000 is out of range; expected an integer from 1 to 300', 'timeout 10000');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', retry_backoff_seconds => 0)$$,
    'WH008', 'retry_backoff_seconds: 0 is out of range; expected an integer from 1 to 86400', 'backoff 0');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', retry_backoff_seconds => 86401)$$,
    'WH008', NULL, 'backoff above a day');

-- headers (WH009, WH010) ------------------------------------------------------------------------
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '["X-A"]')$$,
    'WH009', 'headers: must be a JSON object of header names to strings, got ["X-A"]', 'headers not an object');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => NULL)$$,
    'WH009', NULL, 'headers null');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"X-A": 1}')$$,
    'WH009', 'headers: value of ''X-A'' must be a string, got 1', 'header value not a string');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"X-A": null}')$$,
    'WH009', NULL, 'header value null');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"X A": "1"}')$$,
    'WH009', 'headers: ''X A'' is not a valid header name', 'header name with a space');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"X-A:": "1"}')$$,
    'WH009', NULL, 'header name with a colon');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"": "1"}')$$,
    'WH009', NULL, 'empty header name');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"X-A": "a\r\nX-Evil: 1"}')$$,
    'WH009', 'headers: value of ''X-A'' contains a line break', 'header injection by line break');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"webhook-signature": "v1,x"}')$$,
    'WH010', 'headers: ''webhook-signature'' is set by pgwebhooks and cannot be overridden', 'webhook-signature reserved');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"WEBHOOK-SIGNATURE": "v1,x"}')$$,
    'WH010', NULL, 'WEBHOOK-SIGNATURE reserved in upper case');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"Content-Type": "text/plain"}')$$,
    'WH010', 'headers: ''Content-Type'' is set by pgwebhooks and cannot be overridden', 'Content-Type reserved');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"content-TYPE": "text/plain"}')$$,
    'WH010', NULL, 'content-TYPE reserved in mixed case');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"x-webhook-signature": "t=1"}')$$,
    'WH010', NULL, 'x-webhook-signature reserved');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"X-Webhook-Signature": "t=1"}')$$,
    'WH010', NULL, 'X-Webhook-Signature reserved');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"Webhook-Id": "1"}')$$,
    'WH010', NULL, 'webhook-id reserved');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"webhook-timestamp": "1"}')$$,
    'WH010', NULL, 'webhook-timestamp reserved');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"user-agent": "x"}')$$,
    'WH010', NULL, 'User-Agent reserved');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', headers => '{"Host": "evil"}')$$,
    'WH010', NULL, 'Host reserved');

-- secret (WH011) --------------------------------------------------------------------------------
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', secret => 'short')$$,
    'WH011', 'secret: must be at least 16 characters long', 'short secret');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', secret => '')$$,
    'WH011', NULL, 'empty secret');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', secret => 'whsec_!!!not-base64!!!not-base64!!!not-base64!!')$$,
    'WH011', 'secret: the part after whsec_ must be padded base64 (A-Z, a-z, 0-9, +, / and = only at the end)', 'whsec_ with bad base64');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', secret => 'whsec_c2hvcnQ=')$$,
    'WH011', 'secret: a whsec_ secret must decode to 24-64 bytes, this one has 5', 'whsec_ with a short key');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', secret => 'whsec_')$$,
    'WH011', NULL, 'whsec_ with no key');

-- other arguments (WH013) -----------------------------------------------------------------------
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', enabled => NULL)$$,
    'WH013', 'enabled: must be true or false', 'enabled null');
SELECT throws_ok($$SELECT webhooks.create_webhook('n', 'https://e.com', '[{"table":"users"}]', description => repeat('d', 2001))$$,
    'WH013', NULL, 'description too long');

-- unknown ids (WH404) ---------------------------------------------------------------------------
SELECT throws_ok($$SELECT webhooks.get_webhook('00000000-0000-0000-0000-000000000000')$$,
    'WH404', 'id: no webhook with id 00000000-0000-0000-0000-000000000000', 'get_webhook unknown id');
SELECT throws_ok($$SELECT webhooks.get_webhook(NULL)$$, 'WH404', NULL, 'get_webhook null id');
SELECT throws_ok($$SELECT webhooks.update_webhook('00000000-0000-0000-0000-000000000000', '{"url": "https://e.com"}')$$,
    'WH404', NULL, 'update_webhook unknown id');
SELECT throws_ok($$SELECT webhooks.delete_webhook('00000000-0000-0000-0000-000000000000')$$,
    'WH404', NULL, 'delete_webhook unknown id');
SELECT throws_ok($$SELECT webhooks.get_deliveries('00000000-0000-0000-0000-000000000000')$$,
    'WH404', NULL, 'get_deliveries unknown id');
SELECT throws_ok($$SELECT webhooks.rotate_secret('00000000-0000-0000-0000-000000000000')$$,
    'WH404', NULL, 'rotate_secret unknown id');
SELECT throws_ok($$SELECT webhooks.get_delivery_attempts(-1)$$,
    'WH404', 'delivery_id: no delivery with id -1', 'get_delivery_attempts unknown id');

-- update_webhook: unknown or mistyped fields (WH012) and the same checks as create ------------
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '{"colour": "red"}')$$,
    'WH012', 'colour: is not a field of a webhook', 'unknown field');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '{"id": "00000000-0000-0000-0000-000000000000"}')$$,
    'WH012', NULL, 'id is not updatable');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '{"max_retries": "5"}')$$,
    'WH012', 'max_retries: expected a JSON number, got "5"', 'max_retries as a string');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '{"max_retries": 2.5}')$$,
    'WH012', 'max_retries: expected an integer, got 2.5', 'max_retries not an integer');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '{"timeout_seconds": 1e10}')$$,
    'WH012', NULL, 'timeout_seconds beyond integer range');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '{"enabled": "yes"}')$$,
    'WH012', 'enabled: expected a JSON boolean, got "yes"', 'enabled as a string');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '{"name": null}')$$,
    'WH012', NULL, 'name null');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '{"url": 5}')$$,
    'WH012', NULL, 'url as a number');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '{"secret": null}')$$,
    'WH012', NULL, 'secret null');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '[]')$$,
    'WH012', 'changes: must be a JSON object of fields to change, got []', 'changes not an object');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '{"name": " "}')$$,
    'WH001', NULL, 'update: blank name');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '{"url": "ftp://e.com"}')$$,
    'WH003', NULL, 'update: ftp url');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '{"max_retries": -1}')$$,
    'WH008', NULL, 'update: negative max_retries');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '{"headers": {"Content-Type": "x"}}')$$,
    'WH010', NULL, 'update: reserved header');
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook), '{"secret": "short"}')$$,
    'WH011', NULL, 'update: short secret');
-- A valid change together with a bad one: neither is applied, triggers untouched.
SELECT throws_ok($$SELECT webhooks.update_webhook((SELECT id FROM hook),
                   '{"url": "https://new.example", "events": [{"table": "orders"}, {"table": "users", "operations": ["MERGE"]}]}')$$,
    'WH007', NULL, 'update: bad events after good changes');

-- other functions' arguments --------------------------------------------------------------------
SELECT throws_ok($$SELECT webhooks.get_deliveries((SELECT id FROM hook), 0)$$,
    'WH008', 'limit: 0 is out of range; expected an integer from 1 to 1000', 'get_deliveries limit 0');
SELECT throws_ok($$SELECT webhooks.get_deliveries((SELECT id FROM hook), 10, -1)$$,
    'WH008', NULL, 'get_deliveries negative offset');
SELECT throws_ok($$SELECT webhooks.rotate_secret((SELECT id FROM hook), 'short')$$,
    'WH011', NULL, 'rotate_secret short secret');
SELECT throws_ok($$SELECT webhooks.rotate_secret((SELECT id FROM hook), NULL, '-1 hour')$$,
    'WH013', NULL, 'rotate_secret negative grace period');

-- Nothing was written ---------------------------------------------------------------------------
SELECT is((SELECT count(*) FROM webhooks.webhooks), (SELECT webhooks FROM before), 'no webhook was added');
SELECT is((SELECT count(*) FROM webhooks.subscriptions), (SELECT subscriptions FROM before), 'no subscription was added');
SELECT is((SELECT array_agg(secret ORDER BY id) FROM webhooks.secrets), (SELECT secret_values FROM before),
          'secrets unchanged');
SELECT is((SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'webhooks\_capture\_%'), (SELECT triggers FROM before),
          'no trigger was added or removed');
SELECT is((SELECT to_jsonb(w) FROM webhooks.webhooks w WHERE id = (SELECT id FROM hook)), (SELECT taken_row FROM before),
          'the existing webhook is unchanged');

SELECT * FROM finish();
ROLLBACK;
