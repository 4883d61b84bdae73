-- 060: the runner API and the delivery policy. claim(): leases, the exact body, every header,
-- both signatures (checked with pgcrypto); complete(): delivered, retry with exponential backoff
-- and jitter, Retry-After, retries exhausted, 410 pauses, 3xx and timeouts are failures,
-- fencing by attempt number and lease expiry; release(); get_deliveries / get_delivery_attempts;
-- secret rotation. now() is frozen in the transaction: "time passes" by moving next_attempt_at.
BEGIN;
SELECT plan(114);

CREATE EXTENSION IF NOT EXISTS pgcrypto;  -- independent HMACs to check the signatures against

CREATE TABLE public.items (id int PRIMARY KEY, name text);
CREATE TABLE public.limits (id int PRIMARY KEY);
CREATE TABLE public.gone (id int PRIMARY KEY);
CREATE TABLE public.leases (id int PRIMARY KEY);
CREATE TABLE public.rotation (id int PRIMARY KEY);

SELECT lives_ok($$SELECT webhooks.create_webhook('main', 'https://receiver.example/main', '[{"table": "items"}]',
    secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', max_retries => 2, timeout_seconds => 7,
    retry_backoff_seconds => 10, headers => '{"X-Custom": "yes", "Authorization": "Bearer abc"}')$$,
    'webhook "main": 2 retries, 10 s backoff, 7 s timeout, custom headers');
DO $$
BEGIN
    PERFORM webhooks.create_webhook('limits', 'https://receiver.example/limits', '[{"table": "limits"}]',
                                    max_retries => 10, retry_backoff_seconds => 10);
    PERFORM webhooks.create_webhook('gone', 'https://receiver.example/gone', '[{"table": "gone"}]');
    PERFORM webhooks.create_webhook('leases', 'https://receiver.example/leases', '[{"table": "leases"}]',
                                    max_retries => 10, timeout_seconds => 5);
    PERFORM webhooks.create_webhook('rotation', 'https://receiver.example/rotation', '[{"table": "rotation"}]',
                                    secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');
END $$;

CREATE FUNCTION pg_temp.hook(hook_name text) RETURNS uuid LANGUAGE sql AS $$
    SELECT id FROM webhooks.webhooks WHERE name = hook_name
$$;
-- Claim what is due for one webhook only (the others are skipped), remembering it under a label.
CREATE TEMP TABLE claims (label text, delivery_id bigint, attempt int, webhook_id uuid, url text, body text,
                          headers jsonb, timeout_seconds int, max_concurrency int, p jsonb);
CREATE FUNCTION pg_temp.claim(label text, hook_name text) RETURNS int LANGUAGE sql AS $$
    WITH c AS (
        INSERT INTO claims
        SELECT label, c.*, c.body::jsonb
        FROM webhooks.claim(100, 30, NULL, ARRAY(SELECT id FROM webhooks.webhooks WHERE name <> hook_name)) c
        RETURNING 1)
    SELECT count(*)::int FROM c
$$;
CREATE FUNCTION pg_temp.claimed(want text) RETURNS claims LANGUAGE sql AS $$
    SELECT * FROM claims WHERE label = want
$$;
-- Report one result; returns the delivery's new status (or 'refused').
CREATE FUNCTION pg_temp.complete(want text, status_code int, error text DEFAULT NULL,
                                 retry_after int DEFAULT NULL, attempt_override int DEFAULT NULL)
RETURNS text LANGUAGE sql AS $$
    SELECT r.status FROM webhooks.complete(jsonb_build_array(jsonb_build_object(
        'delivery_id', (pg_temp.claimed(want)).delivery_id,
        'attempt', coalesce(attempt_override, (pg_temp.claimed(want)).attempt),
        'status_code', status_code, 'error', error, 'latency_ms', 12,
        'response_excerpt', CASE WHEN status_code IS NOT NULL THEN 'response ' || status_code END,
        'retry_after_seconds', retry_after))) r
$$;
CREATE FUNCTION pg_temp.delivery(want text) RETURNS webhooks.deliveries LANGUAGE sql AS $$
    SELECT d.* FROM webhooks.deliveries d WHERE d.id = (pg_temp.claimed(want)).delivery_id
$$;
-- Let time pass for one delivery: its next attempt (or its lease's end) is now in the past.
CREATE PROCEDURE pg_temp.make_due(want text) LANGUAGE sql AS $$
    UPDATE webhooks.deliveries SET next_attempt_at = now() - interval '1 second'
    WHERE id = (pg_temp.claimed(want)).delivery_id
$$;
CREATE FUNCTION pg_temp.attempts_logged(want text) RETURNS int LANGUAGE sql AS $$
    SELECT count(*)::int FROM webhooks.delivery_attempts WHERE delivery_id = (pg_temp.claimed(want)).delivery_id
$$;
CREATE FUNCTION pg_temp.delay(want text) RETURNS numeric LANGUAGE sql AS $$
    SELECT extract(epoch FROM (pg_temp.delivery(want)).next_attempt_at - now())
$$;

-- claim(): one leased, signed request ---------------------------------------------------------
INSERT INTO public.items VALUES (1, 'widget');
SELECT is(pg_temp.claim('first', 'main'), 1, 'claim returns the one due delivery');
SELECT is((pg_temp.claimed('first')).delivery_id,
          (SELECT id FROM webhooks.deliveries WHERE webhook_id = pg_temp.hook('main')), 'with its delivery_id');
SELECT is((pg_temp.claimed('first')).attempt, 1, 'attempt 1');
SELECT is((pg_temp.claimed('first')).url, 'https://receiver.example/main', 'the webhook''s url');
SELECT is((pg_temp.claimed('first')).timeout_seconds, 7, 'the webhook''s timeout');
SELECT is((pg_temp.claimed('first')).webhook_id, pg_temp.hook('main'), 'the webhook id');

-- The body
SELECT is((SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys((pg_temp.claimed('first')).p) k),
          ARRAY['event', 'id', 'old_record', 'record', 'schema', 'table', 'timestamp', 'webhook_id'],
          'the body has exactly the documented keys');
SELECT is((pg_temp.claimed('first')).p - 'id' - 'timestamp',
          jsonb_build_object('event', 'INSERT', 'table', 'items', 'schema', 'public',
                             'record', '{"id": 1, "name": "widget"}'::jsonb, 'old_record', NULL,
                             'webhook_id', pg_temp.hook('main')),
          'event, table, schema, record, old_record and webhook_id');
SELECT matches((pg_temp.claimed('first')).p ->> 'id', '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$',
               'the event id is a uuid');
SELECT matches((pg_temp.claimed('first')).p ->> 'timestamp', '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$',
               'timestamp is ISO 8601 UTC with milliseconds');
SELECT ok(((pg_temp.claimed('first')).p ->> 'timestamp')::timestamptz BETWEEN now() - interval '1 ms' AND clock_timestamp(),
          'timestamp is when the change happened');

-- The headers
SELECT is((SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys((pg_temp.claimed('first')).headers) k),
          ARRAY['Authorization', 'Content-Type', 'User-Agent', 'X-Custom', 'X-Webhook-Signature',
                'webhook-id', 'webhook-signature', 'webhook-timestamp'],
          'exactly the standard headers plus the custom ones');
SELECT is((pg_temp.claimed('first')).headers ->> 'Content-Type', 'application/json', 'Content-Type: application/json');
SELECT matches((pg_temp.claimed('first')).headers ->> 'User-Agent', '^pgwebhooks/\d+\.\d+', 'User-Agent: pgwebhooks/<version>');
SELECT is((pg_temp.claimed('first')).headers ->> 'User-Agent', 'pgwebhooks/' || webhooks.version(), 'the version is version()');
SELECT is((pg_temp.claimed('first')).headers ->> 'X-Custom', 'yes', 'custom header X-Custom sent');
SELECT is((pg_temp.claimed('first')).headers ->> 'Authorization', 'Bearer abc', 'custom header Authorization sent');
SELECT is((pg_temp.claimed('first')).headers ->> 'webhook-id', (pg_temp.claimed('first')).p ->> 'id',
          'webhook-id is the payload id');
SELECT ok(abs(((pg_temp.claimed('first')).headers ->> 'webhook-timestamp')::bigint - extract(epoch FROM now())) < 1,
          'webhook-timestamp is the unix time (seconds) of this attempt');
SELECT matches((pg_temp.claimed('first')).headers ->> 'webhook-signature', '^v1,[A-Za-z0-9+/]{43}=$',
               'webhook-signature: one v1,<base64>');
SELECT is((pg_temp.claimed('first')).headers ->> 'webhook-signature',
          'v1,' || encode(hmac(convert_to(format('%s.%s.%s', (pg_temp.claimed('first')).p ->> 'id',
                                                 (pg_temp.claimed('first')).headers ->> 'webhook-timestamp',
                                                 (pg_temp.claimed('first')).body), 'UTF8'),
                               decode('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'base64'), 'sha256'), 'base64'),
          'webhook-signature is HMAC-SHA256(base64-decoded whsec key, "id.timestamp.body")');
SELECT is((pg_temp.claimed('first')).headers ->> 'X-Webhook-Signature',
          format('t=%s,v1=%s', (pg_temp.claimed('first')).headers ->> 'webhook-timestamp',
                 encode(hmac(convert_to(format('%s.%s', (pg_temp.claimed('first')).headers ->> 'webhook-timestamp',
                                               (pg_temp.claimed('first')).body), 'UTF8'),
                             convert_to('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'UTF8'), 'sha256'), 'hex')),
          'X-Webhook-Signature is t=<ts>,v1=<hex HMAC-SHA256(secret, "ts.body")>');

-- The lease
SELECT is(((pg_temp.delivery('first')).status, (pg_temp.delivery('first')).attempts)::text, '(leased,1)',
          'the delivery is leased, attempt 1');
SELECT is((pg_temp.delivery('first')).next_attempt_at, now() + interval '44 seconds',
          'the lease lasts 2 x timeout + lease margin');
SELECT is(pg_temp.claim('again', 'main'), 0, 'a leased delivery is not claimed again');

-- complete(): 2xx delivers ----------------------------------------------------------------------
SELECT is(pg_temp.complete('first', 200), 'delivered', 'complete 200 -> delivered');
SELECT is(((pg_temp.delivery('first')).status, (pg_temp.delivery('first')).completed_at)::text,
          ('delivered', now())::text, 'status delivered, completed_at set');
SELECT is((SELECT (attempt, status_code, response_excerpt, error, latency_ms)::text FROM webhooks.delivery_attempts
           WHERE delivery_id = (pg_temp.claimed('first')).delivery_id), '(1,200,"response 200",,12)',
          'the attempt is logged with status, excerpt and latency');
SELECT is(pg_temp.complete('first', 200), 'refused', 'a second report for a finished delivery is refused');
SELECT is(pg_temp.attempts_logged('first'), 1, 'and not logged');
SELECT is((SELECT status FROM webhooks.complete('[{"delivery_id": -5, "attempt": 1, "status_code": 200}]')),
          'refused', 'an unknown delivery is refused');

-- complete(): failures, exponential backoff, retries exhausted ------------------------------------
INSERT INTO public.items VALUES (2, 'gadget');
SELECT is(pg_temp.claim('r1', 'main'), 1, 'a second change is claimed');
SELECT is(pg_temp.complete('r1', 500, 'Internal Server Error'), 'pending', 'complete 500 -> pending');
SELECT ok(pg_temp.delay('r1') BETWEEN 7.5 AND 12.5,
          format('first retry after backoff x 2^0 +-25%% (7.5..12.5 s): %s s', pg_temp.delay('r1')));
SELECT is(((pg_temp.delivery('r1')).attempts, (pg_temp.delivery('r1')).completed_at)::text, '(1,)',
          'attempts 1, not completed');
SELECT is(pg_temp.claim('early', 'main'), 0, 'not claimed before its next attempt is due');
CALL pg_temp.make_due('r1');
SELECT is(pg_temp.claim('r2', 'main'), 1, 'claimed again once due');
SELECT is((pg_temp.claimed('r2')).attempt, 2, 'as attempt 2');
SELECT is((pg_temp.claimed('r2')).headers ->> 'webhook-id', (pg_temp.claimed('r1')).headers ->> 'webhook-id',
          'webhook-id is stable across retries');
SELECT is((pg_temp.claimed('r2')).body, (pg_temp.claimed('r1')).body, 'the body is identical');
SELECT is(pg_temp.complete('r2', 503), 'pending', 'complete 503 without Retry-After -> pending');
SELECT ok(pg_temp.delay('r2') BETWEEN 15 AND 25,
          format('second retry after backoff x 2^1 +-25%% (15..25 s): %s s', pg_temp.delay('r2')));
SELECT is((SELECT count(*)::int FROM generate_series(1, 500) g
           WHERE extract(epoch FROM webhooks._retry_delay(10, 3, 500, NULL)) NOT BETWEEN 30 AND 50), 0,
          'the delay after attempt n is backoff x 2^(n-1) x [0.75, 1.25] (500 samples)');
SELECT cmp_ok((SELECT count(DISTINCT webhooks._retry_delay(10, 3, 500, NULL))::int FROM generate_series(1, 50)), '>', 1,
              'with jitter: delays differ');
CALL pg_temp.make_due('r2');
SELECT is(pg_temp.claim('r3', 'main'), 1, 'claimed a third time');
SELECT is(pg_temp.complete('r3', 500), 'failed', 'max_retries 2: the third failed attempt is final');
SELECT is(((pg_temp.delivery('r3')).status, (pg_temp.delivery('r3')).attempts, (pg_temp.delivery('r3')).completed_at)::text,
          ('failed', 3, now())::text, 'failed after 3 attempts, with completed_at');
CALL pg_temp.make_due('r3');
SELECT is(pg_temp.claim('r4', 'main'), 0, 'a failed delivery is never claimed again');

-- get_deliveries / get_delivery_attempts --------------------------------------------------------
SELECT is((SELECT array_agg(status ORDER BY ordinality) FROM webhooks.get_deliveries(pg_temp.hook('main')) WITH ORDINALITY),
          ARRAY['failed', 'delivered'], 'get_deliveries: newest first');
SELECT is((SELECT (attempts, response_status, response_excerpt, latency_ms)::text
           FROM webhooks.get_deliveries(pg_temp.hook('main')) LIMIT 1),
          '(3,500,"response 500",12)', 'with attempts, the last response status, excerpt and latency');
SELECT is((SELECT (event, "table", event_id::text)::text FROM webhooks.get_deliveries(pg_temp.hook('main'), 1, 1)),
          ('INSERT', 'public.items', (pg_temp.claimed('first')).p ->> 'id')::text,
          'limit/offset; event, table and the event id the receiver saw');
SELECT is((SELECT array_agg(attempt || ':' || status_code || ':' || coalesce(error, '-') ORDER BY attempt)
           FROM webhooks.get_delivery_attempts((pg_temp.claimed('r1')).delivery_id)),
          ARRAY['1:500:Internal Server Error', '2:503:-', '3:500:-'], 'get_delivery_attempts lists every attempt');

-- Retry-After, 3xx, timeouts ----------------------------------------------------------------------
INSERT INTO public.limits VALUES (1);
SELECT is(pg_temp.claim('l1', 'limits'), 1, 'limits: claimed');
SELECT is(pg_temp.complete('l1', 429, retry_after => 120), 'pending', '429 -> pending');
SELECT is(pg_temp.delay('l1'), 120::numeric, '429 with Retry-After 120: next attempt exactly 120 s later');
CALL pg_temp.make_due('l1');
SELECT is(pg_temp.claim('l2', 'limits'), 1, 'claimed again');
SELECT is(pg_temp.complete('l2', 503, retry_after => 30), 'pending', '503 -> pending');
SELECT is(pg_temp.delay('l2'), 30::numeric, '503 with Retry-After 30: next attempt 30 s later');
CALL pg_temp.make_due('l2');
SELECT is(pg_temp.claim('l3', 'limits'), 1, 'claimed again');
SELECT is(pg_temp.complete('l3', 500, retry_after => 3600), 'pending', '500 -> pending');
SELECT ok(pg_temp.delay('l3') BETWEEN 30 AND 50, 'Retry-After on a 500 is ignored: backoff x 2^2 +-25%');
CALL pg_temp.make_due('l3');
SELECT is(pg_temp.claim('l4', 'limits'), 1, 'claimed again');
SELECT is(pg_temp.complete('l4', 301), 'pending', '301 is a failure (redirects are not followed)');
SELECT is((SELECT status_code FROM webhooks.delivery_attempts WHERE delivery_id = (pg_temp.claimed('l4')).delivery_id
           AND attempt = 4), 301, 'and logged with its status');
CALL pg_temp.make_due('l4');
SELECT is(pg_temp.claim('l5', 'limits'), 1, 'claimed again');
SELECT is(pg_temp.complete('l5', NULL, 'timeout'), 'pending', 'a timeout (no status) -> pending');
SELECT is((SELECT (status_code, error)::text FROM webhooks.delivery_attempts
           WHERE delivery_id = (pg_temp.claimed('l5')).delivery_id AND attempt = 5), '(,timeout)',
          'the timeout is logged as an error without a status');
CALL pg_temp.make_due('l5');
SELECT is(pg_temp.claim('l6', 'limits'), 1, 'claimed again');
SELECT is(pg_temp.complete('l6', 204), 'delivered', 'any 2xx delivers (204)');

-- A status that is no HTTP status (some servers answer 999) fails that delivery, not the batch
INSERT INTO public.limits VALUES (2), (3);
SELECT is(pg_temp.claim('o', 'limits'), 2, 'two more claimed');
SELECT is((SELECT array_agg(r.status ORDER BY r.delivery_id) FROM webhooks.complete((
               SELECT jsonb_agg(jsonb_build_object('delivery_id', delivery_id, 'attempt', attempt, 'latency_ms', 1,
                   'status_code', CASE WHEN delivery_id = (SELECT min(delivery_id) FROM claims WHERE label = 'o')
                                       THEN 999 ELSE 200 END))
               FROM claims WHERE label = 'o')) r),
          ARRAY['pending', 'delivered'], 'status 999 -> pending, and the rest of the batch still applies');
SELECT is((SELECT (status_code, error)::text FROM webhooks.delivery_attempts
           WHERE delivery_id = (SELECT min(delivery_id) FROM claims WHERE label = 'o')),
          '(,"invalid HTTP status 999")', 'logged as an error without a status');

-- 410 Gone pauses the webhook, keeping its queue -------------------------------------------
INSERT INTO public.gone VALUES (1), (2);
SELECT is(pg_temp.claim('g', 'gone'), 2, 'gone: two deliveries claimed');
SELECT is((SELECT status FROM webhooks.complete((SELECT jsonb_build_array(jsonb_build_object(
               'delivery_id', min(delivery_id), 'attempt', 1, 'status_code', 410, 'latency_ms', 3))
           FROM claims WHERE label = 'g'))),
          'pending', '410 -> the delivery is kept, to be sent after resume');
SELECT is((SELECT (enabled, paused)::text FROM webhooks.webhooks WHERE name = 'gone'), '(t,t)',
          '410 pauses the webhook (it stays enabled: capture goes on)');
SELECT matches((SELECT paused_reason FROM webhooks.webhook_status WHERE name = 'gone'), '410',
               'and keeps the reason');
SELECT is((SELECT status FROM webhooks.complete((SELECT jsonb_build_array(jsonb_build_object(
               'delivery_id', max(delivery_id), 'attempt', 1, 'status_code', 500))
           FROM claims WHERE label = 'g'))),
          'pending', 'the other in-flight delivery is still reported');
UPDATE webhooks.deliveries SET next_attempt_at = now() - interval '1 second' WHERE webhook_id = pg_temp.hook('gone');
INSERT INTO public.gone VALUES (3);
SELECT is(pg_temp.claim('g2', 'gone'), 0, 'a paused webhook''s pending deliveries are not claimed');
SELECT is((SELECT count(*)::int FROM webhooks.deliveries WHERE webhook_id = pg_temp.hook('gone') AND status = 'pending'), 3,
          'they stay pending, and the change made while paused is queued too');
SELECT lives_ok($$SELECT webhooks.resume_webhook(pg_temp.hook('gone'))$$, 'resume it');
SELECT is(pg_temp.claim('g3', 'gone'), 3, 'every queued delivery is claimed again');

-- Fencing: stale attempts and expired leases -------------------------------------------------------
INSERT INTO public.leases VALUES (1);
SELECT is(pg_temp.claim('f1', 'leases'), 1, 'leases: claimed');
SELECT is(pg_temp.complete('f1', 200, attempt_override => 2), 'refused', 'a result for another attempt number is refused');
SELECT is(pg_temp.complete('f1', 200, attempt_override => 0), 'refused', 'attempt 0 is refused');
SELECT is(pg_temp.attempts_logged('f1'), 0, 'a refused result is not logged');
SELECT is((pg_temp.delivery('f1')).status, 'leased', 'the delivery stays leased');
CALL pg_temp.make_due('f1');  -- the lease runs out
SELECT is(pg_temp.complete('f1', 200), 'refused', 'a result reported after the lease expired is refused');
SELECT is(pg_temp.attempts_logged('f1'), 0, 'and not logged');
SELECT is(pg_temp.claim('f2', 'leases'), 1, 'an expired lease is claimed again');
SELECT is((pg_temp.claimed('f2')).attempt, 2, 'with the next attempt number');
SELECT is((SELECT (attempt, status_code, error ~ 'lease expired')::text FROM webhooks.delivery_attempts
           WHERE delivery_id = (pg_temp.claimed('f1')).delivery_id), '(1,,t)',
          'the lost attempt is logged as lease expired');
SELECT is(pg_temp.complete('f1', 200), 'refused', 'the first runner''s late result is still refused');
SELECT is(pg_temp.complete('f2', 200), 'delivered', 'the current lease''s result is accepted');

-- release(): back to pending, attempt not counted ------------------------------------------------
INSERT INTO public.leases VALUES (2);
SELECT is(pg_temp.claim('x1', 'leases'), 1, 'claimed');
SELECT is((SELECT webhooks.release(jsonb_build_array(jsonb_build_object('delivery_id', delivery_id, 'attempt', 9)))
           FROM claims WHERE label = 'x1'), 0, 'release with a wrong attempt releases nothing');
SELECT is((SELECT webhooks.release(jsonb_build_array(jsonb_build_object('delivery_id', delivery_id, 'attempt', attempt)))
           FROM claims WHERE label = 'x1'), 1, 'release returns how many were released');
SELECT is(((pg_temp.delivery('x1')).status, (pg_temp.delivery('x1')).attempts - (pg_temp.delivery('x1')).free_attempts,
           (pg_temp.delivery('x1')).next_attempt_at)::text,
          ('pending', 0, now())::text, 'released: pending, attempt not counted, due at once');
SELECT is(pg_temp.claim('x2', 'leases'), 1, 'a released delivery is claimed again at once');
SELECT is((pg_temp.claimed('x2')).attempt, 2, 'under a new attempt number (the released one is never reused)');
SELECT is(pg_temp.complete('x1', 200), 'refused', 'a late report for the released attempt 1 is refused');
SELECT is(pg_temp.complete('x2', 200), 'delivered', 'the re-claimed attempt 2 completes');

-- Secret rotation: two signatures during the grace period ----------------------------------------
SELECT is((SELECT previous_secrets_expire_at FROM webhooks.rotate_secret(pg_temp.hook('rotation'), 'a new plain secret, 33 chars long')),
          now() + interval '24 hours', 'rotate_secret: the old secret expires after 24 hours by default');
INSERT INTO public.rotation VALUES (1);
SELECT is(pg_temp.claim('s1', 'rotation'), 1, 'rotation: claimed');
SELECT matches((pg_temp.claimed('s1')).headers ->> 'webhook-signature', '^v1,[A-Za-z0-9+/]{43}= v1,[A-Za-z0-9+/]{43}=$',
               'webhook-signature carries two space-separated v1 signatures');
SELECT matches((pg_temp.claimed('s1')).headers ->> 'X-Webhook-Signature', '^t=\d+,v1=[0-9a-f]{64},v1=[0-9a-f]{64}$',
               'X-Webhook-Signature carries two v1= entries');
SELECT ok(string_to_array((pg_temp.claimed('s1')).headers ->> 'webhook-signature', ' ') @> ARRAY[
              'v1,' || encode(hmac(convert_to(format('%s.%s.%s', (pg_temp.claimed('s1')).p ->> 'id',
                                                     (pg_temp.claimed('s1')).headers ->> 'webhook-timestamp',
                                                     (pg_temp.claimed('s1')).body), 'UTF8'),
                                   convert_to('a new plain secret, 33 chars long', 'UTF8'), 'sha256'), 'base64'),
              'v1,' || encode(hmac(convert_to(format('%s.%s.%s', (pg_temp.claimed('s1')).p ->> 'id',
                                                     (pg_temp.claimed('s1')).headers ->> 'webhook-timestamp',
                                                     (pg_temp.claimed('s1')).body), 'UTF8'),
                                   decode('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'base64'), 'sha256'), 'base64')],
          'one signature by the new (plain) secret, one by the old (whsec_) one');
UPDATE webhooks.secrets SET expires_at = now() - interval '1 second'
WHERE webhook_id = pg_temp.hook('rotation') AND expires_at IS NOT NULL;
INSERT INTO public.rotation VALUES (2);
SELECT is(pg_temp.claim('s2', 'rotation'), 1, 'after the grace period: claimed');
SELECT matches((pg_temp.claimed('s2')).headers ->> 'webhook-signature', '^v1,[A-Za-z0-9+/]{43}=$',
               'one webhook-signature left');
SELECT matches((pg_temp.claimed('s2')).headers ->> 'X-Webhook-Signature', '^t=\d+,v1=[0-9a-f]{64}$',
               'one X-Webhook-Signature v1= left');

-- claim()'s batching arguments --------------------------------------------------------------------
INSERT INTO public.limits SELECT g FROM generate_series(10, 14) g;
INSERT INTO public.leases SELECT g FROM generate_series(10, 14) g;
SELECT is((SELECT count(*)::int FROM webhooks.claim(per_webhook_limit => 2)), 4,
          'per_webhook_limit 2: two of each webhook''s five');
SELECT is((SELECT array_agg(DISTINCT webhook_id) FROM webhooks.claim(skip_webhooks => ARRAY[pg_temp.hook('limits')])),
          ARRAY[pg_temp.hook('leases')], 'skip_webhooks leaves a webhook out');
SELECT is((SELECT count(*)::int FROM webhooks.claim(batch_size => 2)), 2, 'batch_size caps a claim');
SELECT is((SELECT count(*)::int FROM webhooks.claim()), 1, 'the last one');

SELECT * FROM finish();
ROLLBACK;
