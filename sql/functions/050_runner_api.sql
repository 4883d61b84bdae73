-- pgwebhooks 006: what the runner calls. claim() hands out leased, fully signed requests;
-- complete() applies the delivery policy to their results; release() hands back unsent work.
-- The runner holds no secret and no policy: both live here.
-- Plans here are pinned rather than left to statistics. A queue's tables churn faster than
-- autovacuum analyzes them, and a plan made while `deliveries` looked empty (sequential scans,
-- bitmap scans of a webhook's whole history) grew with every delivery ever kept; with
-- enable_seqscan and enable_bitmapscan off, claim() walks each webhook's `deliveries_webhook_due`
-- in order and stops at its limit, whatever the statistics say. jit is off: row estimates for
-- generate_series and unnest make small plans look expensive enough to JIT-compile (~400 ms a
-- call for ~10 ms of work).

-- claim() returns each webhook's max_concurrency since 0.2 (a new result column).
DROP FUNCTION IF EXISTS webhooks.claim(integer, integer, integer, uuid[]);
-- _retry_delay takes the webhook's retry_schedule since 0.2 (issue 10).
DROP FUNCTION IF EXISTS webhooks._retry_delay(integer, integer, integer, integer);

CREATE OR REPLACE FUNCTION webhooks.version()
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$ SELECT '0.1.0' $$;

-- How long to wait before attempt `attempts` + 1: the webhook's retry_schedule when it has one
-- (its attempts-th delay; the last one repeats should a delivery get more attempts), else
-- exponential from the webhook's backoff, with ±25% jitter so that a burst of failures does not
-- retry in lockstep, capped at a day. A Retry-After from a 429 or 503 is honoured instead of the
-- backoff (capped at a day as well), and wins over a schedule's delay when it is longer.
CREATE OR REPLACE FUNCTION webhooks._retry_delay(
    backoff_seconds integer, attempts integer, status_code integer, retry_after_seconds integer,
    schedule interval[] DEFAULT NULL)
RETURNS interval
LANGUAGE sql VOLATILE
AS $$
    SELECT CASE
        WHEN schedule IS NOT NULL AND cardinality(schedule) > 0 THEN greatest(
            schedule[least(greatest(attempts, 1), cardinality(schedule))],
            CASE WHEN status_code IN (429, 503) AND retry_after_seconds IS NOT NULL
                 THEN make_interval(secs => least(greatest(retry_after_seconds, 0), 86400)) END)
        ELSE make_interval(secs => CASE
            WHEN status_code IN (429, 503) AND retry_after_seconds IS NOT NULL
                THEN least(greatest(retry_after_seconds, 0), 86400)
            -- The jitter goes inside the cap: applied after it, a day's cap became up to 30 hours.
            ELSE least(backoff_seconds * power(2, least(attempts - 1, 30)) * (0.75 + random() * 0.5), 86400)
        END)
    END
$$;

-- The public id of an event: stable across retries (receivers deduplicate on it), unique across
-- installations thanks to the installation's random salt.
CREATE OR REPLACE FUNCTION webhooks._event_uid(capture_id bigint, n integer)
RETURNS uuid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT md5(i.salt::text || '/' || capture_id || '/' || n)::uuid FROM webhooks._salt_for(capture_id) i
$$;

-- Check a JSON array of objects against `spec`, {"key": ["integer", low, high, required] or
-- ["string", null, null, required]}, and raise WH013 naming the first offending element and
-- key. The runner API takes its input as JSON; a wrong type or an out-of-range number must be
-- the caller's WH013, not a cast error (22P02, 22003) from deep inside a query.
CREATE OR REPLACE FUNCTION webhooks._check_json_array(value jsonb, field text, spec jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text;
BEGIN
    IF value IS NULL OR jsonb_typeof(value) <> 'array' THEN
        PERFORM webhooks._fail('WH013', field, format('must be a JSON array of objects, not %s',
                                                      coalesce(jsonb_typeof(value), 'null')));
    END IF;
    SELECT format('%s[%s]%s: %s', field, e.ord - 1, coalesce('.' || k.key, ''), k.why) INTO problem
    FROM jsonb_array_elements(value) WITH ORDINALITY AS e(v, ord)
    CROSS JOIN LATERAL (
        SELECT NULL::text AS key, format('must be an object, not %s', jsonb_typeof(e.v)) AS why
        WHERE jsonb_typeof(e.v) <> 'object'
        UNION ALL
        SELECT s.key, CASE
            WHEN coalesce(jsonb_typeof(e.v -> s.key), 'null') = 'null' THEN
                CASE WHEN (s.rule ->> 3)::boolean THEN 'is required' END
            WHEN s.rule ->> 0 = 'string' THEN
                CASE WHEN jsonb_typeof(e.v -> s.key) <> 'string'
                     THEN format('must be a string, not %s', left((e.v -> s.key)::text, 40)) END
            -- Written as an integer, too: 1.0 is a whole number, but no bigint the cast accepts.
            WHEN jsonb_typeof(e.v -> s.key) <> 'number' OR (e.v ->> s.key) !~ '^-?[0-9]+$' THEN
                format('must be an integer, not %s', left((e.v -> s.key)::text, 40))
            WHEN (e.v ->> s.key)::numeric NOT BETWEEN (s.rule ->> 1)::numeric AND (s.rule ->> 2)::numeric THEN
                format('%s is out of range; expected an integer from %s to %s',
                       left((e.v -> s.key)::text, 40), s.rule ->> 1, s.rule ->> 2)
        END
        FROM jsonb_each(spec) AS s(key, rule)
        WHERE jsonb_typeof(e.v) = 'object'
    ) k
    WHERE k.why IS NOT NULL
    ORDER BY e.ord, k.key
    LIMIT 1;
    IF problem IS NOT NULL THEN
        PERFORM webhooks._fail('WH013', field, substr(problem, length(field) + 1));
    END IF;
END
$$;

-- Turn captured changes into deliveries, about `budget` of them: one per changed row per
-- subscribed webhook that is enabled now. Runs inside claim(), so the writer never pays for it;
-- a large capture is fanned out over several calls.
CREATE OR REPLACE FUNCTION webhooks._fan_out(budget integer)
RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
    -- One statement for the whole batch, not three per capture: an OLTP backlog is thousands of
    -- one-row captures, and a loop over them cost about 0.2 ms each (see `make bench`).
    WITH locked AS (
        SELECT c.id, c.webhook_ids, c.row_count, c.fanned_out, c.routed
        FROM webhooks.captures c
        WHERE c.fanned_out < c.row_count
        ORDER BY c.id
        LIMIT budget  -- every capture yields at least one delivery or costs one unit
        FOR UPDATE SKIP LOCKED
    ), targeted AS (
        SELECT l.*, h.hooks, coalesce(cardinality(h.hooks), 0) AS hook_count
        FROM locked l
        CROSS JOIN LATERAL (
            -- FOR KEY SHARE: a delete_webhook() running now waits for this fan-out to commit (and
            -- then deletes what it created), or, having deleted first, leaves nothing to fan out to.
            -- Without it, deliveries were created for a webhook deleted meanwhile, orphans forever.
            SELECT array_agg(x.id ORDER BY x.id) AS hooks
            FROM (SELECT w.id FROM webhooks.webhooks w WHERE w.id = ANY (l.webhook_ids) AND w.enabled
                  FOR KEY SHARE OF w) x
        ) h
    ), priced AS (
        -- A capture nobody receives any more is closed at once and costs one unit.
        SELECT t.*, CASE WHEN t.hook_count = 0 THEN 1 ELSE (t.row_count - t.fanned_out) * t.hook_count END AS cost
        FROM targeted t
    ), grouped AS (
        -- Captures going to the same webhooks form a group; every group gets an equal share of the
        -- budget first, oldest capture first within it. Oldest-first across all groups let one
        -- 200,000-row statement use every call's budget until it was done, and another webhook's
        -- one-row changes captured after it waited seconds behind it. (Running sums minus the row's
        -- own cost: a frame ending at 1 PRECEDING is recomputed for every row, quadratic in the batch.)
        SELECT p.*,
               greatest(1, budget / max(p.grp) OVER ()) AS share,
               sum(p.cost) OVER (PARTITION BY p.hooks ORDER BY p.id) - p.cost AS before_in_group
        FROM (SELECT p.*, dense_rank() OVER (ORDER BY p.hooks) AS grp FROM priced p) p
    ), shared AS (
        SELECT g.*, greatest(0, least(g.cost, g.share - g.before_in_group)) AS first_units
        FROM grouped g
    ), costed AS (
        -- What the shares leave goes to the oldest captures that still have rows to fan out.
        SELECT s.*,
               budget - sum(s.first_units) OVER () AS leftover,
               sum(s.cost - s.first_units) OVER (ORDER BY s.id) - (s.cost - s.first_units) AS spent
        FROM shared s
    ), planned AS (
        SELECT c.id, c.hooks, c.fanned_out, c.routed,
               CASE WHEN c.hook_count = 0 THEN c.row_count - c.fanned_out
                    ELSE least(c.row_count - c.fanned_out,
                               ceil((c.first_units + greatest(0, least(c.cost - c.first_units, c.leftover - c.spent)))::numeric
                                    / c.hook_count)::integer)
               END AS take
        FROM costed c
    ), taken AS (
        SELECT p.* FROM planned p WHERE p.take > 0
    ), created AS (
        INSERT INTO webhooks.deliveries (capture_id, n, webhook_id)
        SELECT p.id, g, hook
        FROM taken p
        CROSS JOIN LATERAL generate_series(p.fanned_out + 1, p.fanned_out + p.take) AS g
        CROSS JOIN LATERAL unnest(p.hooks) AS hook
        -- A filtered capture's rows each go to their own webhooks (see _capture_filtered).
        WHERE NOT p.routed
           OR hook = ANY (coalesce((SELECT e.webhook_ids FROM webhooks.events e
                                      WHERE e.capture_id = p.id AND e.n = g), '{}'))
        ORDER BY p.id, g, hook
        RETURNING 1
    ), advanced AS (
        UPDATE webhooks.captures c SET fanned_out = c.fanned_out + p.take
        FROM taken p WHERE c.id = p.id
    )
    SELECT count(*)::integer FROM created
$$;

-- Each webhook's endpoints row (circuit breaker, rate-limit tokens) is created with it, in the
-- same transaction: claim() must never wait for another transaction's insert of that row.
CREATE OR REPLACE FUNCTION webhooks._add_endpoint()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO webhooks.endpoints (webhook_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER webhooks_add_endpoint AFTER INSERT ON webhooks.webhooks
    FOR EACH ROW EXECUTE FUNCTION webhooks._add_endpoint();

-- The circuit breaker's settings: this many failures in a row open an endpoint's circuit, for a
-- cooldown that doubles with each opening in a row (1 s, 2 s, 4 s ... at most 30 s) so that a
-- dead endpoint sees a probe every half minute, not one request per delivery.
CREATE OR REPLACE FUNCTION webhooks._circuit_failure_threshold()
RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$ SELECT 5 $$;

CREATE OR REPLACE FUNCTION webhooks._circuit_cooldown(times_opened integer)
RETURNS interval
LANGUAGE sql IMMUTABLE
AS $$ SELECT make_interval(secs => least(power(2, least(greatest(times_opened, 0), 10)), 30)) $$;

-- A rate limit's tokens now: refilled at `rate` a second since `tokens_at`, at most one second's worth.
CREATE OR REPLACE FUNCTION webhooks._tokens(rate integer, tokens double precision, tokens_at timestamptz)
RETURNS double precision
LANGUAGE sql STABLE
AS $$ SELECT least(rate::float8, tokens + rate * extract(epoch FROM now() - tokens_at)::float8) $$;

-- How many more deliveries of a webhook may be leased now. A webhook's `max_concurrency` is
-- counted against the leases in flight across all runners (only meaningful under its endpoints
-- row lock); `runner_limit` (what the runner may start of one webhook, which it counts against
-- its own sends) caps one claim, with a max_concurrency or without: a max_concurrency of 10000
-- must not fill a runner with one webhook. One probe at a time while its circuit is
-- not closed; whole tokens of its rate limit.
CREATE OR REPLACE FUNCTION webhooks._room(
    webhook_id uuid, max_concurrency integer, runner_limit integer, rate integer, circuit text,
    tokens double precision, tokens_at timestamptz)
RETURNS integer
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT greatest(0, least(
        CASE WHEN max_concurrency IS NULL THEN coalesce(runner_limit, 1000000) ELSE max_concurrency - f.n END,
        coalesce(runner_limit, 1000000),
        CASE WHEN circuit = 'closed' THEN 1000000 ELSE 1 - f.n END,
        CASE WHEN rate IS NULL THEN 1000000 ELSE floor(webhooks._tokens(rate, tokens, tokens_at))::integer END))
    FROM (SELECT CASE WHEN max_concurrency IS NULL AND circuit = 'closed' THEN 0  -- no need to count
                      ELSE (SELECT count(*)::integer FROM webhooks.deliveries d
                            WHERE d.webhook_id = _room.webhook_id AND d.status = 'leased'
                              AND d.next_attempt_at > now()) END AS n) f
$$;

-- JSON text with no space after ':' or ',' (jsonb's own text has both), keys in jsonb's order:
-- what JSON.stringify(JSON.parse(body)) and json.dumps(..., separators=(",", ":")) print.
-- jsonb prints a space only after ':' and ',' outside strings, so dropping every space outside
-- a string is enough: one pass over the text, however deep the value (a recursive walk ran out
-- of stack on an event nested 800 deep and failed every claim), and faster than the walk.
CREATE OR REPLACE FUNCTION webhooks._compact_json(value jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT regexp_replace(value::text, '("(?:[^"\\]|\\.)*")| ', '\1', 'g')
$$;

-- The request body of one delivery, in the webhook's receiver profile (see README, "Receiver
-- profiles"). Built from records with row_to_json, which prints compact JSON in the records'
-- column order; the row images are embedded exactly as the capture stored them.
--   standard, fluxbase  {"id","event"[,"type"],"table","schema","record","old_record","timestamp","webhook_id"}
--   truss               {"event","schema","table","row","old_row","timestamp"}
--   supabase            {"type","table","schema","record","old_record"}
--   hasura              {"event":{"session_variables","op","data":{"old","new"}},"created_at","id",
--                        "delivery_info":{"max_retries","current_retry"},"trigger":{"name"},"table":{"schema","name"}}
--   rowbase, flux       {"id","type","created_at" | "created","data"}: row changes carry
--                       {"event","schema","table","record","old_record"} as data
-- An application event (EVENT) is {"id","type","timestamp","data","webhook_id"} except in the
-- rowbase and flux profiles.
CREATE OR REPLACE FUNCTION webhooks._envelope(
    profile text, id uuid, operation text, event_type text, schema_name text, table_name text,
    record json, old_record json, ts text, webhook_id uuid, data jsonb, webhook_name text,
    attempt integer, max_retries integer)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- What the row images mean for receivers that expect null on the side an operation lacks.
    new_image json := CASE WHEN operation = 'DELETE' THEN NULL ELSE record END;
    old_image json := CASE WHEN operation = 'DELETE' THEN record ELSE old_record END;
    payload json := CASE WHEN data IS NOT NULL THEN webhooks._compact_json(data)::json END;
    kind text;
BEGIN
    IF profile IN ('rowbase', 'flux') THEN
        kind := coalesce(event_type, CASE WHEN operation = 'TEST' THEN 'webhooks.test'
                                          ELSE format('%s.%s', table_name, lower(operation)) END);
        IF payload IS NULL THEN
            payload := (SELECT row_to_json(d) FROM (SELECT operation AS event, schema_name AS schema,
                        table_name AS "table", record, old_image AS old_record) d);
        END IF;
        IF profile = 'rowbase' THEN
            RETURN (SELECT row_to_json(x)::text FROM (SELECT id, kind AS type, ts AS created_at, payload AS data) x);
        END IF;
        RETURN (SELECT row_to_json(x)::text FROM (SELECT id, kind AS type, ts AS created, payload AS data) x);
    END IF;
    IF operation = 'EVENT' OR payload IS NOT NULL THEN
        RETURN (SELECT row_to_json(x)::text
                FROM (SELECT id, event_type AS type, ts AS "timestamp", payload AS data, webhook_id) x);
    END IF;
    CASE profile
    WHEN 'truss' THEN
        RETURN (SELECT row_to_json(x)::text FROM (SELECT operation AS event, schema_name AS schema,
                table_name AS "table", record AS "row", old_image AS old_row, ts AS "timestamp") x);
    WHEN 'supabase' THEN
        RETURN (SELECT row_to_json(x)::text FROM (SELECT operation AS type, table_name AS "table",
                schema_name AS schema, new_image AS record, old_image AS old_record) x);
    WHEN 'hasura' THEN
        RETURN (SELECT row_to_json(x)::text FROM (
            SELECT (SELECT row_to_json(e) FROM (
                        SELECT NULL::json AS session_variables, operation AS op,
                               (SELECT row_to_json(d) FROM (SELECT old_image AS old, new_image AS new) d) AS data) e) AS event,
                   ts AS created_at, id,
                   (SELECT row_to_json(i) FROM (SELECT max_retries, greatest(attempt - 1, 0) AS current_retry) i)
                       AS delivery_info,
                   (SELECT row_to_json(t) FROM (SELECT webhook_name AS name) t) AS trigger,
                   (SELECT row_to_json(t) FROM (SELECT schema_name AS schema, table_name AS name) t) AS "table") x);
    ELSE
        IF event_type IS NOT NULL THEN
            RETURN (SELECT row_to_json(x)::text FROM (SELECT id, operation AS event, event_type AS type,
                    table_name AS "table", schema_name AS schema, record, old_image AS old_record,
                    ts AS "timestamp", webhook_id) x);
        END IF;
        RETURN (SELECT row_to_json(x)::text FROM (SELECT id, operation AS event, table_name AS "table",
                schema_name AS schema, record, old_image AS old_record, ts AS "timestamp", webhook_id) x);
    END CASE;
END
$$;

-- The profile's own signature headers, next to the standard ones in `signed` (_sign_headers),
-- over the exact body, keyed with the current (newest) secret:
--   fluxbase  X-Fluxbase-Signature: t=...,v1=... and the legacy X-Webhook-Signature: <hex HMAC of the body>
--   truss     X-Truss-Signature: <hex HMAC of the body>
--   rowbase   X-Rowbase-Signature: sha256=<hex HMAC of the body>
CREATE OR REPLACE FUNCTION webhooks._profile_headers(profile text, signed jsonb, body text, secret text)
RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE profile
        WHEN 'fluxbase' THEN jsonb_build_object('X-Fluxbase-Signature', signed ->> 'X-Webhook-Signature')
            || CASE WHEN secret IS NOT NULL
                    THEN jsonb_build_object('X-Webhook-Signature', webhooks._hmac_hex(secret, body)) ELSE '{}' END
        WHEN 'truss' THEN CASE WHEN secret IS NOT NULL
            THEN jsonb_build_object('X-Truss-Signature', webhooks._hmac_hex(secret, body)) ELSE '{}' END
        WHEN 'rowbase' THEN CASE WHEN secret IS NOT NULL
            THEN jsonb_build_object('X-Rowbase-Signature', 'sha256=' || webhooks._hmac_hex(secret, body)) ELSE '{}' END
        ELSE '{}'::jsonb
    END
$$;

-- Render and sign one delivery as claim() would at its next attempt, for _quarantine: the
-- same expressions as claim()'s last step, one delivery at a time.
CREATE OR REPLACE FUNCTION webhooks._render(delivery_id bigint)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.body || (g.signed || webhooks._profile_headers(w.profile, g.signed, p.body, k.secrets[1]))::text
    FROM webhooks.deliveries l
    JOIN webhooks.webhooks w ON w.id = l.webhook_id
    JOIN webhooks.captures c ON c.id = l.capture_id
    LEFT JOIN webhooks.events e ON c.row_count > 1 AND e.capture_id = l.capture_id AND e.n = l.n
    LEFT JOIN webhooks.subscriptions sub ON sub.webhook_id = w.id AND sub.relid = c.relid
                                        AND c.operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
    CROSS JOIN LATERAL (
        SELECT u.uid, webhooks._envelope(
            w.profile, u.uid, c.operation, coalesce(c.event_type, sub.event_type), c.schema_name, c.table_name,
            webhooks._without(coalesce(e.record, c.record), sub.exclude_columns),
            webhooks._without(coalesce(e.old_record, c.old_record), sub.exclude_columns),
            to_char(c.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            w.id, c.data, w.name, l.attempts + 1, w.max_retries) AS env
        FROM (SELECT webhooks._event_uid(l.capture_id, l.n) AS uid) u
    ) p0
    CROSS JOIN LATERAL (
        SELECT p0.uid, CASE WHEN c.test THEN left(p0.env, -1) || ',"test":' || 'true}' ELSE p0.env END AS body
    ) p
    CROSS JOIN LATERAL (
        SELECT array_agg(s.secret ORDER BY s.id DESC) AS secrets
        FROM webhooks.secrets s
        WHERE s.webhook_id = w.id AND (s.expires_at IS NULL OR s.expires_at > now())
    ) k
    CROSS JOIN LATERAL (
        SELECT webhooks._sign_headers(p.uid::text, floor(extract(epoch FROM now()))::bigint, p.body, k.secrets)
            AS signed
    ) g
    WHERE l.id = _render.delivery_id
$$;

-- After a claim failed: try each due delivery of the webhooks it served (the oldest `batch_size`
-- of each, the ones no other claim holds) alone, and fail those that cannot be rendered or
-- signed, with the error in their attempt log (a new attempt number that spends nothing).
-- Returns how many were failed; 0 means the claim's error was something else.
CREATE OR REPLACE FUNCTION webhooks._quarantine(serving uuid[], batch_size integer)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d record;
    failed integer := 0;
    why text;
BEGIN
    FOR d IN
        SELECT x.id, x.webhook_id
        FROM unnest(serving) AS s(id)
        CROSS JOIN LATERAL (
            SELECT q.id, q.webhook_id FROM webhooks.deliveries q
            WHERE q.webhook_id = s.id AND q.status IN ('pending', 'leased') AND q.next_attempt_at <= now()
            ORDER BY q.next_attempt_at
            LIMIT batch_size
            FOR UPDATE SKIP LOCKED
        ) x
        LIMIT 10000
    LOOP
        BEGIN
            PERFORM webhooks._render(d.id);
        EXCEPTION WHEN OTHERS THEN
            why := format('not sent: the event cannot be rendered or signed (%s: %s)', SQLSTATE, left(SQLERRM, 500));
            WITH gone AS (
                UPDATE webhooks.deliveries q
                SET status = 'failed', completed_at = now(), attempts = q.attempts + 1,
                    free_attempts = q.free_attempts + 1
                WHERE q.id = d.id
                RETURNING q.id, q.attempts, q.webhook_id)
            INSERT INTO webhooks.delivery_attempts (delivery_id, attempt, error, webhook_id)
            SELECT g.id, g.attempts, why, g.webhook_id FROM gone g;
            RAISE LOG 'pgwebhooks: delivery % failed: %', d.id, why;
            failed := failed + 1;
        END;
    END LOOP;
    RETURN failed;
END
$$;

-- Lease up to `batch_size` due deliveries. Each comes back with its attempt number (the fencing
-- token complete() checks), the exact body and every header already signed, and the webhook's
-- max_concurrency (NULL: the runner's own --per-webhook-concurrency applies).
--
-- Work is chosen per webhook, never by walking all due work in time order: one index probe per
-- enabled webhook finds those with due work (the one whose work has waited longest first); each
-- gets its room (see _room: its max_concurrency minus what is in flight across all runners, one
-- probe while its circuit is not closed, its rate limit's tokens), at most its fair share of the
-- batch, taken from its oldest due deliveries in `deliveries_webhook_due`. A claim therefore
-- costs O(batch + enabled webhooks), whatever one webhook has queued; a webhook whose circuit is
-- open, or a paused one, is not looked at beyond that probe.
--
-- `per_webhook_limit` caps one call's deliveries of a webhook without `max_concurrency` (the
-- runner passes twice its --per-webhook-concurrency, which it counts against its own sends);
-- `skip_webhooks` leaves out webhooks the caller has no room for. A lease lasts twice the
-- webhook's timeout (a claimed delivery may wait for one request of its webhook to finish
-- first) plus `lease_margin_seconds`; when it runs out, the delivery is due again.
CREATE OR REPLACE FUNCTION webhooks.claim(
    batch_size integer DEFAULT 100,
    lease_margin_seconds integer DEFAULT 30,
    per_webhook_limit integer DEFAULT NULL,
    skip_webhooks uuid[] DEFAULT '{}')
RETURNS TABLE (
    delivery_id bigint,
    attempt integer,
    webhook_id uuid,
    url text,
    body text,
    headers jsonb,
    timeout_seconds integer,
    max_concurrency integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
DECLARE
    serving uuid[];
    exact uuid[];
    locked uuid[] := '{}';
BEGIN
    PERFORM webhooks._check_range('batch_size', batch_size, 1, 10000);
    PERFORM webhooks._check_range('lease_margin_seconds', lease_margin_seconds, 1, 3600);
    IF per_webhook_limit IS NOT NULL THEN
        PERFORM webhooks._check_range('per_webhook_limit', per_webhook_limit, 1, 10000);
    END IF;
    -- Fan out ahead of this batch, so that other runners find committed work too while this one
    -- holds a large capture.
    -- A restored copy gets new event ids (045_restore.sql); while another transaction records
    -- them, nothing is fanned out (already fanned-out deliveries are the original's).
    IF webhooks._ensure_identity() THEN
        PERFORM webhooks._fan_out(batch_size * 4);
    END IF;
    -- Every webhook has its endpoints row from its creation (see _add_endpoint); should one be
    -- missing all the same, add it without ever waiting: a claim that finds another transaction
    -- adding the same row (the advisory lock taken) leaves it to that one.
    INSERT INTO webhooks.endpoints (webhook_id)
    SELECT w.id FROM webhooks.webhooks w
    WHERE NOT EXISTS (SELECT 1 FROM webhooks.endpoints e WHERE e.webhook_id = w.id)
      AND pg_try_advisory_xact_lock(2003, hashtext(w.id::text))
    ON CONFLICT DO NOTHING;
    -- The webhooks with due work, the one whose work has waited longest first.
    SELECT array_agg(x.id ORDER BY x.oldest, x.id), array_agg(x.id) FILTER (WHERE x.exact)
    INTO serving, exact
    FROM (
        SELECT w.id, n.oldest,
               w.max_concurrency IS NOT NULL OR w.rate_limit_per_second IS NOT NULL OR e.circuit <> 'closed' AS exact
        FROM webhooks.webhooks w
        JOIN webhooks.endpoints e ON e.webhook_id = w.id
        CROSS JOIN LATERAL (
            SELECT d.next_attempt_at AS oldest FROM webhooks.deliveries d
            WHERE d.webhook_id = w.id AND d.status IN ('pending', 'leased') AND d.next_attempt_at <= now()
            ORDER BY d.next_attempt_at LIMIT 1
        ) n
        -- A paused webhook keeps its queue (fan-out still creates its deliveries); nothing is sent.
        WHERE w.enabled AND NOT w.paused AND w.id <> ALL (coalesce(skip_webhooks, '{}'))
          AND (e.circuit <> 'open' OR e.retry_at <= now())
    ) x;
    IF serving IS NULL THEN
        RETURN;
    END IF;
    -- Webhooks whose limits or circuit need exact accounting across runners are served under
    -- their endpoints row lock, taken in a statement of its own so that the next one's snapshot
    -- sees every lease other runners made for them; one another claim holds is skipped. Others
    -- are served lock-free, by any number of claims at once.
    IF exact IS NOT NULL THEN
        SELECT coalesce(array_agg(l.webhook_id), '{}') INTO locked
        FROM (SELECT e.webhook_id FROM webhooks.endpoints e WHERE e.webhook_id = ANY (exact)
              FOR NO KEY UPDATE SKIP LOCKED) l;
        serving := ARRAY(SELECT h FROM unnest(serving) WITH ORDINALITY AS u(h, o)
                         WHERE h <> ALL (exact) OR h = ANY (locked) ORDER BY o);
    END IF;
    -- A delivery that cannot be rendered or signed (an event stored before publish()'s limits,
    -- a row put into the outbox by hand) must not fail every claim: the failing statement is
    -- rolled back, every due delivery of the webhooks served is tried alone (_quarantine), those
    -- that fail are failed with their reason, and the claim runs again. The rows of a failed
    -- attempt are never returned: they are sorted (ORDER BY l.id) after all are rendered, so an
    -- error comes before the first row. One subtransaction per claim is all the happy path pays.
    FOR round IN 1..3 LOOP
        BEGIN
            RETURN QUERY
            WITH hook AS (
                SELECT w.id, w.max_retries, w.timeout_seconds, w.rate_limit_per_second AS rate, s.ord,
                       w.max_concurrency,
                       CASE WHEN e.circuit = 'open' AND e.retry_at > now() THEN 0  -- opened since the look above
                            ELSE webhooks._room(w.id, w.max_concurrency, per_webhook_limit,
                                                w.rate_limit_per_second, e.circuit, e.tokens, e.tokens_at) END AS room
                FROM unnest(serving) WITH ORDINALITY AS s(id, ord)
                JOIN webhooks.webhooks w ON w.id = s.id
                JOIN webhooks.endpoints e ON e.webhook_id = s.id
            ),
            -- Each webhook's fair share of the batch first; what some leave unused, the next claim fills.
            roomy AS (
                SELECT h.*, ceil(batch_size::numeric / count(*) OVER ())::integer AS share
                FROM hook h WHERE h.room > 0
            ),
            candidate AS (
                SELECT d.id, d.webhook_id, d.status, d.attempts, d.free_attempts, d.capture_id, h.max_retries
                FROM (SELECT h.* FROM roomy h ORDER BY h.ord) h
                CROSS JOIN LATERAL (
                    SELECT d.id, d.webhook_id, d.status, d.attempts, d.free_attempts, d.capture_id
                    FROM webhooks.deliveries d
                    WHERE d.webhook_id = h.id AND d.status IN ('pending', 'leased') AND d.next_attempt_at <= now()
                    ORDER BY d.next_attempt_at
                    LIMIT least(h.room, h.share)
                    FOR UPDATE OF d SKIP LOCKED
                ) d
                LIMIT batch_size
            ),
            -- What can never be sent is failed here rather than leased again and again: an event purged
            -- meanwhile (a replay racing purge), or a delivery with no attempt left (its last lease
            -- expired, or max_retries was lowered). No delivery is attempted more than max_retries + 1 times.
            judged AS (
                SELECT c.*, CASE
                    WHEN NOT EXISTS (SELECT 1 FROM webhooks.captures x WHERE x.id = c.capture_id)
                        THEN 'not sent: the event was purged before it could be delivered'
                    WHEN c.attempts - c.free_attempts > c.max_retries AND c.status = 'leased'
                        THEN 'lease expired before a result was reported (runner stopped or stalled); no attempts left'
                    WHEN c.attempts - c.free_attempts > c.max_retries
                        THEN format('not sent: no attempts left (%s made, max_retries %s)', c.attempts, c.max_retries)
                END AS fatal
                FROM candidate c
            ),
            -- An expired lease's verdict is logged under its own attempt number; any other verdict
            -- takes a new one, which spends nothing (free_attempts): numbers are never logged twice.
            doomed AS (
                UPDATE webhooks.deliveries d
                SET status = 'failed', completed_at = now(),
                    attempts = CASE WHEN j.status = 'leased' THEN d.attempts ELSE d.attempts + 1 END,
                    free_attempts = CASE WHEN j.status = 'leased' THEN d.free_attempts ELSE d.free_attempts + 1 END
                FROM judged j
                WHERE d.id = j.id AND j.fatal IS NOT NULL
                RETURNING d.id, d.attempts, d.webhook_id, j.fatal
            ),
            doomed_logged AS (
                INSERT INTO webhooks.delivery_attempts (delivery_id, attempt, error, webhook_id)
                SELECT x.id, x.attempts, x.fatal, x.webhook_id FROM doomed x
            ),
            leased AS (
                UPDATE webhooks.deliveries d
                SET status = 'leased',
                    attempts = d.attempts + 1,
                    next_attempt_at = now() + make_interval(secs => 2 * h.timeout_seconds + lease_margin_seconds)
                FROM judged j, hook h
                WHERE d.id = j.id AND j.fatal IS NULL AND h.id = d.webhook_id
                RETURNING d.id, d.attempts, d.capture_id, d.n, d.webhook_id, j.status AS previous_status
            ),
            -- A lease that ran out means a runner died or stalled mid-attempt: say so in the log.
            expired AS (
                INSERT INTO webhooks.delivery_attempts (delivery_id, attempt, error, webhook_id)
                SELECT l.id, l.attempts - 1, 'lease expired before a result was reported (runner stopped or stalled)',
                       l.webhook_id
                FROM leased l
                WHERE l.previous_status = 'leased'
            ),
            -- Spend the rate limit's tokens; an open circuit whose cooldown is over sends its probe now.
            served AS (
                UPDATE webhooks.endpoints e
                SET tokens = CASE WHEN h.rate IS NULL THEN 0 ELSE webhooks._tokens(h.rate, e.tokens, e.tokens_at) - t.taken END,
                    tokens_at = now(),
                    circuit = CASE WHEN e.circuit = 'open' THEN 'half_open' ELSE e.circuit END,
                    circuit_changed_at = CASE WHEN e.circuit = 'open' THEN now() ELSE e.circuit_changed_at END,
                    circuit_reason = CASE WHEN e.circuit <> 'closed'
                                          THEN format('probing with delivery %s, attempt %s', t.probe, t.probe_attempt)
                                          ELSE e.circuit_reason END,
                    probe_delivery_id = CASE WHEN e.circuit <> 'closed' THEN t.probe END,
                    probe_attempt = CASE WHEN e.circuit <> 'closed' THEN t.probe_attempt END
                FROM (SELECT l.webhook_id, count(*) AS taken, max(l.id) AS probe, max(l.attempts) AS probe_attempt
                      FROM leased l GROUP BY l.webhook_id) t
                JOIN hook h ON h.id = t.webhook_id
                WHERE e.webhook_id = t.webhook_id AND e.webhook_id = ANY (locked)
            )
            SELECT l.id, l.attempts, w.id, w.url, p.body,
                   w.headers
                   -- Secret headers (issue 11): sent, never shown by list/get.
                   || coalesce((SELECT sh.headers FROM webhooks.secret_headers sh WHERE sh.webhook_id = w.id), '{}')
                   || jsonb_build_object('Content-Type', 'application/json',
                                         'User-Agent', 'pgwebhooks/' || webhooks.version())
                   || g.signed
                   || webhooks._profile_headers(w.profile, g.signed, p.body, k.secrets[1])
                   || CASE WHEN c.test THEN '{"webhook-test": "true"}'::jsonb ELSE '{}'::jsonb END,
                   w.timeout_seconds, h.max_concurrency
            FROM leased l
            JOIN hook h ON h.id = l.webhook_id
            JOIN webhooks.webhooks w ON w.id = l.webhook_id
            JOIN webhooks.captures c ON c.id = l.capture_id
            LEFT JOIN webhooks.events e ON c.row_count > 1 AND e.capture_id = l.capture_id AND e.n = l.n
            -- The event type a table subscription sends its changes as (issue 10), and the columns it
            -- never sends (exclude_columns, issue 11).
            LEFT JOIN webhooks.subscriptions sub ON sub.webhook_id = w.id AND sub.relid = c.relid
                                                AND c.operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
            -- webhooks._event_uid() inline: called through the LATERAL it ran once per reference.
            CROSS JOIN LATERAL (
                SELECT md5(i.salt::text || '/' || l.capture_id || '/' || l.n)::uuid AS uid FROM webhooks._salt_for(l.capture_id) i
            ) u
            CROSS JOIN LATERAL (
                -- exclude_columns (issue 11) are removed here: kept in the outbox, never sent.
                SELECT u.uid, webhooks._envelope(
                    w.profile, u.uid, c.operation, coalesce(c.event_type, sub.event_type), c.schema_name, c.table_name,
                    webhooks._without(coalesce(e.record, c.record), sub.exclude_columns),
                    webhooks._without(coalesce(e.old_record, c.old_record), sub.exclude_columns),
                    to_char(c.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                    w.id, c.data, w.name, l.attempts, w.max_retries) AS env
                OFFSET 0  -- not flattened: the body is used three times and must be built once
            ) p0
            -- A test event (send_test) says so in its body, which is what is signed, and a header.
            -- (The literal is split: Alembic's text() would read a colon and a word as a parameter.)
            CROSS JOIN LATERAL (
                SELECT p0.uid, CASE WHEN c.test THEN left(p0.env, -1) || ',"test":' || 'true}' ELSE p0.env END AS body
                OFFSET 0
            ) p
            CROSS JOIN LATERAL (
                SELECT array_agg(s.secret ORDER BY s.id DESC) AS secrets
                FROM webhooks.secrets s
                WHERE s.webhook_id = w.id AND (s.expires_at IS NULL OR s.expires_at > now())
            ) k
            CROSS JOIN LATERAL (
                SELECT webhooks._sign_headers(p.uid::text, floor(extract(epoch FROM now()))::bigint, p.body, k.secrets)
                    AS signed
                OFFSET 0
            ) g
            ORDER BY l.id;
            RETURN;
        EXCEPTION WHEN OTHERS THEN
            IF round = 3 OR webhooks._quarantine(serving, batch_size) = 0 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
END
$$;

-- Seconds until claim() may have something new to hand out, for a runner deciding how long to
-- sleep (NOTIFY aside): 0 while some webhook has due work and room, else the earliest of a
-- scheduled retry, a lease running out, a circuit's probe and a rate limit's next token. NULL
-- when nothing is scheduled; a webhook at its concurrency limit counts only once a send of it
-- ends, which the runner holding that send knows first.
CREATE OR REPLACE FUNCTION webhooks.next_due_in(per_webhook_limit integer DEFAULT NULL,
                                                skip_webhooks uuid[] DEFAULT '{}')
RETURNS double precision
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
BEGIN
    -- PL/pgSQL rather than SQL for its cached plan: the runner asks after every short claim.
    RETURN (SELECT CASE
        -- Captures to fan out: now, unless this session's restore check is not settled (another
        -- transaction is recording a copy's new salt, see _ensure_identity): claim() fans out
        -- nothing until it commits, so asking at once would only spin.
        WHEN EXISTS (SELECT 1 FROM webhooks.captures c WHERE c.fanned_out < c.row_count) THEN
            CASE WHEN current_setting('pgwebhooks.identity_checked', true) IS NOT DISTINCT FROM webhooks._identity_token()
                      OR EXISTS (SELECT 1 FROM webhooks._installation i WHERE i.identity = webhooks._database_identity())
                 THEN 0 ELSE 1 END
        -- (greatest() ignores NULLs: NULL, nothing scheduled, must not become 0, "now".)
        ELSE (SELECT CASE WHEN min(x.due) IS NOT NULL
                          THEN greatest(extract(epoch FROM min(x.due) - now())::float8, 0) END FROM (
            SELECT CASE
                WHEN e.circuit = 'open' AND e.retry_at > now() THEN e.retry_at
                WHEN n.first_due > now() THEN n.first_due
                WHEN webhooks._room(w.id, w.max_concurrency, per_webhook_limit, NULL, e.circuit, 0, now())
                     <= 0 THEN NULL
                WHEN w.rate_limit_per_second IS NOT NULL
                     AND webhooks._tokens(w.rate_limit_per_second, e.tokens, e.tokens_at) < 1
                    THEN now() + make_interval(secs => (1 - webhooks._tokens(w.rate_limit_per_second, e.tokens,
                                                        e.tokens_at)) / w.rate_limit_per_second)
                ELSE now()
            END AS due
            FROM webhooks.webhooks w
            JOIN webhooks.endpoints e ON e.webhook_id = w.id
            CROSS JOIN LATERAL (
                SELECT d.next_attempt_at AS first_due FROM webhooks.deliveries d
                WHERE d.webhook_id = w.id AND d.status IN ('pending', 'leased')
                ORDER BY d.next_attempt_at LIMIT 1
            ) n
            WHERE w.enabled AND NOT w.paused AND w.id <> ALL (coalesce(skip_webhooks, '{}'))
        ) x)
    END);
END
$$;
COMMENT ON FUNCTION webhooks.next_due_in(integer, uuid[]) IS
    'For the runner: seconds until claim() may have more to hand out (0: now; NULL: nothing scheduled).';

-- Apply the results of attempts, a JSON array of
--   {"delivery_id": 1, "attempt": 1, "status_code": 200, "response_excerpt": "...",
--    "error": null, "latency_ms": 12, "retry_after_seconds": null}
-- A result is accepted only under the lease it was claimed with: same attempt number, lease not
-- expired. Returns each delivery's new status, or 'refused'.
--
-- Each webhook's circuit learns from the accepted results (see webhooks.endpoints): no response
-- or a 5xx is a failure, any other response shows the endpoint alive and closes the circuit.
-- A failed probe is logged but does not count against its delivery, which waits for the circuit.
CREATE OR REPLACE FUNCTION webhooks.complete(results jsonb)
RETURNS TABLE (delivery_id bigint, attempt integer, status text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
DECLARE
    answered jsonb;
BEGIN
    PERFORM webhooks._check_json_array(results, 'results', '{
        "delivery_id": ["integer", -9223372036854775808, 9223372036854775807, true],
        "attempt": ["integer", -2147483648, 2147483647, true],
        "status_code": ["integer", -2147483648, 2147483647, false],
        "latency_ms": ["integer", -2147483648, 2147483647, false],
        "retry_after_seconds": ["integer", -2147483648, 2147483647, false],
        "response_excerpt": ["string", null, null, false],
        "error": ["string", null, null, false]}');
    -- The circuits this report changes, locked in one order before anything else, so two runners'
    -- reports cannot deadlock (claim() only ever skips a locked one). A healthy endpoint's
    -- successes change nothing and lock nothing: claim() skips a webhook whose row is locked,
    -- and locking it for every report made claims come back empty half the time.
    PERFORM 1 FROM webhooks.endpoints e
    WHERE e.webhook_id IN (SELECT d.webhook_id
                           FROM jsonb_to_recordset(results) AS r(delivery_id bigint, status_code integer)
                           JOIN webhooks.deliveries d ON d.id = r.delivery_id
                           JOIN webhooks.endpoints x ON x.webhook_id = d.webhook_id
                           WHERE NOT coalesce(r.status_code BETWEEN 100 AND 499, false)
                              OR x.circuit <> 'closed' OR x.consecutive_failures > 0
                              OR webhooks._health_changes(r.status_code, x.failures_in_a_row, x.last_success_at))
    ORDER BY e.webhook_id
    FOR NO KEY UPDATE;
    WITH result AS (
        -- A status outside 100-599 (some servers send 999) is no HTTP status: log it as an error
        -- rather than let one odd response fail the whole batch on the attempts table's CHECK.
        SELECT r.delivery_id, r.attempt,
               CASE WHEN r.status_code BETWEEN 100 AND 599 THEN r.status_code END AS status_code,
               r.response_excerpt,
               CASE WHEN r.status_code NOT BETWEEN 100 AND 599
                    THEN concat_ws('; ', format('invalid HTTP status %s', r.status_code), r.error)
                    ELSE r.error END AS error,
               r.latency_ms, r.retry_after_seconds
        FROM jsonb_to_recordset(results) AS r(
            delivery_id bigint, attempt integer, status_code integer, response_excerpt text,
            error text, latency_ms integer, retry_after_seconds integer)
    ),
    judged AS (
        SELECT r.*, w.id AS webhook_id, w.max_retries, w.retry_backoff_seconds, w.retry_schedule,
               d.attempts - d.free_attempts AS attempts,
               (r.status_code IS NULL OR r.status_code >= 500) AS endpoint_failed,
               coalesce(e.circuit <> 'closed' AND e.probe_delivery_id = d.id AND e.probe_attempt = r.attempt,
                        false) AS probe
        FROM result r
        JOIN webhooks.deliveries d ON d.id = r.delivery_id
        JOIN webhooks.webhooks w ON w.id = d.webhook_id
        LEFT JOIN webhooks.endpoints e ON e.webhook_id = w.id
    ),
    outcome AS (
        SELECT j.*,
               CASE
                   WHEN j.status_code BETWEEN 200 AND 299 THEN 'delivered'
                   -- 410 pauses the webhook (see `gone`): the delivery waits for its resume.
                   WHEN j.probe AND j.endpoint_failed THEN 'pending'
                   WHEN j.attempts > j.max_retries THEN 'failed'
                   ELSE 'pending'
               END AS new_status,
               j.probe AND j.endpoint_failed AS refund,
               webhooks._retry_delay(j.retry_backoff_seconds, j.attempts, j.status_code,
                                     j.retry_after_seconds, j.retry_schedule) AS delay
        FROM judged j
    ),
    applied AS (
        UPDATE webhooks.deliveries d
        SET status = o.new_status,
            -- A failed probe's attempt keeps its number (the lease's fencing token) and spends no
            -- retry budget: counted as free rather than taken back.
            free_attempts = CASE WHEN o.refund THEN d.free_attempts + 1 ELSE d.free_attempts END,
            next_attempt_at = CASE WHEN o.refund THEN now()
                                   WHEN o.new_status = 'pending' THEN now() + o.delay
                                   ELSE d.next_attempt_at END,
            completed_at = CASE WHEN o.new_status <> 'pending' THEN now() END
        FROM outcome o
        WHERE d.id = o.delivery_id
          AND d.status = 'leased'
          AND d.attempts = o.attempt
          AND d.next_attempt_at > now()
        RETURNING d.id, d.status
    ),
    -- Each webhook's verdict over this batch, and what it does to the circuit.
    verdict AS (
        SELECT o.webhook_id, bool_or(NOT o.endpoint_failed) AS alive,
               count(*) FILTER (WHERE o.endpoint_failed)::integer AS failures,
               bool_or(o.probe) AS probed,
               max(o.delivery_id) FILTER (WHERE o.endpoint_failed) AS last_failed
        FROM outcome o JOIN applied a ON a.id = o.delivery_id
        GROUP BY o.webhook_id
    ),
    transition AS (
        SELECT v.*, e.circuit AS old_circuit, e.times_opened,
               e.consecutive_failures + v.failures AS failures_now,
               CASE
                   WHEN v.alive THEN 'closed'
                   WHEN e.circuit = 'half_open' AND v.probed THEN 'open'
                   WHEN e.circuit = 'closed'
                        AND e.consecutive_failures + v.failures >= webhooks._circuit_failure_threshold() THEN 'open'
                   ELSE e.circuit
               END AS new_circuit
        FROM verdict v JOIN webhooks.endpoints e ON e.webhook_id = v.webhook_id
        WHERE NOT (v.alive AND e.circuit = 'closed' AND e.consecutive_failures = 0)
    ),
    circuit AS (
        UPDATE webhooks.endpoints e
        SET consecutive_failures = CASE WHEN t.alive THEN 0 ELSE t.failures_now END,
            circuit = t.new_circuit,
            times_opened = CASE WHEN t.alive THEN 0
                                WHEN t.new_circuit = 'open' AND t.old_circuit <> 'open' THEN t.times_opened + 1
                                ELSE t.times_opened END,
            retry_at = CASE WHEN t.new_circuit = 'open' AND t.old_circuit <> 'open'
                            THEN now() + webhooks._circuit_cooldown(t.times_opened)
                            WHEN t.new_circuit = 'open' THEN e.retry_at END,
            probe_delivery_id = CASE WHEN t.new_circuit = t.old_circuit THEN e.probe_delivery_id END,
            probe_attempt = CASE WHEN t.new_circuit = t.old_circuit THEN e.probe_attempt END,
            circuit_changed_at = CASE WHEN t.new_circuit <> t.old_circuit THEN now() ELSE e.circuit_changed_at END,
            circuit_reason = CASE
                WHEN t.new_circuit = t.old_circuit THEN e.circuit_reason
                WHEN t.new_circuit = 'closed' THEN 'closed: the endpoint answered'
                ELSE format('opened for %s s after %s consecutive failures',
                            extract(epoch FROM webhooks._circuit_cooldown(t.times_opened))::float8, t.failures_now)
            END
        FROM transition t
        WHERE e.webhook_id = t.webhook_id
    ),
    logged AS (
        INSERT INTO webhooks.delivery_attempts (delivery_id, attempt, status_code, response_excerpt, error, latency_ms,
                                                webhook_id)
        SELECT o.delivery_id, o.attempt, o.status_code, left(o.response_excerpt, 4096),
               nullif(concat_ws('; ',
                   CASE WHEN o.status_code IS NULL THEN coalesce(o.error, 'no response') ELSE o.error END,
                   CASE WHEN o.refund THEN 'circuit probe failed: this attempt does not count' END,
                   CASE WHEN t.new_circuit = 'open' AND t.old_circuit <> 'open' AND o.delivery_id = t.last_failed
                        THEN format('circuit opened for %s s after %s consecutive failures',
                                    extract(epoch FROM webhooks._circuit_cooldown(t.times_opened))::float8, t.failures_now)
                   END), ''),
               greatest(o.latency_ms, 0), o.webhook_id
        FROM outcome o
        JOIN applied a ON a.id = o.delivery_id
        LEFT JOIN transition t ON t.webhook_id = o.webhook_id
    ),
    -- 410 Gone pauses the webhook with its reason rather than dropping its queue (issue 11).
    gone AS (
        UPDATE webhooks.webhooks w
        SET paused = true, paused_at = now(),
            paused_reason = format('the endpoint answered 410 Gone at %s', now()),
            updated_at = now()
        FROM outcome o JOIN applied a ON a.id = o.delivery_id
        WHERE w.id = o.webhook_id AND o.status_code = 410 AND NOT w.paused
    ),
    answer AS (
        SELECT r.delivery_id, r.attempt, coalesce(a.status, 'refused') AS status
        FROM result r LEFT JOIN applied a ON a.id = r.delivery_id
    )
    SELECT coalesce(jsonb_agg(jsonb_build_object('delivery_id', x.delivery_id, 'attempt', x.attempt,
                                                 'status', x.status) ORDER BY x.delivery_id), '[]')
    INTO answered
    FROM answer x;
    -- Health figures, alerts and auto-pause, from the accepted results just logged (a statement
    -- of its own: the circuit above already updated the endpoints rows in this one).
    PERFORM webhooks._record_health(jsonb_path_query_array(answered, '$[*] ? (@.status != "refused")'));
    RETURN QUERY
    SELECT a.delivery_id, a.attempt, a.status
    FROM jsonb_to_recordset(answered) AS a(delivery_id bigint, attempt integer, status text)
    ORDER BY a.delivery_id;
END
$$;

-- Hand leased deliveries back unsent (a runner shutting down): they are due again at once and
-- the attempt does not count (free_attempts). Its number is not reused: a late report for it
-- is refused. Nothing is logged for it, as nothing was sent.
-- `leases` is a JSON array of {"delivery_id": 1, "attempt": 1}.
CREATE OR REPLACE FUNCTION webhooks.release(leases jsonb)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
DECLARE
    released integer;
BEGIN
    PERFORM webhooks._check_json_array(leases, 'leases', '{
        "delivery_id": ["integer", -9223372036854775808, 9223372036854775807, true],
        "attempt": ["integer", -2147483648, 2147483647, true]}');
    UPDATE webhooks.deliveries d
    SET status = 'pending', free_attempts = d.free_attempts + 1, next_attempt_at = now()
    FROM jsonb_to_recordset(leases) AS l(delivery_id bigint, attempt integer)
    WHERE d.id = l.delivery_id AND d.status = 'leased' AND d.attempts = l.attempt;
    GET DIAGNOSTICS released = ROW_COUNT;
    RETURN released;
END
$$;

-- complete() and release() given JSON text (an untyped literal, a string parameter): parsed
-- here, so that text jsonb cannot hold (\u0000, a NUL) is the caller's WH034 and text that is no
-- JSON its WH013, not 22P05 or 22P02 from the cast. A jsonb argument goes straight to the above.
CREATE OR REPLACE FUNCTION webhooks._parse_json_input(field text, value text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN value::jsonb;
EXCEPTION
    WHEN untranslatable_character THEN
        PERFORM webhooks._fail('WH034', field, format('contains a NUL character (\u0000), which the database '
            'cannot store: %s', left(value, 80)));
    WHEN invalid_text_representation OR invalid_parameter_value THEN
        PERFORM webhooks._fail('WH013', field, format('is not valid JSON: %s', left(value, 80)));
END
$$;

CREATE OR REPLACE FUNCTION webhooks.complete(results text)
RETURNS TABLE (delivery_id bigint, attempt integer, status text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM webhooks.complete(webhooks._parse_json_input('results', results))
$$;

CREATE OR REPLACE FUNCTION webhooks.release(leases text)
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT webhooks.release(webhooks._parse_json_input('leases', leases))
$$;
