-- A prototype of the outbox's next data path (docs/outbox-design.md, "Next"), for measuring only:
-- tests/bench/outbox_prototype.py installs it beside a real pgwebhooks install and runs both.
-- Not part of the product. One-row captures, one route per webhook, every delivery a 2xx.
--
--   log       insert-only, partitioned by id range; one index, (route, xid, id): what a cursor reads
--   cursors   per (webhook, route): the (xid, id) below which every row is handled
--   ahead     rows delivered before the cursor reached them (committed behind an older, open writer)
--   outcomes  the delivery log: one row per attempt, partitioned like the log; inserted by claim
--             (the lease) and updated once by complete, in place (HOT: no indexed column changes)
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
    PRIMARY KEY (route, xid, id)
) PARTITION BY RANGE (id);

CREATE TABLE outbox_proto.cursors (
    webhook_id uuid NOT NULL,
    route      oid NOT NULL,
    xid        xid8 NOT NULL DEFAULT '0',
    id         bigint NOT NULL DEFAULT 0,
    in_flight  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (webhook_id, route)
);

CREATE TABLE outbox_proto.ahead (
    webhook_id uuid NOT NULL,
    route      oid NOT NULL,
    xid        xid8 NOT NULL,
    id         bigint NOT NULL,
    PRIMARY KEY (webhook_id, route, xid, id)
);

CREATE TABLE outbox_proto.outcomes (
    log_id           bigint NOT NULL,
    webhook_id       uuid NOT NULL,
    attempt          integer NOT NULL,
    status_code      integer,
    error            text,
    response_excerpt text,
    latency_ms       integer,
    attempted_at     timestamptz NOT NULL DEFAULT now(),
    leased_until     timestamptz NOT NULL
) PARTITION BY RANGE (log_id);
CREATE INDEX ON outbox_proto.outcomes (webhook_id, log_id);

-- Partitions of `size` ids from `first`, for the log and the outcomes alike.
CREATE FUNCTION outbox_proto.add_partition(first bigint, size bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TABLE outbox_proto.log_%s PARTITION OF outbox_proto.log FOR VALUES FROM (%s) TO (%s)',
                   first, first, first + size);
    EXECUTE format('CREATE TABLE outbox_proto.outcomes_%s PARTITION OF outbox_proto.outcomes'
                   ' FOR VALUES FROM (%s) TO (%s)', first, first, first + size);
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
-- oldest running transaction's), then rows committed past an open writer once they are `patience`
-- old, remembered in `ahead`; leased, rendered in the standard shape and signed like 050_payloads.
CREATE FUNCTION outbox_proto.claim(of_webhook uuid, of_route oid, k integer, patience interval DEFAULT '1 s')
RETURNS TABLE (log_id bigint, attempt integer, body text, headers jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    c outbox_proto.cursors;
    horizon xid8 := pg_snapshot_xmin(pg_current_snapshot());
    xids xid8[];
    ids bigint[];
    early_xids xid8[] := '{}';
    early_ids bigint[] := '{}';
    n integer;
    skips boolean[];
    has_ahead boolean;
    taken_xids xid8[] := '{}';
    taken_ids bigint[] := '{}';
    last_xid xid8;
    last_id bigint;
BEGIN
    SELECT * INTO c FROM outbox_proto.cursors WHERE webhook_id = of_webhook AND route = of_route FOR UPDATE;
    -- Rows delivered ahead of the cursor (committed past an older, open writer) are skipped
    -- as the cursor passes them; the window is wider than k so that a run of them is crossed.
    has_ahead := EXISTS (SELECT FROM outbox_proto.ahead a WHERE a.webhook_id = of_webhook AND a.route = of_route);
    SELECT coalesce(array_agg(l.xid ORDER BY l.xid, l.id), '{}'), coalesce(array_agg(l.id ORDER BY l.xid, l.id), '{}'),
           coalesce(array_agg(l.skip ORDER BY l.xid, l.id), '{}')
    INTO xids, ids, skips
    FROM (SELECT l.xid, l.id, has_ahead AND EXISTS (
                     SELECT FROM outbox_proto.ahead a WHERE a.webhook_id = of_webhook AND a.route = of_route
                     AND a.xid = l.xid AND a.id = l.id) AS skip
          FROM outbox_proto.log l
          WHERE l.route = of_route AND (l.xid, l.id) > (c.xid, c.id) AND l.xid < horizon
          ORDER BY l.xid, l.id LIMIT CASE WHEN has_ahead THEN 10 * k ELSE k END) l;
    n := 0;
    FOR i IN 1 .. cardinality(ids) LOOP
        EXIT WHEN n = k;
        last_xid := xids[i];
        last_id := ids[i];
        IF NOT skips[i] THEN
            n := n + 1;
            taken_xids[n] := xids[i];
            taken_ids[n] := ids[i];
        END IF;
    END LOOP;
    xids := taken_xids;
    ids := taken_ids;
    IF last_id IS NOT NULL THEN
        UPDATE outbox_proto.cursors SET xid = last_xid, id = last_id, in_flight = in_flight + n
        WHERE webhook_id = of_webhook AND route = of_route;
        IF has_ahead THEN
            DELETE FROM outbox_proto.ahead a WHERE a.webhook_id = of_webhook AND a.route = of_route
               AND (a.xid, a.id) <= (last_xid, last_id);
        END IF;
    END IF;
    IF cardinality(ids) < k THEN
        SELECT coalesce(array_agg(l.xid), '{}'), coalesce(array_agg(l.id), '{}') INTO early_xids, early_ids
        FROM (SELECT l.xid, l.id FROM outbox_proto.log l
              WHERE l.route = of_route AND l.xid >= horizon AND l.occurred_at < now() - patience
                AND NOT EXISTS (SELECT FROM outbox_proto.ahead a WHERE a.webhook_id = of_webhook
                                AND a.route = of_route AND a.xid = l.xid AND a.id = l.id)
              ORDER BY l.xid, l.id LIMIT k - cardinality(ids)) l;
        INSERT INTO outbox_proto.ahead SELECT of_webhook, of_route, b.xid, b.id FROM unnest(early_xids, early_ids) b(xid, id);
    END IF;
    RETURN QUERY
    WITH batch AS (
        SELECT b.xid, b.id FROM unnest(xids || early_xids, ids || early_ids) b(xid, id)
    ), leased AS (
        INSERT INTO outbox_proto.outcomes (webhook_id, log_id, attempt, leased_until)
        SELECT of_webhook, b.id, 1, now() + interval '30 s' FROM batch b
        RETURNING outcomes.log_id, outcomes.attempt
    )
    SELECT l.id, ls.attempt, p.body,
           jsonb_build_object('Content-Type', 'application/json', 'User-Agent', 'pgwebhooks/proto')
           || webhooks._sign_headers(p.uid::text, floor(extract(epoch FROM now()))::bigint, p.body, s.secrets)
    FROM leased ls
    JOIN batch b ON b.id = ls.log_id
    JOIN outbox_proto.log l ON l.route = of_route AND l.xid = b.xid AND l.id = b.id
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

-- complete: each result settles its attempt row in place (no retries in the prototype).
CREATE FUNCTION outbox_proto.complete(of_webhook uuid, results jsonb) RETURNS integer LANGUAGE sql AS $$
    WITH r AS (
        SELECT (e->>'log_id')::bigint AS log_id, (e->>'attempt')::integer AS attempt,
               (e->>'status_code')::integer AS status_code, (e->>'latency_ms')::integer AS latency_ms,
               e->>'response_excerpt' AS response_excerpt
        FROM jsonb_array_elements(results) e
    ), settled AS (
        UPDATE outbox_proto.outcomes o
        SET status_code = r.status_code, latency_ms = r.latency_ms, response_excerpt = r.response_excerpt
        FROM r
        WHERE o.webhook_id = of_webhook AND o.log_id = r.log_id AND o.attempt = r.attempt
          AND o.status_code IS NULL AND o.error IS NULL
        RETURNING 1
    ), counted AS (
        UPDATE outbox_proto.cursors SET in_flight = in_flight - (SELECT count(*) FROM settled)
        WHERE webhook_id = of_webhook
        RETURNING 1
    )
    SELECT count(*)::integer FROM settled WHERE EXISTS (SELECT FROM counted)
$$;
