-- pgwebhooks: the delivery log. What each delivery and attempt did, for people, the CLI and the
-- dashboard: pages of deliveries, the attempts of one, the request one sent, attempts per slot.

-- One page of a webhook's log for get_deliveries: what is queued (captured, not yet fanned out),
-- what is held, and the deliveries, newest first in that order; the checks are get_deliveries'.
CREATE OR REPLACE FUNCTION webhooks._deliveries_page(id uuid, "limit" integer, "offset" integer)
RETURNS TABLE (
    delivery_id bigint, event_id uuid, event text, "table" text, status text, attempts integer,
    response_status integer, response_excerpt text, error text, latency_ms integer, created_at timestamptz,
    last_attempt_at timestamptz, next_attempt_at timestamptz, completed_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    -- Changes captured but not yet turned into deliveries (that happens when a runner claims)
    -- come first, as status 'queued' without a delivery id: newest of all, and owed all the same.
    -- Only an enabled webhook's: a disabled one gets no delivery from them.
    WITH queued AS (
        -- A published event is listed by its type, not as EVENT.
        SELECT NULL::bigint AS id, webhooks._event_id(c.published_id, c.id, g.n) AS event_id,
               CASE WHEN c.operation = 'EVENT' THEN coalesce(c.event_type, 'EVENT') ELSE c.operation END AS operation,
               format('%I.%I', c.schema_name, c.table_name) AS tbl, c.occurred_at, c.id AS capture_id, g.n
        FROM webhooks.captures c
        CROSS JOIN LATERAL generate_series(c.fanned_out + 1, c.row_count) AS g(n)
        WHERE c.fanned_out < c.row_count AND _deliveries_page.id = ANY (c.webhook_ids)
          AND EXISTS (SELECT 1 FROM webhooks.webhooks w WHERE w.id = _deliveries_page.id AND w.enabled)
        UNION ALL
        -- Published events and one-row changes past the webhook's cursors without a delivery yet
        -- (041_cursors.sql).
        SELECT NULL::bigint, webhooks._event_id(c.published_id, c.id, 1),
               CASE WHEN c.operation = 'EVENT' THEN coalesce(c.event_type, 'EVENT') ELSE c.operation END,
               format('%I.%I', c.schema_name, c.table_name), c.occurred_at, c.id, 1
        FROM webhooks.cursors k
        JOIN webhooks.captures c ON c.route = k.route AND c.route IS NOT NULL AND (c.xid, c.id) > (k.xid, k.id)
        WHERE k.webhook_id = _deliveries_page.id
          AND EXISTS (SELECT 1 FROM webhooks.webhooks w WHERE w.id = _deliveries_page.id AND w.enabled)
          AND NOT EXISTS (SELECT 1 FROM webhooks.deliveries d WHERE d.capture_id = c.id AND d.webhook_id = k.webhook_id)
        ORDER BY 6 DESC, 7 DESC
        LIMIT "limit"::bigint + "offset"
    ), listed AS (
        SELECT q.id, q.event_id, q.operation, q.tbl, 'queued'::text AS status, 0 AS attempts,
               NULL::integer AS status_code, NULL::text AS response_excerpt, NULL::text AS error,
               NULL::integer AS latency_ms, q.occurred_at AS created_at, NULL::timestamptz AS attempted_at,
               NULL::timestamptz AS next_attempt_at, NULL::timestamptz AS completed_at,
               0 AS part, q.capture_id AS k1, q.n::bigint AS k2
        FROM queued q
        UNION ALL
        -- Rows held for this webhook because its `where` failed at capture (release_held()).
        SELECT * FROM (
            SELECT NULL::bigint, NULL::uuid, h.operation, format('%I.%I', h.schema_name, h.table_name), 'held'::text,
                   0, NULL::integer, NULL::text, h.held_error, NULL::integer, h.held_at, NULL::timestamptz,
                   NULL::timestamptz, NULL::timestamptz, -1, h.id, 0::bigint
            FROM webhooks.held_rows h
            WHERE h.webhook_id = _deliveries_page.id
            ORDER BY h.id DESC
            LIMIT "limit"::bigint + "offset"
        ) held
        UNION ALL
        SELECT * FROM (
            SELECT d.id, webhooks._event_id(c.published_id, d.capture_id, d.n),
                   coalesce(CASE WHEN c.operation = 'EVENT' THEN c.event_type END, c.operation, 'PURGED'),
                   CASE WHEN c.id IS NOT NULL THEN format('%I.%I', c.schema_name, c.table_name) END,
                   d.status, d.attempts, a.status_code, a.response_excerpt, a.error, a.latency_ms, d.created_at,
                   a.attempted_at, CASE WHEN d.status = 'pending' THEN d.next_attempt_at END, d.completed_at,
                   1, d.id, 0::bigint
            FROM webhooks.deliveries d
            -- LEFT: a delivery whose event was purged under it stays visible (claim() fails it).
            LEFT JOIN webhooks.captures c ON c.id = d.capture_id
            LEFT JOIN LATERAL (
                SELECT * FROM webhooks.delivery_attempts x
                WHERE x.delivery_id = d.id ORDER BY x.attempt DESC, x.id DESC LIMIT 1
            ) a ON true
            WHERE d.webhook_id = _deliveries_page.id
            ORDER BY d.id DESC
            LIMIT "limit"::bigint + "offset"
        ) listed_deliveries
    )
    SELECT l.id, l.event_id, l.operation, l.tbl, l.status, l.attempts, l.status_code, l.response_excerpt,
           l.error, l.latency_ms, l.created_at, l.attempted_at, l.next_attempt_at, l.completed_at
    FROM listed l
    ORDER BY l.part, l.k1 DESC, l.k2 DESC
    LIMIT "limit" OFFSET "offset"
$$;

CREATE OR REPLACE FUNCTION webhooks.get_deliveries(id uuid, "limit" integer DEFAULT 50, "offset" integer DEFAULT 0)
RETURNS TABLE (
    delivery_id bigint,
    event_id uuid,
    event text,
    "table" text,
    status text,
    attempts integer,
    response_status integer,
    response_excerpt text,
    error text,
    latency_ms integer,
    created_at timestamptz,
    last_attempt_at timestamptz,
    next_attempt_at timestamptz,
    completed_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webhooks._webhook_exists(id);
    -- The log holds the receiver's answers, which may echo what was sent.
    PERFORM webhooks._check_reach(id);
    PERFORM webhooks._check_range('limit', "limit", 1, 1000);
    PERFORM webhooks._check_range('offset', "offset", 0, 2147483647);
    RETURN QUERY SELECT * FROM webhooks._deliveries_page(id, "limit", "offset");
END
$$;

-- Every attempt of one delivery, oldest first.
CREATE OR REPLACE FUNCTION webhooks.get_delivery_attempts(delivery_id bigint)
RETURNS TABLE (attempt integer, status_code integer, response_excerpt text, error text,
               latency_ms integer, attempted_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks.deliveries d WHERE d.id = get_delivery_attempts.delivery_id) THEN
        PERFORM webhooks._fail('WH404', 'delivery_id', format('no delivery with id %s', coalesce(delivery_id::text, 'null')));
    END IF;
    PERFORM webhooks._check_reach(d.webhook_id) FROM webhooks.deliveries d WHERE d.id = get_delivery_attempts.delivery_id;
    RETURN QUERY
    SELECT a.attempt, a.status_code, a.response_excerpt, a.error, a.latency_ms, a.attempted_at
    FROM webhooks.delivery_attempts a
    WHERE a.delivery_id = get_delivery_attempts.delivery_id
    ORDER BY a.attempt, a.id;
END
$$;

-- A webhook's deliveries, newest first, with filters: only_status, only_event (an operation such
-- as INSERT, or an event type), created since/until; `before_id` pages on (the last id shown).
-- `event` is a published event's type (and a table change's operation), never EVENT.
CREATE OR REPLACE FUNCTION webhooks.delivery_log(
    id uuid, only_status text DEFAULT NULL, only_event text DEFAULT NULL, since timestamptz DEFAULT NULL,
    until timestamptz DEFAULT NULL, "limit" integer DEFAULT 50, before_id bigint DEFAULT NULL)
RETURNS TABLE (
    delivery_id bigint,
    event_id uuid,
    event text,
    event_type text,
    "table" text,
    status text,
    attempts integer,
    response_status integer,
    response_excerpt text,
    error text,
    latency_ms integer,
    created_at timestamptz,
    last_attempt_at timestamptz,
    next_attempt_at timestamptz,
    completed_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
BEGIN
    PERFORM webhooks._webhook_exists(id);
    PERFORM webhooks._check_reach(id);  -- as get_deliveries: receivers' answers may echo the rows
    PERFORM webhooks._check_range('limit', "limit", 1, 500);
    IF only_status IS NOT NULL AND only_status NOT IN ('pending', 'leased', 'delivered', 'failed') THEN
        PERFORM webhooks._fail('WH040', 'only_status', format('%L is not one of pending, leased, delivered, failed', only_status));
    END IF;
    IF length(only_event) > 200 THEN
        PERFORM webhooks._fail('WH040', 'only_event', format('is %s characters long; at most 200 are allowed', length(only_event)));
    END IF;
    RETURN QUERY
    SELECT d.id, webhooks._event_id(c.published_id, d.capture_id, d.n),
           coalesce(CASE WHEN c.operation = 'EVENT' THEN c.event_type END, c.operation, 'PURGED'),
           coalesce(c.event_type, sub.event_type),
           CASE WHEN c.id IS NOT NULL AND c.operation NOT IN ('EVENT', 'TEST')
                THEN format('%I.%I', c.schema_name, c.table_name) END,
           d.status, d.attempts, a.status_code, a.response_excerpt, a.error, a.latency_ms, d.created_at,
           a.attempted_at, CASE WHEN d.status = 'pending' THEN d.next_attempt_at END, d.completed_at
    FROM webhooks.deliveries d
    LEFT JOIN webhooks.captures c ON c.id = d.capture_id
    LEFT JOIN webhooks.subscriptions sub ON sub.webhook_id = d.webhook_id AND sub.relid = c.relid
                                        AND c.operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
    LEFT JOIN LATERAL (
        SELECT * FROM webhooks.delivery_attempts x
        WHERE x.delivery_id = d.id ORDER BY x.attempt DESC, x.id DESC LIMIT 1
    ) a ON true
    WHERE d.webhook_id = delivery_log.id
      AND (before_id IS NULL OR d.id < before_id)
      AND (only_status IS NULL OR d.status = only_status)
      AND (since IS NULL OR d.created_at >= since)
      AND (until IS NULL OR d.created_at < until)
      AND (only_event IS NULL OR c.operation = only_event OR coalesce(c.event_type, sub.event_type) = only_event)
    ORDER BY d.id DESC
    LIMIT "limit";
END
$$;

-- The request a delivery sent (its latest attempt, or `attempt`): webhook, URL, body and headers,
-- re-rendered from the outbox as claim() renders them. The body is byte-identical to what the
-- receiver got as long as the webhook's profile and name have not changed since. Secret header
-- values and signatures are never shown (they stand as "[secret]" and "[signed when sent]"); a
-- table change is shown only to a caller who may SELECT that table.
CREATE OR REPLACE FUNCTION webhooks.delivery_request(delivery_id bigint, attempt integer DEFAULT NULL)
RETURNS TABLE (webhook_id uuid, url text, body text, headers jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
DECLARE
    d webhooks.deliveries;
    w webhooks.webhooks;
    c webhooks.captures;
    e record;
    sub webhooks.subscriptions;
    uid uuid;
    n_attempt integer;
    rendered text;
    signed jsonb;
    shown jsonb;
    k text;
BEGIN
    SELECT * INTO d FROM webhooks.deliveries x WHERE x.id = delivery_request.delivery_id;
    IF NOT FOUND THEN
        PERFORM webhooks._fail('WH404', 'delivery_id', format('no delivery with id %s', coalesce(delivery_id::text, 'null')));
    END IF;
    SELECT * INTO w FROM webhooks.webhooks x WHERE x.id = d.webhook_id;
    IF NOT FOUND THEN
        PERFORM webhooks._fail('WH043', 'delivery_id', format('delivery %s belongs to a deleted webhook', delivery_id));
    END IF;
    PERFORM webhooks._check_reach(w.id);  -- as get_delivery_attempts (070_webhooks.sql)
    SELECT * INTO c FROM webhooks.captures x WHERE x.id = d.capture_id;
    IF NOT FOUND THEN
        PERFORM webhooks._fail('WH043', 'delivery_id', format('the event of delivery %s was purged', delivery_id));
    END IF;
    IF c.operation NOT IN ('EVENT', 'TEST') AND NOT has_table_privilege(webhooks._caller(), c.relid, 'SELECT') THEN
        PERFORM webhooks._fail('WH043', 'delivery_id', format('role %I may not SELECT %I.%I, the table delivery %s '
            'comes from', webhooks._caller(), c.schema_name, c.table_name, delivery_id));
    END IF;
    n_attempt := coalesce(attempt, greatest(d.attempts, 1));
    IF n_attempt < 1 OR n_attempt > greatest(d.attempts, 1) THEN
        PERFORM webhooks._fail('WH040', 'attempt', format('%s is out of range; delivery %s has %s attempt(s)',
                                                         n_attempt, delivery_id, d.attempts));
    END IF;
    IF c.row_count > 1 THEN
        SELECT * INTO e FROM webhooks._event_images(c.id, d.n);
    ELSE
        SELECT NULL::json AS record, NULL::json AS old_record INTO e;
    END IF;
    SELECT * INTO sub FROM webhooks.subscriptions s
    WHERE s.webhook_id = w.id AND s.relid = c.relid AND c.operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE');
    uid := webhooks._event_id(c.published_id, c.id, d.n);
    rendered := webhooks._envelope(
        w.profile, uid, c.operation, coalesce(c.event_type, sub.event_type), c.schema_name, c.table_name,
        webhooks._without(coalesce(e.record, c.record), sub.exclude_columns),
        webhooks._without(coalesce(e.old_record, c.old_record), sub.exclude_columns),
        to_char(c.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        w.id, c.data, w.name, n_attempt, w.max_retries);
    -- Signed with a throwaway key, for the names of the headers only: their values are replaced.
    signed := webhooks._sign_headers(uid::text, 0, rendered, ARRAY['whsec_' || encode(convert_to('x', 'UTF8'), 'base64')]);
    signed := signed || webhooks._profile_headers(w.profile, signed, rendered, 'x');
    shown := '{}';
    FOR k IN SELECT jsonb_object_keys(signed) LOOP
        shown := shown || jsonb_build_object(k, CASE WHEN lower(k) = 'webhook-id' THEN uid::text
                                                     WHEN lower(k) = 'webhook-timestamp' THEN '[time of sending]'
                                                     ELSE '[signed when sent]' END);
    END LOOP;
    RETURN QUERY SELECT w.id, w.url, rendered,
        w.headers
        || coalesce((SELECT jsonb_object_agg(h.key, '[secret]')
                     FROM webhooks.secret_headers sh, jsonb_each(sh.headers) h WHERE sh.webhook_id = w.id), '{}')
        || jsonb_build_object('Content-Type', 'application/json', 'User-Agent', 'pgwebhooks/' || webhooks.version())
        || shown;
END
$$;

-- Attempts per webhook in `buckets` slots of `slot` up to now, for the overview's charts: one
-- index range per webhook (delivery_attempts_webhook_recent), never the whole log.
CREATE OR REPLACE FUNCTION webhooks.delivery_histogram(slot interval DEFAULT '30 minutes', buckets integer DEFAULT 12)
RETURNS TABLE (webhook_id uuid, bucket_start timestamptz, delivered bigint, failed bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
DECLARE
    origin timestamptz;
BEGIN
    PERFORM webhooks._check_range('buckets', buckets, 1, 200);
    IF slot IS NULL OR slot < interval '1 minute' OR slot > interval '1 day' THEN
        PERFORM webhooks._fail('WH040', 'slot', format('%s is out of range; expected 1 minute to 1 day', coalesce(slot::text, 'null')));
    END IF;
    origin := date_bin(slot, now(), timestamptz '2000-01-01') - slot * (buckets - 1);
    RETURN QUERY
    SELECT w.id, h.b, h.delivered, h.failed
    FROM webhooks.webhooks w
    CROSS JOIN LATERAL (
        SELECT date_bin(slot, a.attempted_at, timestamptz '2000-01-01') AS b,
               count(*) FILTER (WHERE a.status_code BETWEEN 200 AND 299) AS delivered,
               count(*) FILTER (WHERE NOT coalesce(a.status_code BETWEEN 200 AND 299, false)) AS failed
        FROM webhooks.delivery_attempts a
        WHERE a.webhook_id = w.id AND a.attempted_at >= origin
        GROUP BY 1
    ) h
    ORDER BY w.id, h.b;
END
$$;

GRANT EXECUTE ON FUNCTION webhooks.get_deliveries, webhooks.get_delivery_attempts TO webhooks_admin, webhooks_viewer;
GRANT EXECUTE ON FUNCTION webhooks.delivery_log, webhooks.delivery_request, webhooks.delivery_histogram
TO webhooks_admin, webhooks_viewer;

COMMENT ON TABLE webhooks.delivery_attempts IS
    'Every attempt of every delivery: status code, response excerpt, error, latency.';

COMMENT ON FUNCTION webhooks.get_deliveries IS
    'A webhook''s deliveries, newest first: status, attempts, last response, error, latency, timestamps.';

COMMENT ON FUNCTION webhooks.get_delivery_attempts IS
    'Every attempt of one delivery, oldest first.';

COMMENT ON FUNCTION webhooks.delivery_log IS
    'A webhook''s deliveries, newest first, filtered by status, event (operation or event type), created since/until; pages with before_id. Published events are listed by their type.';

COMMENT ON FUNCTION webhooks.delivery_request IS
    'The URL, body and headers a delivery sent, re-rendered from the outbox; secret header values and signatures are masked. Table changes only for callers who may SELECT the table.';

COMMENT ON FUNCTION webhooks.delivery_histogram IS
    'Attempts per webhook (delivered, failed) in time slots up to now, for the dashboard''s charts.';

COMMENT ON FUNCTION webhooks._deliveries_page IS
    'get_deliveries'' page: queued changes, held rows, then deliveries, newest first (arguments checked by get_deliveries).';
