-- pgwebhooks: capture filters. A table whose subscriptions for an operation include a
-- `where` or (for UPDATE) a `columns` filter gets _capture_filtered() for that operation instead
-- of _capture_statement(). It evaluates, set-based in one query per statement, which webhooks
-- each changed row goes to, and stores a row only if some webhook wants it:
--   * webhooks without such filters get every row;
--   * `where` filters that are an equality on one column (`tenant_id = 42`) are looked up in
--     capture_routes by the row's value, one index probe per row however many webhooks there are;
--   * other `where` filters (and `columns`) are evaluated, each a CASE in the query.
-- The query runs read-only, in a subtransaction rolled back on purpose (as the guarded images of
-- 030_capture.sql), with search_path pg_catalog, pg_temp; filters hold only built-in immutable
-- functions (_check_where), so evaluating one can neither sleep, lock nor read the session.
-- Fail closed: if the query fails (a column a filter names was dropped, a division by zero in
-- the row's data), each webhook's filter is evaluated on its own; the webhooks whose filter works
-- get exactly their rows, and a webhook whose filter fails gets none: the statement's rows are
-- kept for it alone in held_rows with the error (get_deliveries shows them as `held`, a NOTIFY on
-- webhooks_alerts says so) until release_held(). The application's write never fails.
-- Old images: an UPDATE's old_record goes to a webhook only when the old row passes that
-- webhook's filter as well (judged alone, with (old) NULL); otherwise that webhook's payload
-- has no old_record, so an UPDATE moving a row into a tenant's filter shows nothing from outside it.

-- Per subscription of `relid` and `op`: its kind ('plain', 'route', 'predicate'), the condition
-- on the row (r, with x.old and x.paired) and the condition on the old row alone.
CREATE OR REPLACE FUNCTION webhooks._filter_conds(relid oid, op text, in_trigger boolean DEFAULT true)
RETURNS TABLE (webhook_id uuid, kind text, cond text, ocond text, route_column name, route_value text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s record;
    live_columns text[];
BEGIN
    FOR s IN SELECT x.webhook_id, x.columns, x.where_clause, x.route_column, x.route_value
             FROM webhooks.subscriptions x
             WHERE x.relid = _filter_conds.relid AND op = ANY (x.operations) ORDER BY x.webhook_id LOOP
        webhook_id := s.webhook_id;
        route_column := NULL;
        route_value := NULL;
        live_columns := CASE WHEN op = 'UPDATE' THEN ARRAY(
            SELECT c FROM unnest(s.columns) c
            WHERE EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = relid AND a.attname = c
                                                        AND a.attnum > 0 AND NOT a.attisdropped)) END;
        IF s.where_clause IS NULL AND coalesce(cardinality(live_columns), 0) = 0 THEN
            kind := 'plain';
            cond := 'true';
            ocond := 'true';
        ELSIF s.route_column IS NOT NULL AND coalesce(cardinality(live_columns), 0) = 0 THEN
            kind := 'route';
            route_column := s.route_column;
            route_value := s.route_value;
            cond := format('(r.%I)::pg_catalog.text OPERATOR(pg_catalog.=) %L', s.route_column, s.route_value);
            ocond := format('((x.old).%I)::pg_catalog.text OPERATOR(pg_catalog.=) %L', s.route_column, s.route_value);
        ELSE
            kind := 'predicate';
            cond := concat_ws(' AND ',
                '(' || s.where_clause || ')',
                CASE WHEN cardinality(live_columns) > 0 THEN format(
                    '(x.paired IS NULL OR ROW(%s) IS DISTINCT FROM ROW(%s))',
                    (SELECT string_agg(format('r.%I', c), ', ') FROM unnest(live_columns) c),
                    (SELECT string_agg(format('(x.old).%I', c), ', ') FROM unnest(live_columns) c)) END);
            -- The old row judged alone: in the subquery, r is the old row and (old) is NULL.
            ocond := CASE WHEN s.where_clause IS NULL THEN 'true' ELSE format(
                '(SELECT (%s) FROM (SELECT (x.old).*) r LEFT JOIN %s x ON true)',
                s.where_clause, webhooks._no_old_row(relid, CASE WHEN in_trigger THEN op END)) END;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- A one-row-at-most source of x(old, paired) with old NULL and of the table's row type. In a
-- trigger it is taken from a transition table: the capture's owner may not be allowed to name
-- the table's schema (the type's name), and needs not.
CREATE OR REPLACE FUNCTION webhooks._no_old_row(relid oid, op text)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN op IS NULL THEN format('(SELECT NULL::%s AS old, NULL::pg_catalog.bool AS paired)', relid::regclass)
                ELSE format('(SELECT o AS old, NULL::pg_catalog.bool AS paired FROM %s o WHERE false)',
                            CASE WHEN op = 'DELETE' THEN 'old_rows' ELSE 'new_rows' END) END
$$;

-- The FROM clause over the transition tables: r the row, x.old its old row (UPDATE, paired by
-- '/*key*/', replaced at fire time) and x.paired.
CREATE OR REPLACE FUNCTION webhooks._filter_from(relid oid, op text)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format(' FROM %s r %s', CASE WHEN op = 'DELETE' THEN 'old_rows' ELSE 'new_rows' END,
        CASE WHEN op = 'UPDATE' THEN
            ' CROSS JOIN LATERAL (SELECT r AS new_row) n'
            ' LEFT JOIN LATERAL (SELECT o.old_row AS old, true AS paired'
            ' FROM (SELECT old_row FROM old_rows old_row) o WHERE /*key*/ LIMIT 1) x ON true'
        ELSE format(' LEFT JOIN %s x ON true', webhooks._no_old_row(relid, op)) END)
$$;

-- The query giving (record, old_record, hooks, ohooks) for each changed row of `op` on `relid`,
-- over the transition tables; ohooks are the webhooks whose filter the old row passes too.
-- NULL when no subscription of that operation has a filter that applies at capture.
CREATE OR REPLACE FUNCTION webhooks._filter_query(relid oid, op text)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s record;
    plain uuid[] := '{}';
    predicates text[] := '{}';
    opredicates text[] := '{}';
    routes text[] := '{}';
BEGIN
    FOR s IN SELECT * FROM webhooks._filter_conds(relid, op) LOOP
        IF s.kind = 'plain' THEN
            plain := plain || s.webhook_id;
        ELSIF s.kind = 'route' THEN
            IF NOT format('%I', s.route_column) = ANY (routes) THEN
                routes := routes || format('%I', s.route_column);
            END IF;
        ELSE
            predicates := predicates || format('CASE WHEN %s THEN %L::pg_catalog.uuid END', s.cond, s.webhook_id);
            opredicates := opredicates || format('CASE WHEN x.paired AND %s THEN %L::pg_catalog.uuid END', s.ocond, s.webhook_id);
        END IF;
    END LOOP;
    IF cardinality(predicates) = 0 AND cardinality(routes) = 0 THEN
        RETURN NULL;
    END IF;
    RETURN format(
        'SELECT pg_catalog.row_to_json(r) AS record, pg_catalog.row_to_json(x.old) AS old_record, h.hooks, h.ohooks'
        ' %s'
        ' CROSS JOIN LATERAL (SELECT pg_catalog.array_remove(%L::pg_catalog.uuid[]%s%s, NULL) AS hooks,'
        ' %s AS ohooks) h'
        ' WHERE pg_catalog.cardinality(h.hooks) OPERATOR(pg_catalog.>) 0',
        webhooks._filter_from(relid, op),
        plain,
        (SELECT string_agg(format(
            ' OPERATOR(pg_catalog.||) ARRAY(SELECT rt.webhook_id FROM webhooks.capture_routes rt'
            ' WHERE rt.relid OPERATOR(pg_catalog.=) %s::pg_catalog.oid AND rt.operation OPERATOR(pg_catalog.=) %L'
            ' AND rt.column_name OPERATOR(pg_catalog.=) %L AND rt.value OPERATOR(pg_catalog.=) (r.%s)::pg_catalog.text)',
            relid, op, btrim(c, '"'), c), '') FROM unnest(routes) c),
        CASE WHEN cardinality(predicates) > 0
             THEN format(' OPERATOR(pg_catalog.||) ARRAY[%s]::pg_catalog.uuid[]', array_to_string(predicates, ', ')) ELSE '' END,
        CASE WHEN op <> 'UPDATE' THEN 'NULL::pg_catalog.uuid[]' ELSE format(
            'pg_catalog.array_remove(%L::pg_catalog.uuid[]%s%s, NULL)',
            plain,
            (SELECT string_agg(format(
                ' OPERATOR(pg_catalog.||) ARRAY(SELECT rt.webhook_id FROM webhooks.capture_routes rt'
                ' WHERE x.paired AND rt.relid OPERATOR(pg_catalog.=) %s::pg_catalog.oid AND rt.operation OPERATOR(pg_catalog.=) %L'
                ' AND rt.column_name OPERATOR(pg_catalog.=) %L AND rt.value OPERATOR(pg_catalog.=) ((x.old).%s)::pg_catalog.text)',
                relid, op, btrim(c, '"'), c), '') FROM unnest(routes) c),
            CASE WHEN cardinality(opredicates) > 0
                 THEN format(' OPERATOR(pg_catalog.||) ARRAY[%s]::pg_catalog.uuid[]', array_to_string(opredicates, ', ')) ELSE '' END) END);
END
$$;

-- Make capture_routes match the subscriptions of `relid`, touching only what differs (a table
-- with a thousand tenant webhooks re-syncs on every one of their changes).
CREATE OR REPLACE FUNCTION webhooks._sync_routes(relid oid)
RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    WITH wanted AS (
        SELECT s.relid, op AS operation, s.route_column AS column_name, s.route_value AS value, s.webhook_id
        FROM webhooks.subscriptions s CROSS JOIN LATERAL unnest(s.operations) op
        WHERE s.relid = _sync_routes.relid AND s.route_column IS NOT NULL
    ), dropped AS (
        DELETE FROM webhooks.capture_routes r
        WHERE r.relid = _sync_routes.relid
          AND (r.relid, r.operation, r.column_name, r.value, r.webhook_id) NOT IN (SELECT * FROM wanted)
    )
    INSERT INTO webhooks.capture_routes (relid, operation, column_name, value, webhook_id)
    SELECT * FROM wanted w
    WHERE NOT EXISTS (SELECT 1 FROM webhooks.capture_routes r
                      WHERE (r.relid, r.operation, r.column_name, r.value, r.webhook_id)
                          = (w.relid, w.operation, w.column_name, w.value, w.webhook_id))
    ON CONFLICT DO NOTHING;
$$;

-- One entry per row and set of webhooks: those whose filter the old row passes too get the old
-- image, the others the row without it (an INSERT's or DELETE's result is already that).
-- PL/pgSQL for its kept plan: as a SQL function it was planned at every filtered UPDATE.
CREATE OR REPLACE FUNCTION webhooks._split_old_images(found_rows json, op text)
RETURNS json
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN (WITH e AS (
        SELECT v -> 'r' AS r, v -> 'o' AS o, i,
               ARRAY(SELECT json_array_elements_text(v -> 'h'))::uuid[] AS h,
               ARRAY(SELECT json_array_elements_text(CASE WHEN json_typeof(v -> 'oh') = 'array'
                                                           THEN v -> 'oh' ELSE '[]' END))::uuid[] AS oh
        FROM json_array_elements(found_rows) WITH ORDINALITY AS a(v, i)
    )
    SELECT json_agg(json_build_object('r', p.r, 'o', p.o, 'h', p.hooks) ORDER BY p.i, p.part)
    FROM (
        SELECT e.i, 0 AS part, e.r, e.o, ARRAY(SELECT unnest(e.h) INTERSECT SELECT unnest(e.oh)) AS hooks
        FROM e
        WHERE op = 'UPDATE' AND json_typeof(e.o) = 'object'
        UNION ALL
        SELECT e.i, 1, e.r, NULL, CASE WHEN op = 'UPDATE' AND json_typeof(e.o) = 'object'
                                       THEN ARRAY(SELECT unnest(e.h) EXCEPT SELECT unnest(e.oh)) ELSE e.h END
        FROM e
    ) p
    WHERE cardinality(p.hooks) > 0);
END
$$;

-- Store a statement's filtered rows ([{r, o, h}], more than one) as a routed capture, the rows
-- in events. (One row goes inline into its capture, in _capture_filtered itself.)
CREATE OR REPLACE FUNCTION webhooks._store_filtered(found_rows json, op text, relid oid,
                                                    schema_name name, table_name name)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    this_capture int8 := nextval('webhooks.captures_id_seq'::regclass);
BEGIN
    INSERT INTO webhooks.events (capture_id, n, record, old_record, webhook_ids)
    SELECT this_capture, i.n, i.v -> 'r',
           CASE WHEN op = 'UPDATE' AND json_typeof(i.v -> 'o') <> 'null' THEN i.v -> 'o' END,
           ARRAY(SELECT json_array_elements_text(i.v -> 'h'))::uuid[]
    FROM json_array_elements(found_rows) WITH ORDINALITY AS i(v, n);
    INSERT INTO webhooks.captures (id, operation, relid, schema_name, table_name, webhook_ids, row_count, routed)
    SELECT this_capture, op, _store_filtered.relid, _store_filtered.schema_name, _store_filtered.table_name,
           ARRAY(SELECT DISTINCT h::uuid FROM json_array_elements(found_rows) e,
                                        json_array_elements_text(e -> 'h') h), json_array_length(found_rows), true;
END
$$;

-- The trigger. The set-based query is its happy path; when it fails, the queries of
-- _filter_units are evaluated alone over the same transition tables (which only this function
-- can read), and the rows are held for the webhooks whose query failed.
CREATE OR REPLACE FUNCTION webhooks._capture_filtered()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    query text := TG_ARGV[1];
    key text;
    from_clause text;
    images json[];
    old_images json[];
    found_rows json;
    base_rows json;
    flags json;
    results jsonb := '[]';
    u record;
    problem text;
    taken bool := false;
    failed bool := false;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        key := CASE WHEN (SELECT count(*) FROM new_rows) = 1 THEN 'true'
                    ELSE coalesce(webhooks._primary_key_join(TG_RELID), 'false') END;
        query := replace(query, '/*key*/', key);
    END IF;
    BEGIN
        PERFORM set_config('transaction_read_only', 'on', true);
        PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
        -- Routed by one column: one row goes to _routed_row (its plan kept; the query is planned at
        -- every write), more keep the query (one plan for all rows: cheaper than handing over images).
        IF TG_ARGV[2] IS NOT NULL AND TG_OP = 'DELETE' THEN
            images := ARRAY(SELECT row_to_json(r) FROM old_rows r LIMIT 2);
        ELSIF TG_ARGV[2] IS NOT NULL THEN
            images := ARRAY(SELECT row_to_json(r) FROM new_rows r LIMIT 2);
            IF TG_OP = 'UPDATE' THEN old_images := ARRAY(SELECT row_to_json(r) FROM old_rows r LIMIT 1); END IF;
        END IF;
        IF cardinality(images) = 1 THEN
            found_rows := webhooks._routed_row(images[1], old_images[1], TG_ARGV[0], TG_ARGV[2], TG_RELID, TG_OP);
        ELSIF images IS NULL OR cardinality(images) > 1 THEN
            EXECUTE 'SELECT pg_catalog.json_agg(pg_catalog.json_build_object(''r'', f.record, ''o'', f.old_record,'
                    ' ''h'', f.hooks, ''oh'', f.ohooks)) FROM (' || query || ') f' INTO found_rows;
        END IF;  -- (no row changed: nothing found)
        taken := true;
        RAISE EXCEPTION USING ERRCODE = 'WHR00';
    EXCEPTION
        -- WHR00 raised by the table's own code, not by us, is an error like any other.
        WHEN SQLSTATE 'WHR00' THEN failed := NOT taken;
        WHEN OTHERS THEN failed := true;
    END;
    IF failed THEN
        -- Fail closed, webhook by webhook (see _filter_units); only here are the transition tables readable.
        from_clause := replace(webhooks._filter_from(TG_RELID, TG_OP), '/*key*/', coalesce(key, 'false'));
        FOR u IN SELECT * FROM webhooks._filter_units(TG_RELID, TG_OP) LOOP
            taken := false;
            BEGIN
                PERFORM set_config('transaction_read_only', 'on', true);
                PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
                EXECUTE u.probe || from_clause INTO flags;
                taken := true;
                RAISE EXCEPTION USING ERRCODE = 'WHR00';
            EXCEPTION WHEN OTHERS THEN
                -- Not taken: an error, or a WHR00 of the table's own code. The rows themselves
                -- unreadable is the owner's code, not a filter: fail the write rather than
                -- capture nothing.
                IF NOT taken AND u.kind = 'base' THEN RAISE; END IF;
                problem := CASE WHEN NOT taken THEN SQLERRM END;
            END;
            IF u.kind = 'base' THEN
                base_rows := flags;
            ELSE
                results := results || jsonb_build_array(jsonb_build_object(
                    'kind', u.kind, 'ids', u.webhook_ids, 'flags', flags, 'problem', problem));
            END IF;
        END LOOP;
        found_rows := webhooks._filter_merge(base_rows, results, TG_OP);
        PERFORM webhooks._hold_rows(results, base_rows, TG_RELID, TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME);
    END IF;
    IF TG_OP = 'UPDATE' OR failed THEN
        found_rows := webhooks._split_old_images(found_rows, TG_OP);
    END IF;
    IF coalesce(json_array_length(found_rows), 0) = 0 THEN
        RETURN NULL;  -- no webhook wants any of these rows: nothing stored
    ELSIF json_array_length(found_rows) = 1 THEN
        -- The one-row write, stored here: a call per statement would cost it about 5%.
        INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count,
                                       record, old_record)
        SELECT TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, ARRAY(SELECT json_array_elements_text(v -> 'h'))::uuid[],
               1, v -> 'r', CASE WHEN TG_OP = 'UPDATE' AND json_typeof(v -> 'o') <> 'null' THEN v -> 'o' END
        FROM (SELECT found_rows -> 0 AS v) one;
    ELSE
        PERFORM webhooks._store_filtered(found_rows, TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME);
    END IF;
    PERFORM webhooks._wake_runners();
    RETURN NULL;
END
$$;

DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'webhooks_capture', 'USAGE') THEN
        EXECUTE format('GRANT webhooks_capture TO %I', current_user);
    END IF;
END
$$;

GRANT CREATE ON SCHEMA webhooks TO webhooks_capture;

ALTER FUNCTION webhooks._capture_filtered() OWNER TO webhooks_capture;

REVOKE CREATE ON SCHEMA webhooks FROM webhooks_capture;

-- The trigger runs as webhooks_capture: its helpers are that role's to execute, nobody else's.
GRANT EXECUTE ON FUNCTION webhooks._filter_conds, webhooks._filter_from, webhooks._no_old_row,
    webhooks._split_old_images, webhooks._store_filtered TO webhooks_capture;

COMMENT ON FUNCTION webhooks._split_old_images IS
    'Capture filters: one entry per row and set of webhooks; the old image only for webhooks whose filter the old row passes too.';

COMMENT ON FUNCTION webhooks._store_filtered IS
    'Capture filters: store a statement''s filtered rows (more than one) as a routed capture with its events.';
