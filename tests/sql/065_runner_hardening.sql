-- 065: the runner API under abuse. No delivery is leased beyond max_retries + 1 attempts however
-- its leases expire; a delivery whose event was purged is failed, not leased forever; malformed
-- JSON to complete()/release() is WH013 naming the field; the retry delay's jitter stays under
-- the one-day cap. now() is frozen in the transaction: "time passes" by moving next_attempt_at.
BEGIN;
SELECT plan(29);

CREATE TABLE public.items (id int PRIMARY KEY);
CREATE TABLE public.purged (id int PRIMARY KEY);
DO $$
BEGIN
    PERFORM webhooks.create_webhook('one-retry', 'https://receiver.example/a', '[{"table": "items"}]',
                                    max_retries => 1, timeout_seconds => 1);
    PERFORM webhooks.create_webhook('purged', 'https://receiver.example/b', '[{"table": "purged"}]');
END $$;

CREATE FUNCTION pg_temp.hook(hook_name text) RETURNS uuid LANGUAGE sql AS $$
    SELECT id FROM webhooks.webhooks WHERE name = hook_name
$$;
CREATE FUNCTION pg_temp.claim(hook_name text) RETURNS int LANGUAGE sql AS $$
    SELECT count(*)::int FROM webhooks.claim(100, 1, NULL,
                                             ARRAY(SELECT id FROM webhooks.webhooks WHERE name <> hook_name))
$$;
CREATE PROCEDURE pg_temp.expire(hook_name text) LANGUAGE sql AS $$
    UPDATE webhooks.deliveries SET next_attempt_at = now() - interval '1 second'
    WHERE webhook_id = pg_temp.hook(hook_name)
$$;
CREATE FUNCTION pg_temp.state(hook_name text) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(status || '/' || attempts, ',') FROM webhooks.deliveries WHERE webhook_id = pg_temp.hook(hook_name)
$$;

-- Leases expiring over and over: at most max_retries + 1 attempts -------------------------------
INSERT INTO public.items VALUES (1);
SELECT is(pg_temp.claim('one-retry'), 1, 'attempt 1 leased');
CALL pg_temp.expire('one-retry');
SELECT is(pg_temp.claim('one-retry'), 1, 'its lease expired: attempt 2 leased (max_retries 1)');
SELECT is(pg_temp.state('one-retry'), 'leased/2', 'leased, 2 attempts');
CALL pg_temp.expire('one-retry');
SELECT is(pg_temp.claim('one-retry'), 0, 'the last lease expired: no third attempt is leased');
SELECT is(pg_temp.state('one-retry'), 'failed/2', 'the delivery is failed after 2 attempts');
SELECT ok((SELECT completed_at = now() FROM webhooks.deliveries WHERE webhook_id = pg_temp.hook('one-retry')),
          'with completed_at');
SELECT is((SELECT error FROM webhooks.delivery_attempts a JOIN webhooks.deliveries d ON d.id = a.delivery_id
           WHERE d.webhook_id = pg_temp.hook('one-retry') ORDER BY a.id DESC LIMIT 1),
          'lease expired before a result was reported (runner stopped or stalled); no attempts left',
          'the attempt log says the lease expired with no attempts left');
CALL pg_temp.expire('one-retry');
SELECT is(pg_temp.claim('one-retry'), 0, 'and it is never claimed again');

-- max_retries lowered below what a pending delivery already spent
INSERT INTO public.items VALUES (2);
SELECT is(pg_temp.claim('one-retry'), 1, 'a second delivery leased');
SELECT is((SELECT status FROM webhooks.complete((SELECT jsonb_agg(jsonb_build_object(
               'delivery_id', id, 'attempt', attempts, 'status_code', 500))
           FROM webhooks.deliveries WHERE status = 'leased'))), 'pending', 'failed once: pending');
UPDATE webhooks.webhooks SET max_retries = 0 WHERE name = 'one-retry';
CALL pg_temp.expire('one-retry');
SELECT is(pg_temp.claim('one-retry'), 0, 'max_retries lowered to 0: not leased again');
SELECT is((SELECT count(*)::int FROM webhooks.deliveries
           WHERE webhook_id = pg_temp.hook('one-retry') AND status = 'failed' AND attempts - free_attempts = 1), 1,
          'failed with the one attempt it had');

-- An event purged under a delivery (replay racing purge) --------------------------------------
INSERT INTO public.purged VALUES (1);
SELECT is(pg_temp.claim('purged'), 1, 'leased');
DELETE FROM webhooks.captures WHERE id = (SELECT capture_id FROM webhooks.deliveries WHERE webhook_id = pg_temp.hook('purged'));
CALL pg_temp.expire('purged');
SELECT is(pg_temp.claim('purged'), 0, 'its event is gone: nothing to send');
SELECT is(pg_temp.state('purged'), 'failed/1', 'failed at once, not leased again with attempts climbing');
SELECT is((SELECT error FROM webhooks.delivery_attempts a JOIN webhooks.deliveries d ON d.id = a.delivery_id
           WHERE d.webhook_id = pg_temp.hook('purged') ORDER BY a.id DESC LIMIT 1),
          'not sent: the event was purged before it could be delivered', 'and the log says why');

-- Malformed JSON: WH013 naming the field -----------------------------------------------------------
SELECT throws_ok($$SELECT * FROM webhooks.complete('{"delivery_id": 1}')$$, 'WH013',
                 'results: must be a JSON array of objects, not object', 'complete: not an array');
SELECT throws_ok($$SELECT * FROM webhooks.complete('[1]')$$, 'WH013',
                 'results: [0]: must be an object, not number', 'complete: an element not an object');
SELECT throws_ok($$SELECT * FROM webhooks.complete('[{"delivery_id": 1, "attempt": "x"}]')$$, 'WH013',
                 'results: [0].attempt: must be an integer, not "x"', 'complete: attempt a string');
SELECT throws_ok($$SELECT * FROM webhooks.complete('[{"delivery_id": 1e20, "attempt": 1}]')$$, 'WH013',
                 'results: [0].delivery_id: 100000000000000000000 is out of range; expected an integer from -9223372036854775808 to 9223372036854775807',
                 'complete: delivery_id out of range');
SELECT throws_ok($$SELECT * FROM webhooks.complete('[{"delivery_id": 1, "attempt": 1}, {"delivery_id": 2}]')$$,
                 'WH013', 'results: [1].attempt: is required', 'complete: attempt missing in the second element');
SELECT throws_ok($$SELECT * FROM webhooks.complete('[{"delivery_id": 1, "attempt": 1, "latency_ms": 1.5}]')$$,
                 'WH013', NULL, 'complete: a fractional latency');
SELECT throws_ok($$SELECT webhooks.release('[{"delivery_id": -0.0, "attempt": 1.0}]')$$, 'WH013',
                 'leases: [0].attempt: must be an integer, not 1.0', 'release: 1.0 is not written as an integer');
SELECT throws_ok($$SELECT * FROM webhooks.complete('[{"delivery_id": 1, "attempt": 1, "status_code": 99999999999}]')$$,
                 'WH013', NULL, 'complete: a status code beyond integer');
SELECT throws_ok($$SELECT * FROM webhooks.complete('[{"delivery_id": 1, "attempt": 1, "error": 5}]')$$,
                 'WH013', 'results: [0].error: must be a string, not 5', 'complete: error not a string');
SELECT throws_ok($$SELECT webhooks.release('[{"delivery_id": 1, "attempt": [1]}]')$$, 'WH013',
                 'leases: [0].attempt: must be an integer, not [1]', 'release: attempt an array');
SELECT throws_ok($$SELECT webhooks.release('["x"]')$$, 'WH013', 'leases: [0]: must be an object, not string',
                 'release: an element not an object');

-- _retry_delay: jitter inside the cap, Retry-After honoured ---------------------------------------
SELECT is((SELECT count(*)::int FROM generate_series(1, 300)
           WHERE extract(epoch FROM webhooks._retry_delay(86400, 10, 500, NULL)) NOT BETWEEN 64800 AND 86400), 0,
          'a day''s backoff with jitter stays within [18 h, 24 h], never above the cap (300 samples)');
SELECT is(webhooks._retry_delay(5, 1, 429, 7200), interval '2 hours', 'Retry-After is honoured as it is');

SELECT * FROM finish();
ROLLBACK;
