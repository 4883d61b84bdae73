-- pgwebhooks: payloads. The body of a delivery in its webhook's receiver profile and the headers
-- that go with it, rendered at claim time from the outbox (never stored twice).

-- The object `image` without the keys `excluded`, in its own key order (for _without).
CREATE OR REPLACE FUNCTION webhooks._without_columns(image json, excluded text[])
RETURNS json
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT json_object_agg(k.key, k.value ORDER BY k.ord)
                     FROM json_each(image) WITH ORDINALITY AS k(key, value, ord)
                     WHERE k.key <> ALL (excluded)), '{}'::json)
$$;

-- A row image without the columns `excluded`, its column order kept (json, not jsonb), as
-- compact JSON (webhooks._compact_image: json_object_agg prints { "id" : 1 }, and a jsonb column
-- embeds "a": 1). Called by claim() for every row image it sends; a NULL list removes nothing.
-- A SQL expression without a SET clause, so that claim() inlines it (see 060_claim.sql): most
-- images have nothing to remove, and a missing one (an INSERT's old image) costs nothing.
CREATE OR REPLACE FUNCTION webhooks._without(image json, excluded text[])
RETURNS json
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN image IS NULL THEN NULL
        WHEN excluded IS NULL OR json_typeof(image) <> 'object' THEN webhooks._compact_image(image)
        ELSE webhooks._compact_image(webhooks._without_columns(image, excluded))
    END
$$;

-- The request body of one delivery, in the webhook's receiver profile (see README, "Receiver
-- profiles"). Built from records with row_to_json, which prints compact JSON in the records'
-- column order; the row images are embedded exactly as the capture stored them.
--   standard, fluxbase, fluxbase_hex  {"id","event"[,"type"],"table","schema","record","old_record","timestamp","webhook_id"}
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
    -- _request builds the bodies from here on, but for truss, supabase and hasura, itself: change
    -- both together.
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
--   fluxbase_hex  X-Fluxbase-Signature: <hex HMAC of the body> (Fluxbase's older receivers)
--   truss     X-Truss-Signature: <hex HMAC of the body>
--   rowbase   X-Rowbase-Signature: sha256=<hex HMAC of the body>
-- No SET clause, so that claim() inlines it (see 060_claim.sql): for most profiles it is '{}'.
CREATE OR REPLACE FUNCTION webhooks._profile_headers(profile text, signed jsonb, body text, secret text)
RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT CASE profile
        WHEN 'fluxbase' THEN jsonb_build_object('X-Fluxbase-Signature', signed ->> 'X-Webhook-Signature')
            || CASE WHEN secret IS NOT NULL
                    THEN jsonb_build_object('X-Webhook-Signature', webhooks._hmac_hex(secret, body)) ELSE '{}' END
        WHEN 'fluxbase_hex' THEN CASE WHEN secret IS NOT NULL
            THEN jsonb_build_object('X-Fluxbase-Signature', webhooks._hmac_hex(secret, body)) ELSE '{}' END
        WHEN 'truss' THEN CASE WHEN secret IS NOT NULL
            THEN jsonb_build_object('X-Truss-Signature', webhooks._hmac_hex(secret, body)) ELSE '{}' END
        WHEN 'rowbase' THEN CASE WHEN secret IS NOT NULL
            THEN jsonb_build_object('X-Rowbase-Signature', 'sha256=' || webhooks._hmac_hex(secret, body)) ELSE '{}' END
        ELSE '{}'::jsonb
    END
$$;

-- Row `of_n` of multi-row capture `of_capture` (migration 0019): its image and, for an UPDATE,
-- the old one. Chunks hold rows `n` to `n + 15` in `records` and `old_records`; a row stored
-- alone (written before 0.5.0, by a capture filter, or read-only) is the row whose `n` is `of_n`.
-- claim() reads it through _request (inlined there: no SET clause).
CREATE OR REPLACE FUNCTION webhooks._event_images(of_capture bigint, of_n integer)
RETURNS TABLE (record json, old_record json)
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN e.records IS NOT NULL THEN e.records[of_n - e.n + 1]::json
                WHEN e.n = of_n THEN e.record END,
           CASE WHEN e.records IS NOT NULL THEN e.old_records[of_n - e.n + 1]::json
                WHEN e.n = of_n THEN e.old_record END
    FROM webhooks.events e
    WHERE e.capture_id = of_capture AND e.n <= of_n
    ORDER BY e.n DESC
    LIMIT 1
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
    LEFT JOIN LATERAL webhooks._event_images(CASE WHEN c.row_count > 1 THEN l.capture_id END, l.n) e ON true
    LEFT JOIN webhooks.subscriptions sub ON sub.webhook_id = w.id AND sub.relid = c.relid
                                        AND c.operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
    CROSS JOIN LATERAL (
        SELECT u.uid, webhooks._envelope(
            w.profile, u.uid, c.operation, coalesce(c.event_type, sub.event_type), c.schema_name, c.table_name,
            webhooks._without(coalesce(e.record, c.record), sub.exclude_columns),
            webhooks._without(coalesce(e.old_record, c.old_record), sub.exclude_columns),
            to_char(c.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            w.id, c.data, w.name, l.attempts + 1, w.max_retries) AS env
        FROM (SELECT webhooks._event_id(c.published_id, l.capture_id, l.n) AS uid) u
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

-- The request of one leased delivery (event `of_n` of capture `of_capture` for webhook
-- `of_webhook`, attempt `of_attempt`): URL, body in the webhook's profile and every header,
-- signed. Nothing for a webhook or capture that is gone.
CREATE OR REPLACE FUNCTION webhooks._request(of_capture bigint, of_n integer, of_webhook uuid, of_attempt integer)
RETURNS TABLE (url text, body text, headers jsonb, timeout_seconds integer)
LANGUAGE sql STABLE
AS $$
    SELECT w.url, p.body,
           w.headers
           -- Secret headers: sent, never shown by list/get.
           || coalesce((SELECT sh.headers FROM webhooks.secret_headers sh WHERE sh.webhook_id = w.id), '{}')
           || jsonb_build_object('Content-Type', 'application/json',
                                 'User-Agent', 'pgwebhooks/' || webhooks.version())
           || g.signed
           || webhooks._profile_headers(w.profile, g.signed, p.body, k.secrets[1])
           || CASE WHEN c.test THEN '{"webhook-test": "true"}'::jsonb ELSE '{}'::jsonb END,
           w.timeout_seconds
    FROM webhooks.webhooks w
    JOIN webhooks.captures c ON c.id = of_capture
    -- A one-row capture's image is inline: no capture id, so no events row is looked up.
    LEFT JOIN LATERAL webhooks._event_images(CASE WHEN c.row_count > 1 THEN of_capture END, of_n) e ON true
    -- The event type a table subscription sends its changes as, and the columns it never sends
    -- (exclude_columns).
    LEFT JOIN webhooks.subscriptions sub ON sub.webhook_id = w.id AND sub.relid = c.relid
                                        AND c.operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
    -- webhooks._event_id() inline: called through the LATERAL it ran once per reference. The
    -- salt is probed only for an event without a stored id.
    CROSS JOIN LATERAL (
        SELECT coalesce(c.published_id, (SELECT md5(i.salt::text || '/' || of_capture || '/' || of_n)::uuid
                                         FROM webhooks._salt_for(of_capture) i)) AS uid
    ) u
    CROSS JOIN LATERAL (
        -- exclude_columns are removed here: kept in the outbox, never sent.
        SELECT webhooks._without(coalesce(e.record, c.record), sub.exclude_columns) AS record,
               webhooks._without(coalesce(e.old_record, c.old_record), sub.exclude_columns) AS old_record,
               to_char(c.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS ts
        OFFSET 0
    ) i
    -- The envelopes of the standard profile's shape (an event; a row change or test, with or
    -- without its type) are built here, _envelope's to the byte: its PL/pgSQL call per delivery,
    -- the call and its query, was ~15 us of each claimed delivery. Other bodies are _envelope's.
    CROSS JOIN LATERAL (
        SELECT u.uid, CASE
            WHEN w.profile IN ('rowbase', 'flux') THEN NULL
            WHEN c.operation = 'EVENT' OR c.data IS NOT NULL THEN
                (SELECT row_to_json(x)::text FROM (
                    SELECT u.uid AS id, coalesce(c.event_type, sub.event_type) AS type, i.ts AS "timestamp",
                           CASE WHEN c.data IS NOT NULL THEN webhooks._compact_json(c.data)::json END AS data,
                           w.id AS webhook_id) x)
            WHEN w.profile IN ('truss', 'supabase', 'hasura') THEN NULL
            WHEN coalesce(c.event_type, sub.event_type) IS NOT NULL THEN
                (SELECT row_to_json(x)::text FROM (
                    SELECT u.uid AS id, c.operation AS event, coalesce(c.event_type, sub.event_type) AS type,
                           c.table_name AS "table", c.schema_name AS schema, i.record,
                           CASE WHEN c.operation = 'DELETE' THEN i.record ELSE i.old_record END AS old_record,
                           i.ts AS "timestamp", w.id AS webhook_id) x)
            ELSE
                (SELECT row_to_json(x)::text FROM (
                    SELECT u.uid AS id, c.operation AS event, c.table_name AS "table", c.schema_name AS schema,
                           i.record, CASE WHEN c.operation = 'DELETE' THEN i.record ELSE i.old_record END AS old_record,
                           i.ts AS "timestamp", w.id AS webhook_id) x)
        END AS inline
        OFFSET 0
    ) p00
    CROSS JOIN LATERAL (
        SELECT p00.uid, coalesce(p00.inline, webhooks._envelope(
                w.profile, u.uid, c.operation, coalesce(c.event_type, sub.event_type), c.schema_name, c.table_name,
                i.record, i.old_record, i.ts, w.id, c.data, w.name, of_attempt, w.max_retries)) AS env
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
    WHERE w.id = of_webhook
$$;
