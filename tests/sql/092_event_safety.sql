-- 092: events that cannot hurt other deliveries, as an attacker holding a role would try: a poison
-- event (nested 1,000 deep, stored behind publish()'s back), a delivery that cannot be signed,
-- forged pgwebhooks.* alerts, test events receivers cannot tell, two alert subscribers failing
-- now and then, a 2,000-character pause reason in a NOTIFY, failed circuit probes reusing attempt
-- numbers, and \u0000 in complete()/release(). now() is frozen in the transaction.
BEGIN;
SELECT plan(50);

SELECT lives_ok($$SELECT webhooks.create_event_type('order.created')$$, 'an event type');
CREATE TEMP TABLE hooks AS
SELECT 'normal' AS k, id FROM webhooks.create_webhook('normal', 'https://e.com/normal', '[{"event_type": "order.created"}]')
UNION ALL
SELECT 'broken', id FROM webhooks.create_webhook('broken', 'https://e.com/broken', '[{"event_type": "order.created"}]');
CREATE FUNCTION pg_temp.hook(name text) RETURNS uuid LANGUAGE sql AS $$ SELECT id FROM hooks WHERE k = name $$;
CREATE TEMP TABLE claims (label text, delivery_id bigint, attempt int, webhook_id uuid, body text, headers jsonb);
CREATE FUNCTION pg_temp.claim(label text) RETURNS int LANGUAGE sql AS $$
    WITH c AS (INSERT INTO claims SELECT label, c.delivery_id, c.attempt, c.webhook_id, c.body, c.headers
               FROM webhooks.claim(1000) c RETURNING 1)
    SELECT count(*)::int FROM c
$$;
CREATE FUNCTION pg_temp.report(label text, code int) RETURNS SETOF text LANGUAGE sql AS $$
    SELECT r.status FROM webhooks.complete((
        SELECT jsonb_agg(jsonb_build_object('delivery_id', c.delivery_id, 'attempt', c.attempt, 'status_code', code))
        FROM claims c WHERE c.label = report.label)) r
$$;

-- A poison event never blocks others ------------------------------------------------------------
-- Stored behind publish()'s back (an event from before the limits, or inserted by hand).
INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count, event_type, data)
VALUES ('EVENT', 0, 'webhooks', 'events', ARRAY[pg_temp.hook('normal')], 1, 'order.created',
        (repeat('[', 1000) || repeat(']', 1000))::jsonb);
SELECT lives_ok($$SELECT webhooks.publish('order.created', '{"n": 1}')$$, 'and a normal event after it');
SELECT lives_ok($$SELECT pg_temp.claim('poison')$$, 'claim() does not fail on an event nested 1,000 deep');
SELECT ok((SELECT count(*) FROM claims WHERE label = 'poison' AND body::jsonb -> 'data' = '{"n": 1}') = 2,
          'the normal event is leased (for both webhooks)');
SELECT is((SELECT body::jsonb -> 'data' FROM claims WHERE label = 'poison' AND body LIKE '%[[[[%'),
          (repeat('[', 1000) || repeat(']', 1000))::jsonb, 'the deep one is rendered too, compactly, whole');
SELECT is(webhooks._compact_json('{"a b": [1, 2, {"c\" ,": "x, y \\"}], "d": null}'),
          '{"d":null,"a b":[1,2,{"c\" ,":"x, y \\"}]}', '_compact_json keeps spaces inside strings only');
SELECT is((SELECT count(*)::int FROM pg_temp.report('poison', 200)), 3, 'all delivered');

-- A delivery that cannot be signed (its secret broken by hand): failed with its reason, the other
-- webhook's delivery of the same event leased.
UPDATE webhooks.secrets SET secret = 'whsec_@@@ not base64 @@@' WHERE webhook_id = pg_temp.hook('broken');
SELECT lives_ok($$SELECT webhooks.publish('order.created', '{"n": 2}')$$, 'an event for both webhooks');
SELECT lives_ok($$SELECT pg_temp.claim('isolated')$$, 'claim() survives a delivery it cannot sign');
SELECT is((SELECT array_agg(webhook_id) FROM claims WHERE label = 'isolated'), ARRAY[pg_temp.hook('normal')],
          'the other webhook''s delivery is leased');
SELECT is((SELECT array_agg((status, attempts)::text) FROM webhooks.deliveries
           WHERE webhook_id = pg_temp.hook('broken') AND status <> 'delivered'),
          ARRAY['(failed,1)'], 'the unsignable one is failed');
SELECT matches((SELECT error FROM webhooks.delivery_attempts WHERE webhook_id = pg_temp.hook('broken') AND error IS NOT NULL),
               '^not sent: the event cannot be rendered or signed', 'with its reason in the attempt log');

-- Limits at publish() and send_test ------------------------------------------------------------
SELECT lives_ok($$SELECT webhooks.publish('order.created', (repeat('[', 64) || repeat(']', 64))::jsonb)$$,
                '64 levels of nesting are allowed');
SELECT throws_ok($$SELECT webhooks.publish('order.created', (repeat('[', 65) || repeat(']', 65))::jsonb)$$,
                 'WH030', NULL, '65 levels are WH030');
SELECT throws_ok($$SELECT webhooks.publish('order.created', (repeat('{"a":', 800) || '1' || repeat('}', 800))::jsonb)$$,
                 'WH030', NULL, 'objects nested 800 deep are WH030');
SELECT throws_ok($$SELECT webhooks.publish('order.created', jsonb_build_object('s', repeat('x', 1048576)))$$,
                 'WH031', NULL, 'more than 1 MB of JSON text is WH031');
SELECT throws_ok($$SELECT webhooks.publish('order.created', jsonb_build_object('s', repeat(chr(1), 180000)))$$,
                 'WH031', NULL, 'so is a small jsonb whose text is over 1 MB (control characters print as \u0001)');
SELECT lives_ok($$SELECT webhooks.publish('order.created', jsonb_build_object('s', repeat('x', 1000000)))$$,
                'just under 1 MB is allowed');
SELECT throws_ok($$SELECT webhooks.send_test(pg_temp.hook('normal'), event_type => 'order.created',
                                             data => (repeat('[', 100) || repeat(']', 100))::jsonb)$$,
                 'WH030', NULL, 'send_test: data too deep');
SELECT throws_ok($$SELECT webhooks.send_test(pg_temp.hook('normal'), event => 'INSERT', "table" => 'x',
                                             record => jsonb_build_object('a', repeat('y', 1100000)))$$,
                 'WH031', NULL, 'send_test: record too large');

-- Reserved names ------------------------------------------------------------------------------
SELECT throws_ok($$SELECT webhooks.publish('pgwebhooks.webhook.failing', '{"webhook_id": "forged"}')$$, 'WH032',
                 'event_type: ''pgwebhooks.webhook.failing'' is reserved: pgwebhooks.* events are published by pgwebhooks only',
                 'an admin cannot forge an alert');
SET LOCAL ROLE webhooks_publisher;
SELECT throws_ok($$SELECT webhooks.publish('pgwebhooks.delivery.exhausted', '{}')$$, 'WH032', NULL,
                 'neither can a publisher');
RESET ROLE;

-- Test events are marked, and stay verifiable ---------------------------------------------------
UPDATE webhooks.webhooks SET paused = true, paused_reason = 'out of the way', paused_at = now()
WHERE name IN ('normal', 'broken');
CREATE TEMP TABLE profiled AS
SELECT p AS profile, (SELECT id FROM webhooks.create_webhook('p_' || p, 'https://e.com/' || p, '[{"event_type": "order.created"}]',
                                                             profile => p)) AS id
FROM unnest(ARRAY['standard', 'fluxbase', 'truss', 'rowbase', 'flux', 'supabase', 'hasura']) p;
SELECT lives_ok($$SELECT webhooks.send_test(id) FROM profiled$$, 'send_test through every profile');
SELECT lives_ok($$SELECT webhooks.send_test(id, event_type => 'order.created', data => '{"x": 1}') FROM profiled$$,
                'and as an application event');
SELECT is(pg_temp.claim('tests'), 14, 'claimed');
SELECT is((SELECT count(*)::int FROM claims c JOIN profiled p ON p.id = c.webhook_id
           WHERE c.label = 'tests' AND (c.body::jsonb -> 'test') = 'true' AND c.headers ->> 'webhook-test' = 'true'),
          14, 'each carries "test": true in its body and a webhook-test: true header');
SELECT is((SELECT count(*)::int FROM claims c JOIN profiled p ON p.id = c.webhook_id
           CROSS JOIN LATERAL (SELECT array_agg(s.secret ORDER BY s.id DESC) AS secrets FROM webhooks.secrets s
                               WHERE s.webhook_id = c.webhook_id) k
           CROSS JOIN LATERAL (SELECT webhooks._sign_headers(c.headers ->> 'webhook-id', (c.headers ->> 'webhook-timestamp')::bigint,
                                                             c.body, k.secrets) AS signed) g
           -- (fluxbase's legacy X-Webhook-Signature is its own, checked through _profile_headers)
           WHERE c.label = 'tests'
             AND c.headers @> CASE WHEN p.profile = 'fluxbase' THEN g.signed - 'X-Webhook-Signature' ELSE g.signed END
             AND c.headers @> webhooks._profile_headers(p.profile, g.signed, c.body, k.secrets[1])),
          14, 'every signature header is over the body as sent (marker included)');
SELECT is((SELECT count(*)::int FROM claims WHERE label = 'poison' AND headers ? 'webhook-test'), 0,
          'real events carry no test marker');

-- Alerts cannot loop: two alert subscribers failing now and then --------------------------------
SELECT lives_ok($$SELECT webhooks.create_webhook('watch_a', 'https://e.com/a', '[{"event_type": "pgwebhooks.*"}]', max_retries => 50)$$,
                'alert subscriber a');
SELECT lives_ok($$SELECT webhooks.create_webhook('watch_b', 'https://e.com/b', '[{"event_type": "pgwebhooks.*"}]', max_retries => 50)$$,
                'alert subscriber b');
DELETE FROM webhooks.delivery_attempts;
DELETE FROM webhooks.deliveries;
UPDATE webhooks.captures SET fanned_out = row_count;
UPDATE webhooks.webhooks SET paused = false, paused_reason = NULL, paused_at = NULL WHERE paused;
SELECT lives_ok($$SELECT webhooks.pause_webhook(pg_temp.hook('normal'), 'the seed alert')$$, 'one alert to start it');
DO $$
DECLARE
    round int;
BEGIN
    FOR round IN 1..16 LOOP
        UPDATE webhooks.deliveries SET next_attempt_at = now() - interval '1 second' WHERE status = 'pending';
        UPDATE webhooks.endpoints SET circuit = 'closed', retry_at = NULL, consecutive_failures = 0,
                                      probe_delivery_id = NULL, probe_attempt = NULL;
        -- Three failures, then a success, over and over.
        PERFORM webhooks.complete(coalesce(jsonb_agg(jsonb_build_object(
                    'delivery_id', c.delivery_id, 'attempt', c.attempt,
                    'status_code', CASE WHEN round % 4 = 0 THEN 200 ELSE 503 END)), '[]'))
        FROM webhooks.claim(1000) c;
    END LOOP;
END
$$;
SELECT is((SELECT count(*)::int FROM webhooks.captures WHERE event_type LIKE 'pgwebhooks.%'), 1,
          'no alert is raised by the failures of alert deliveries: the seed alert is the only one');
SELECT is((SELECT count(*)::int FROM webhooks.deliveries d JOIN webhooks.webhooks w ON w.id = d.webhook_id
           WHERE w.name IN ('watch_a', 'watch_b') AND d.status = 'delivered'), 2, 'and it reached both, in the end');

-- Alert NOTIFY payloads fit ---------------------------------------------------------------------
SELECT lives_ok($$SELECT webhooks.resume_webhook(pg_temp.hook('normal'))$$, 'resumed');
SELECT lives_ok($$SELECT webhooks.pause_webhook(pg_temp.hook('normal'), repeat(chr(128512), 2000))$$,
                'pause_webhook with a 2,000-character reason of 8,000 bytes');
SELECT ok(octet_length(webhooks._alert_note(jsonb_build_object('kind', 'failing', 'name', repeat('n', 200),
              'reason', repeat('é', 2000), 'last_error', repeat(chr(1), 2000), 'other', repeat('x', 3000)))) < 8000,
          'a NOTIFY payload is cut to fit 8000 bytes');
SELECT ok(webhooks._alert_note(jsonb_build_object('kind', 'paused', 'reason', repeat('r', 9000)))
          LIKE '%"reason": "' || repeat('r', 1000) || '… [truncated]"%', 'with a marker');
SELECT is(webhooks._alert_note('{"kind": "paused", "reason": "short"}'), '{"kind": "paused", "reason": "short"}',
          'a short alert is left as it is');

-- Attempt numbers strictly increase; a failed probe spends nothing ------------------------------
SELECT lives_ok($$SELECT webhooks.create_webhook('dead', 'https://e.com/dead', '[{"event_type": "order.created"}]', max_retries => 1)$$,
                'a webhook allowing one retry');
DELETE FROM claims;
SELECT lives_ok($$SELECT webhooks.publish('order.created', '{"probe": true}')$$, 'one event for it');
UPDATE webhooks.webhooks SET paused = true, paused_reason = 'x', paused_at = now() WHERE name <> 'dead' AND NOT paused;
UPDATE webhooks.endpoints SET circuit = 'open', retry_at = now() - interval '1 second', times_opened = 1
WHERE webhook_id = (SELECT id FROM webhooks.webhooks WHERE name = 'dead');
CREATE FUNCTION pg_temp.probe(label text) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    UPDATE webhooks.endpoints SET retry_at = now() - interval '1 second'
    WHERE webhook_id = (SELECT id FROM webhooks.webhooks WHERE name = 'dead') AND circuit = 'open';
    UPDATE webhooks.deliveries SET next_attempt_at = now() - interval '1 second' WHERE status = 'pending';
    PERFORM pg_temp.claim(label);
    RETURN QUERY SELECT * FROM pg_temp.report(label, 503);
END
$$;
SELECT is((SELECT array_agg(s) FROM pg_temp.probe('p1') s), ARRAY['pending'], 'probe 1 fails: pending');
SELECT is((SELECT array_agg(s) FROM pg_temp.probe('p2') s), ARRAY['pending'], 'probe 2 fails: pending');
SELECT is((SELECT array_agg(s) FROM pg_temp.probe('p3') s), ARRAY['pending'],
          'probe 3 fails: still pending (max_retries 1: failed probes spend nothing)');
SELECT is((SELECT array_agg(a.attempt ORDER BY a.id) FROM webhooks.delivery_attempts a
           JOIN webhooks.deliveries d ON d.id = a.delivery_id JOIN webhooks.webhooks w ON w.id = d.webhook_id
           WHERE w.name = 'dead'), ARRAY[1, 2, 3], 'the log has attempts 1, 2, 3: no number twice');
SELECT is((SELECT (d.attempts, d.free_attempts)::text FROM webhooks.deliveries d JOIN webhooks.webhooks w ON w.id = d.webhook_id
           WHERE w.name = 'dead'), '(3,3)', 'deliveries.attempts is the number of attempts logged, all of them free');
UPDATE webhooks.endpoints SET retry_at = now() - interval '1 second'
WHERE webhook_id = (SELECT id FROM webhooks.webhooks WHERE name = 'dead');
UPDATE webhooks.deliveries SET next_attempt_at = now() - interval '1 second' WHERE status = 'pending';
SELECT is(pg_temp.claim('p4'), 1, 'the next probe is leased');
SELECT is((SELECT attempt FROM claims WHERE label = 'p4'), 4, 'as attempt 4');
SELECT is((SELECT array_agg(status) FROM pg_temp.report('p1', 200) status), ARRAY['refused'],
          'a late duplicate report for attempt 1 is refused (the lease is attempt 4''s)');

-- \u0000 in complete() and release() -----------------------------------------------------------
SELECT throws_ok($$SELECT * FROM webhooks.complete('[{"delivery_id": 1, "attempt": 1, "status_code": 200, "error": "a\u0000b"}]')$$,
                 'WH034', NULL, 'complete(): \u0000 is WH034, not 22P05');
SELECT throws_ok($$SELECT webhooks.release('[{"delivery_id": 1, "attempt": 1, "x": "\u0000"}]')$$,
                 'WH034', NULL, 'release(): \u0000 is WH034');

SELECT * FROM finish();
ROLLBACK;
