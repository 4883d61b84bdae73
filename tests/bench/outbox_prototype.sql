-- A prototype of the outbox's next data path (docs/outbox-design.md, "Next"), for measuring only:
-- tests/bench/outbox_prototype.py installs it beside a real pgwebhooks install and runs both.
-- Not part of the product. One-row captures, one route per webhook, every delivery a 2xx.
--
--   log       insert-only, partitioned by id range; one index, (route, xid, id): what a cursor reads
--   cursors   per (webhook, route): the (xid, id) below which every row is handled
--   outcomes  the delivery log: one row per attempt, partitioned like the log; inserted by claim
--             (the lease) and updated once by complete, in place (HOT: no indexed column changes)
--   leases    one row per claim: its deadline, its attempts and how many are still open; a claim
--             settles the open attempts of a lease that ran out as expired and retries them
--   retries   failed attempts waiting for their next try (a small table: churn per failure only)
DROP SCHEMA IF EXISTS outbox_proto CASCADE;
CREATE SCHEMA outbox_proto;

CREATE SEQUENCE outbox_proto.log_id;
CREATE TABLE outbox_proto.log (
    id          bigint NOT NULL DEFAULT nextval('outbox_proto.log_id'),
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    route       oid NOT NULL,
    operation   text NOT NULL,
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    webhook_ids uuid[] NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    record      json,
    old_record  json,
    data        jsonb,  -- an application event's
    PRIMARY KEY (route, xid, id)
) PARTITION BY RANGE (id);

CREATE TABLE outbox_proto.cursors (
    webhook_id uuid NOT NULL,
    route      oid NOT NULL,
    xid        xid8 NOT NULL DEFAULT '0',
    id         bigint NOT NULL DEFAULT 0,
    in_flight  integer NOT NULL DEFAULT 0,
    -- Delivered ahead of the cursor, past an older writer still open: up to (ahead_xid, ahead_id)
    -- in cursor order, plus the rows of `ahead_open` (writers that were still open below it).
    ahead_xid  xid8,
    ahead_id   bigint,
    ahead_open xid8[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (webhook_id, route)
);

CREATE TABLE outbox_proto.outcomes (
    log_id           bigint NOT NULL,
    webhook_id       uuid NOT NULL,
    attempt          integer NOT NULL,
    lease_id         integer NOT NULL,  -- never changed by the settle, which stays HOT
    status_code      integer,
    error            text,
    response_excerpt text,
    latency_ms       integer,
    attempted_at     timestamptz NOT NULL DEFAULT now(),
    leased_until     timestamptz NOT NULL
) PARTITION BY RANGE (log_id);
CREATE INDEX ON outbox_proto.outcomes (webhook_id, log_id);

-- A settled attempt cannot sit in a partial index of unsettled ones without losing its HOT
-- update, so what is still open is counted per claim instead: one row per lease, found by its
-- deadline once it has run out, holding the keys of what it leased.
CREATE TABLE outbox_proto.leases (
    id         integer GENERATED ALWAYS AS IDENTITY (CYCLE) PRIMARY KEY,  -- a lease lives minutes
    webhook_id uuid NOT NULL,
    route      oid NOT NULL,
    deadline   timestamptz NOT NULL,
    open       integer NOT NULL,
    log_ids    bigint[] NOT NULL,
    xids       xid8[] NOT NULL
);
CREATE INDEX ON outbox_proto.leases (webhook_id, deadline) WHERE open > 0;

CREATE TABLE outbox_proto.retries (
    webhook_id uuid NOT NULL,
    log_id     bigint NOT NULL,
    route      oid NOT NULL,
    xid        xid8 NOT NULL,
    attempt    integer NOT NULL,  -- the attempt it will be
    due        timestamptz NOT NULL,
    PRIMARY KEY (webhook_id, log_id)
);
CREATE INDEX ON outbox_proto.retries (webhook_id, due);

-- Attempts a delivery gets in all (the product's max_retries + 1).
CREATE FUNCTION outbox_proto.max_attempts() RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT 3';

-- Partitions of `size` ids from `first`, for the log and the outcomes alike.
CREATE FUNCTION outbox_proto.add_partition(first bigint, size bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TABLE outbox_proto.log_%s PARTITION OF outbox_proto.log FOR VALUES FROM (%s) TO (%s)',
                   first, first, first + size);
    -- Room on each page for every attempt row's one settle, so that it is a HOT update: no new
    -- index entry, and the old version is pruned on the page.
    EXECUTE format('CREATE TABLE outbox_proto.outcomes_%s PARTITION OF outbox_proto.outcomes'
                   ' FOR VALUES FROM (%s) TO (%s) WITH (fillfactor = 50)', first, first, first + size);
END $$;

-- The capture: today's one-row statement trigger (030_capture.sql) writing the log instead.
CREATE FUNCTION outbox_proto.capture() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO outbox_proto.log (route, operation, schema_name, table_name, webhook_ids, record)
    SELECT TG_RELID, TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]::pg_catalog.uuid[],
           pg_catalog.row_to_json(new_row.*)
    FROM new_rows new_row
    WHERE NOT EXISTS (SELECT FROM new_rows OFFSET 1) AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) TG_RELID
        AND a.attnum OPERATOR(pg_catalog.>) 0 AND a.atttypid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid);
    RETURN NULL;
END $$;

-- claim: the webhook's rows past its cursor that no open writer can still add to (xid below the
-- oldest running transaction's), in (xid, id) order; then, if the batch has room, rows committed
-- past an older writer still open, once they are `patience` old: delivered ahead of the cursor,
-- which skips them when it gets there (they have an attempt row). Where the ahead scan stopped is
-- kept on the cursor row with the writers that were open below that point, so each ahead scan
-- reads only new rows and those writers' rows, never the whole stretch again.
-- Leased rows are rendered in the standard shape and signed like 050_payloads.
CREATE FUNCTION outbox_proto.claim(of_webhook uuid, of_route oid, k integer, patience interval DEFAULT '1 s',
                                   lease interval DEFAULT '30 s')
RETURNS TABLE (log_id bigint, attempt integer, body text, headers jsonb)
LANGUAGE plpgsql SET enable_seqscan = off SET enable_bitmapscan = off AS $$
DECLARE
    c outbox_proto.cursors;
    snap pg_snapshot := pg_current_snapshot();
    horizon xid8 := pg_snapshot_xmin(snap);
    passing boolean;
    taken bigint[] := '{}';
    taken_xids xid8[] := '{}';  -- beside `taken`: the log is found by its key, (route, xid, id)
    taken_attempts integer[] := '{}';
    this_lease bigint;
    r record;
    last_xid xid8;
    last_id bigint;
    ahead_xid xid8;
    ahead_id bigint;
BEGIN
    SELECT * INTO c FROM outbox_proto.cursors WHERE webhook_id = of_webhook AND route = of_route FOR UPDATE;
    -- Leases that ran out with attempts still open (a runner died or stalled): those attempts are
    -- settled as expired, under the fencing complete() uses (unsettled, this lease), so a late
    -- report of one is refused, and retried now while attempts are left.
    WITH expired AS (
        UPDATE outbox_proto.leases s SET open = 0
        WHERE s.webhook_id = of_webhook AND s.open > 0 AND s.deadline < now()
        RETURNING s.id, s.log_ids, s.xids, s.route
    ), settled AS (
        UPDATE outbox_proto.outcomes o SET error = 'lease expired before a result was reported'
        FROM expired e
        WHERE o.webhook_id = of_webhook AND o.log_id = ANY (e.log_ids) AND o.lease_id = e.id
          AND o.status_code IS NULL AND o.error IS NULL
        RETURNING o.log_id, o.attempt, e.log_ids, e.xids, e.route
    )
    INSERT INTO outbox_proto.retries (webhook_id, log_id, route, xid, attempt, due)
    SELECT of_webhook, s.log_id, s.route, s.xids[array_position(s.log_ids, s.log_id)], s.attempt + 1, now()
    FROM settled s WHERE s.attempt < outbox_proto.max_attempts();
    -- Due retries before anything past the cursor: they are older.
    FOR r IN
        DELETE FROM outbox_proto.retries x
        WHERE (x.webhook_id, x.log_id) IN (
            SELECT y.webhook_id, y.log_id FROM outbox_proto.retries y
            WHERE y.webhook_id = of_webhook AND y.route = of_route AND y.due <= now()
            ORDER BY y.due LIMIT k FOR UPDATE SKIP LOCKED)
        RETURNING x.log_id, x.xid, x.attempt
    LOOP
        taken := taken || r.log_id;
        taken_xids := taken_xids || r.xid;
        taken_attempts := taken_attempts || r.attempt;
    END LOOP;
    -- Below where the ahead scan got to, rows may have been delivered already: look before taking.
    passing := c.ahead_id IS NOT NULL;
    FOR r IN
        SELECT l.xid, l.id, passing AND EXISTS (
                   SELECT FROM outbox_proto.outcomes o WHERE o.webhook_id = of_webhook AND o.log_id = l.id) AS sent
        FROM outbox_proto.log l
        WHERE l.route = of_route AND (l.xid, l.id) > (c.xid, c.id) AND l.xid < horizon
        ORDER BY l.xid, l.id LIMIT CASE WHEN passing THEN 10 * k ELSE k END
    LOOP
        EXIT WHEN cardinality(taken) = k;
        last_xid := r.xid;
        last_id := r.id;
        IF NOT r.sent THEN
            taken := taken || r.id;
            taken_xids := taken_xids || r.xid;
            taken_attempts := taken_attempts || 1;
        END IF;
    END LOOP;
    IF last_id IS NOT NULL THEN
        c.xid := last_xid;
        c.id := last_id;
        -- Past the ahead point, the cursor has passed everything delivered ahead: the open
        -- writers below it have finished (the cursor only passes finished ones).
        IF passing AND (c.xid, c.id) >= (c.ahead_xid, c.ahead_id) THEN
            c.ahead_xid := NULL;
            c.ahead_id := NULL;
            c.ahead_open := '{}';
        END IF;
    END IF;
    IF cardinality(taken) < k AND EXISTS (SELECT FROM pg_snapshot_xip(snap)) THEN
        ahead_xid := coalesce(c.ahead_xid, c.xid);
        ahead_id := coalesce(c.ahead_id, c.id);
        FOR r IN
            SELECT l.xid, l.id, l.occurred_at FROM outbox_proto.log l
            WHERE l.route = of_route AND l.xid >= horizon AND (l.xid, l.id) > (ahead_xid, ahead_id)
            ORDER BY l.xid, l.id LIMIT k - cardinality(taken)
        LOOP
            EXIT WHEN r.occurred_at >= now() - patience;  -- never step past a row left for later
            taken := taken || r.id;
            taken_xids := taken_xids || r.xid;
            taken_attempts := taken_attempts || 1;
            c.ahead_xid := r.xid;
            c.ahead_id := r.id;
        END LOOP;
        -- Rows of writers that were open below the ahead point and have committed since.
        FOR r IN
            SELECT l.xid, l.id FROM outbox_proto.log l
            WHERE l.route = of_route AND l.xid = ANY (c.ahead_open) AND l.id <> ALL (taken)
              AND NOT EXISTS (SELECT FROM outbox_proto.outcomes o WHERE o.webhook_id = of_webhook AND o.log_id = l.id)
            ORDER BY l.xid, l.id LIMIT greatest(k - cardinality(taken), 0)
        LOOP
            taken := taken || r.id;
            taken_xids := taken_xids || r.xid;
            taken_attempts := taken_attempts || 1;
        END LOOP;
        c.ahead_open := ARRAY(
            SELECT w FROM pg_snapshot_xip(snap) w WHERE c.ahead_xid IS NOT NULL AND w < c.ahead_xid);
    END IF;
    UPDATE outbox_proto.cursors
    SET xid = c.xid, id = c.id, ahead_xid = c.ahead_xid, ahead_id = c.ahead_id, ahead_open = c.ahead_open,
        in_flight = in_flight + cardinality(taken)
    WHERE webhook_id = of_webhook AND route = of_route;
    IF cardinality(taken) = 0 THEN
        RETURN;
    END IF;
    INSERT INTO outbox_proto.leases (webhook_id, route, deadline, open, log_ids, xids)
    VALUES (of_webhook, of_route, now() + lease, cardinality(taken), taken, taken_xids)
    RETURNING id INTO this_lease;
    RETURN QUERY
    WITH leased AS (
        INSERT INTO outbox_proto.outcomes (webhook_id, log_id, attempt, leased_until, lease_id)
        SELECT of_webhook, b.id, b.attempt, now() + lease, this_lease FROM unnest(taken, taken_attempts) b(id, attempt)
        RETURNING outcomes.log_id, outcomes.attempt
    ), keys AS (
        SELECT k.xid, k.id FROM unnest(taken_xids, taken) k(xid, id)
    )
    SELECT l.id, ls.attempt, p.body,
           jsonb_build_object('Content-Type', 'application/json', 'User-Agent', 'pgwebhooks/proto')
           || webhooks._sign_headers(p.uid::text, floor(extract(epoch FROM now()))::bigint, p.body, s.secrets)
    FROM leased ls
    JOIN keys ON keys.id = ls.log_id
    JOIN outbox_proto.log l ON l.route = of_route AND l.xid = keys.xid AND l.id = keys.id
    CROSS JOIN LATERAL (
        SELECT array_agg(x.secret ORDER BY x.id DESC) AS secrets FROM webhooks.secrets x
        WHERE x.webhook_id = of_webhook AND (x.expires_at IS NULL OR x.expires_at > now())
    ) s
    CROSS JOIN LATERAL (SELECT md5('salt/' || l.id || '/1')::uuid AS uid) u
    CROSS JOIN LATERAL (
        SELECT u.uid, (SELECT row_to_json(x)::text FROM (
            SELECT u.uid AS id, l.operation AS event, l.table_name AS "table", l.schema_name AS schema,
                   l.record, l.old_record,
                   to_char(l.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "timestamp",
                   of_webhook AS webhook_id) x) AS body
        OFFSET 0
    ) p;
END $$;

-- complete: each result settles its attempt row in place; a failure (not 2xx) with attempts left
-- becomes a retry, due after a backoff (2^attempt seconds); each settled attempt is taken off its
-- lease's open count, and a lease with none open is gone. Fencing: only an unsettled attempt of
-- that number is settled (a lease that expired first has settled it already).
-- Plans pinned as today's claim() and complete() pin theirs: statistics taken while the attempt
-- rows were few picked a bitmap scan of every attempt of the webhook, per call.
CREATE FUNCTION outbox_proto.complete(of_webhook uuid, results jsonb) RETURNS integer LANGUAGE sql
    SET enable_seqscan = off SET enable_bitmapscan = off AS $$
    WITH r AS (
        SELECT * FROM jsonb_to_recordset(results)
            AS x(log_id bigint, attempt integer, status_code integer, latency_ms integer, response_excerpt text)
    ), settled AS (
        -- The ids as an array: one probe each of (webhook_id, log_id), whatever the estimates.
        UPDATE outbox_proto.outcomes o
        SET status_code = r.status_code, latency_ms = r.latency_ms, response_excerpt = r.response_excerpt
        FROM r
        WHERE o.webhook_id = of_webhook AND o.log_id = ANY (ARRAY(SELECT r.log_id FROM r))
          AND o.log_id = r.log_id AND o.attempt = r.attempt AND o.status_code IS NULL AND o.error IS NULL
        RETURNING o.log_id, o.attempt, o.lease_id, o.status_code
    ), released AS (
        UPDATE outbox_proto.leases s SET open = s.open - n.settled
        FROM (SELECT x.lease_id, count(*) AS settled FROM settled x GROUP BY x.lease_id) n
        WHERE s.id = n.lease_id
        RETURNING s.id, s.open, s.log_ids, s.xids, s.route
    ), retried AS (
        INSERT INTO outbox_proto.retries (webhook_id, log_id, route, xid, attempt, due)
        SELECT of_webhook, x.log_id, l.route, l.xids[array_position(l.log_ids, x.log_id)], x.attempt + 1,
               now() + make_interval(secs => 2 ^ x.attempt)
        FROM settled x JOIN released l ON l.id = x.lease_id
        WHERE x.status_code NOT BETWEEN 200 AND 299 AND x.attempt < outbox_proto.max_attempts()
        RETURNING 1
    ), counted AS (
        UPDATE outbox_proto.cursors SET in_flight = in_flight - (SELECT count(*) FROM settled)
        WHERE webhook_id = of_webhook
        RETURNING 1
    )
    SELECT count(*)::integer FROM settled
    WHERE EXISTS (SELECT FROM counted) AND (SELECT count(*) FROM retried) >= 0
$$;

-- Leases with nothing open: gone (maintain() in the product; the prototype's drains call it).
CREATE FUNCTION outbox_proto.forget_leases() RETURNS void LANGUAGE sql AS $$
    DELETE FROM outbox_proto.leases WHERE open <= 0
$$;

-- publish: an application event is a log row like a captured change, on its event type's route.
CREATE TABLE outbox_proto.event_routes (
    event_type  text PRIMARY KEY,
    route       oid NOT NULL,
    webhook_ids uuid[] NOT NULL
);
-- No SET clause (a GUC saved and restored per call, ~1.4 us): every name is qualified instead,
-- operators too, as the capture trigger does.
CREATE FUNCTION outbox_proto.publish(event_type text, data jsonb) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    e outbox_proto.event_routes;
    id bigint;
BEGIN
    SELECT * INTO e FROM outbox_proto.event_routes r WHERE r.event_type OPERATOR(pg_catalog.=) publish.event_type;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown event type %', event_type;
    END IF;
    IF pg_catalog.pg_column_size(data) OPERATOR(pg_catalog.>) 262144 THEN
        RAISE EXCEPTION 'data larger than 256 KiB';
    END IF;
    INSERT INTO outbox_proto.log (route, operation, schema_name, table_name, webhook_ids, data)
    VALUES (e.route, 'EVENT', '', event_type, e.webhook_ids, publish.data)
    RETURNING log.id INTO id;
    RETURN pg_catalog.md5('salt/' OPERATOR(pg_catalog.||) id OPERATOR(pg_catalog.||) '/1')::pg_catalog.uuid;
END $$;
