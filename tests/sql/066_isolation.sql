-- 066: isolation between webhooks. The endpoint circuit breaker (closed -> open -> half_open ->
-- closed or open again, no attempts spent while open, one probe at a time, failed probes not
-- counted), max_concurrency and rate_limit_per_second honoured by claim(), fairness across
-- webhooks, next_due_in(). now() is frozen in the transaction: "time passes" by moving
-- next_attempt_at, retry_at and tokens_at.
BEGIN;
SELECT plan(43);

CREATE TABLE public.dead (id int PRIMARY KEY);
CREATE TABLE public.capped (id int PRIMARY KEY);
CREATE TABLE public.rated (id int PRIMARY KEY);
CREATE TABLE public.hog (id int PRIMARY KEY);
CREATE TABLE public.small (id int PRIMARY KEY);
DO $$
BEGIN
    PERFORM webhooks.create_webhook('dead', 'https://receiver.example/dead', '[{"table": "dead"}]', max_retries => 3);
    PERFORM webhooks.create_webhook('capped', 'https://receiver.example/capped', '[{"table": "capped"}]');
    PERFORM webhooks.create_webhook('rated', 'https://receiver.example/rated', '[{"table": "rated"}]');
    PERFORM webhooks.create_webhook('hog', 'https://receiver.example/hog', '[{"table": "hog"}]');
    PERFORM webhooks.create_webhook('small', 'https://receiver.example/small', '[{"table": "small"}]');
END $$;
UPDATE webhooks.webhooks SET max_concurrency = 2 WHERE name = 'capped';
UPDATE webhooks.webhooks SET rate_limit_per_second = 3 WHERE name = 'rated';

CREATE FUNCTION pg_temp.hook(hook_name text) RETURNS uuid LANGUAGE sql AS $$
    SELECT id FROM webhooks.webhooks WHERE name = hook_name
$$;
CREATE TEMP TABLE claims (label text, delivery_id bigint, attempt int, webhook_id uuid);
-- Claim for one webhook only, remembering what was leased under a label.
CREATE FUNCTION pg_temp.claim(label text, hook_name text, batch int DEFAULT 100) RETURNS int LANGUAGE sql AS $$
    WITH c AS (
        INSERT INTO claims
        SELECT label, c.delivery_id, c.attempt, c.webhook_id
        FROM webhooks.claim(batch, 30, NULL, ARRAY(SELECT id FROM webhooks.webhooks WHERE name <> hook_name)) c
        RETURNING 1)
    SELECT count(*)::int FROM c
$$;
-- Report every delivery claimed under `label` with one status code (NULL: a connection error).
CREATE FUNCTION pg_temp.report(label text, code int) RETURNS SETOF text LANGUAGE sql AS $$
    SELECT r.status FROM webhooks.complete((
        SELECT jsonb_agg(jsonb_build_object('delivery_id', c.delivery_id, 'attempt', c.attempt, 'status_code', code,
                                            'error', CASE WHEN code IS NULL THEN 'connection refused' END))
        FROM claims c WHERE c.label = report.label)) r
$$;
CREATE FUNCTION pg_temp.endpoint(hook_name text) RETURNS webhooks.endpoints LANGUAGE sql AS $$
    SELECT * FROM webhooks.endpoints WHERE webhook_id = pg_temp.hook(hook_name)
$$;
CREATE PROCEDURE pg_temp.all_due(hook_name text) LANGUAGE sql AS $$
    UPDATE webhooks.deliveries SET next_attempt_at = now() - interval '1 second'
    WHERE webhook_id = pg_temp.hook(hook_name) AND status = 'pending'
$$;
CREATE FUNCTION pg_temp.spent(hook_name text) RETURNS int LANGUAGE sql AS $$
    SELECT sum(attempts - free_attempts)::int FROM webhooks.deliveries WHERE webhook_id = pg_temp.hook(hook_name)
$$;

SELECT is((SELECT count(*)::int FROM webhooks.webhooks w JOIN webhooks.endpoints e ON e.webhook_id = w.id), 5,
          'every webhook has its endpoints row from its creation');
SELECT is((SELECT DISTINCT (circuit, consecutive_failures, tokens)::text FROM webhooks.endpoints), '(closed,0,0)',
          'closed, no failures; the rate limit''s bucket starts full (tokens as of 1970)');

-- The circuit breaker -------------------------------------------------------------------------
INSERT INTO public.dead SELECT generate_series(1, 8);
SELECT is(pg_temp.claim('d1', 'dead'), 8, 'dead: 8 deliveries leased');
SELECT is((pg_temp.endpoint('dead')).circuit, 'closed', 'the circuit starts closed');
DELETE FROM claims WHERE label = 'd1' AND delivery_id > (SELECT min(delivery_id) + 3 FROM claims WHERE label = 'd1');
SELECT is((SELECT count(*)::int FROM pg_temp.report('d1', 500)), 4, 'four of them fail with 500');
SELECT is(((pg_temp.endpoint('dead')).circuit, (pg_temp.endpoint('dead')).consecutive_failures)::text, '(closed,4)',
          'four failures in a row: still closed');
INSERT INTO claims SELECT 'd2', id, attempts, webhook_id FROM webhooks.deliveries
WHERE webhook_id = pg_temp.hook('dead') AND status = 'leased';
SELECT is((SELECT count(*)::int FROM pg_temp.report('d2', NULL)), 4, 'the other four: connection refused');
SELECT is((pg_temp.endpoint('dead')).circuit, 'open', 'eight failures in a row (threshold 5): the circuit opens');
SELECT is((pg_temp.endpoint('dead')).retry_at, now() + interval '1 second', 'for 1 s, the first time');
SELECT is((SELECT count(*)::int FROM webhooks.delivery_attempts a JOIN webhooks.deliveries d ON d.id = a.delivery_id
           WHERE d.webhook_id = pg_temp.hook('dead') AND a.error LIKE '%circuit opened for 1 s after 8 consecutive failures'),
          1, 'the attempt log says so, once');
SELECT is(pg_temp.spent('dead'), 8, 'attempts really made were counted: 8');
CALL pg_temp.all_due('dead');
SELECT is(pg_temp.claim('d3', 'dead'), 0, 'open: nothing is claimed, although all 8 are due');
SELECT is(pg_temp.spent('dead'), 8, 'and no attempt is spent');
SELECT is(webhooks.next_due_in(NULL, ARRAY(SELECT id FROM webhooks.webhooks WHERE name <> 'dead')), 1::float8,
          'next_due_in: the probe, 1 s from now');

UPDATE webhooks.endpoints SET retry_at = now() - interval '1 ms' WHERE webhook_id = pg_temp.hook('dead');
SELECT is(webhooks.next_due_in(NULL, ARRAY(SELECT id FROM webhooks.webhooks WHERE name <> 'dead')), 0::float8,
          'next_due_in: 0 once the probe may go');
SELECT is(pg_temp.claim('probe1', 'dead'), 1, 'the cooldown is over: exactly one probe is leased');
SELECT is((pg_temp.endpoint('dead')).circuit, 'half_open', 'half_open');
SELECT is(((pg_temp.endpoint('dead')).probe_delivery_id, (pg_temp.endpoint('dead')).probe_attempt)::text,
          (SELECT (delivery_id, attempt)::text FROM claims WHERE label = 'probe1'), 'the probe is recorded');
SELECT is(pg_temp.claim('probe2', 'dead'), 0, 'one probe at a time');
SELECT is(webhooks.next_due_in(NULL, ARRAY(SELECT id FROM webhooks.webhooks WHERE name <> 'dead')), NULL,
          'next_due_in: nothing to do while the probe is out');
SELECT is((SELECT * FROM pg_temp.report('probe1', 503)), 'pending', 'the probe fails (503): pending');
SELECT is(pg_temp.spent('dead'), 8, 'the failed probe does not count against its delivery');
SELECT is(((pg_temp.endpoint('dead')).circuit, (pg_temp.endpoint('dead')).times_opened)::text, '(open,2)',
          'the circuit opens again');
SELECT is((pg_temp.endpoint('dead')).retry_at, now() + interval '2 seconds', 'for twice as long');
SELECT is((SELECT a.error FROM webhooks.delivery_attempts a WHERE a.delivery_id = (SELECT delivery_id FROM claims WHERE label = 'probe1')
           ORDER BY a.id DESC LIMIT 1),
          'circuit probe failed: this attempt does not count; circuit opened for 2 s after 9 consecutive failures',
          'the probe''s attempt is logged with the state change');
UPDATE webhooks.endpoints SET retry_at = now() - interval '1 ms' WHERE webhook_id = pg_temp.hook('dead');
SELECT is(pg_temp.claim('probe3', 'dead'), 1, 'after the second cooldown: one probe');
SELECT is((SELECT * FROM pg_temp.report('probe3', 200)), 'delivered', 'the probe succeeds');
SELECT is(((pg_temp.endpoint('dead')).circuit, (pg_temp.endpoint('dead')).consecutive_failures,
           (pg_temp.endpoint('dead')).times_opened)::text, '(closed,0,0)', 'the circuit closes and forgets');
SELECT is((pg_temp.endpoint('dead')).circuit_reason, 'closed: the endpoint answered', 'with its reason');
CALL pg_temp.all_due('dead');
SELECT is(pg_temp.claim('d4', 'dead'), 7, 'the backlog flows again');
SELECT is((SELECT count(*)::int FROM webhooks.deliveries WHERE webhook_id = pg_temp.hook('dead') AND status = 'failed'), 0,
          'nothing failed because of the outage (max_retries 3)');
SELECT is((SELECT count(*)::int FROM pg_temp.report('d4', 404)), 7, 'a 4xx');
SELECT is((pg_temp.endpoint('dead')).consecutive_failures, 0, 'is an answer: not a circuit failure');

-- max_concurrency ---------------------------------------------------------------------------------
INSERT INTO public.capped SELECT generate_series(1, 5);
SELECT is(pg_temp.claim('c1', 'capped'), 2, 'max_concurrency 2: two leased');
SELECT is(pg_temp.claim('c2', 'capped'), 0, 'none more while both are in flight (counted across runners)');
SELECT is((SELECT count(*)::int FROM webhooks.claim(100, 30, 50, ARRAY(SELECT id FROM webhooks.webhooks WHERE name <> 'capped'))),
          0, 'the column wins over the runner''s per_webhook_limit');
DELETE FROM claims WHERE label = 'c1' AND delivery_id = (SELECT max(delivery_id) FROM claims WHERE label = 'c1');
SELECT is((SELECT * FROM pg_temp.report('c1', 200)), 'delivered', 'one finishes');
SELECT is(pg_temp.claim('c3', 'capped'), 1, 'room for one more');

-- rate_limit_per_second ---------------------------------------------------------------------------
INSERT INTO public.rated SELECT generate_series(1, 10);
SELECT is(pg_temp.claim('r1', 'rated'), 3, 'rate 3/s: a full bucket gives 3');
SELECT is(pg_temp.claim('r2', 'rated'), 0, 'then nothing in the same instant');
SELECT ok(webhooks.next_due_in(NULL, ARRAY(SELECT id FROM webhooks.webhooks WHERE name <> 'rated')) BETWEEN 0.33 AND 0.34,
          'next_due_in: the next token, 1/3 s away');
UPDATE webhooks.endpoints SET tokens_at = now() - interval '700 ms' WHERE webhook_id = pg_temp.hook('rated');
SELECT is(pg_temp.claim('r3', 'rated'), 2, '0.7 s later: two more');

-- Fairness: a webhook with a deep backlog does not starve a small one -----------------------------
INSERT INTO public.hog SELECT generate_series(1, 300);
INSERT INTO public.small SELECT generate_series(1, 5);
SELECT is((SELECT count(*)::int FROM (SELECT * FROM webhooks.claim(50, 30, 100, ARRAY[pg_temp.hook('dead'), pg_temp.hook('capped'), pg_temp.hook('rated')])
                                      UNION ALL
                                      SELECT * FROM webhooks.claim(50, 30, 100, ARRAY[pg_temp.hook('dead'), pg_temp.hook('capped'), pg_temp.hook('rated')])) c
           WHERE c.webhook_id = pg_temp.hook('small')), 5,
          'two claims of 50 serve the least recently served webhook first: the small one gets all 5');

SELECT * FROM finish();
ROLLBACK;
