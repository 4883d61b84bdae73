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

CREATE OR REPLACE FUNCTION webhooks._capture_filtered()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    this_capture int8;
    query text := TG_ARGV[1];
    key text;
    from_clause text;
    found_rows json;
    base_rows json;
    flags json;
    all_flags jsonb := '{}';
    routed jsonb := '[]';
    held jsonb := '{}';
    c record;
    problem text;
    captured int4;
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
        EXECUTE 'SELECT pg_catalog.json_agg(pg_catalog.json_build_object(''r'', f.record, ''o'', f.old_record,'
                ' ''h'', f.hooks, ''oh'', f.ohooks)) FROM (' || query || ') f' INTO found_rows;
        taken := true;
        RAISE EXCEPTION USING ERRCODE = 'WHR00';
    EXCEPTION
        -- WHR00 raised by the table's own code, not by us, is an error like any other.
        WHEN SQLSTATE 'WHR00' THEN failed := NOT taken;
        WHEN OTHERS THEN failed := true;
    END;
    IF failed THEN
        -- Fail closed, webhook by webhook (see the top of this file).
        from_clause := replace(webhooks._filter_from(TG_RELID, TG_OP), '/*key*/', coalesce(key, 'false'));
        taken := false;
        BEGIN
            PERFORM set_config('transaction_read_only', 'on', true);
            PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
            EXECUTE 'SELECT pg_catalog.json_agg(pg_catalog.json_build_object(''r'', pg_catalog.row_to_json(r),'
                    ' ''o'', pg_catalog.row_to_json(x.old)))' || from_clause INTO base_rows;
            taken := true;
            RAISE EXCEPTION USING ERRCODE = 'WHR00';
        EXCEPTION WHEN SQLSTATE 'WHR00' THEN
            IF NOT taken THEN
                RAISE;  -- the owner's code, not us: fail the write rather than capture nothing
            END IF;
        END;
        -- Webhooks routed by value: one query per routing column, however many tenants.
        FOR c IN SELECT DISTINCT f.route_column FROM webhooks._filter_conds(TG_RELID, TG_OP) f WHERE f.kind = 'route' LOOP
            taken := false;
            problem := NULL;
            BEGIN
                PERFORM set_config('transaction_read_only', 'on', true);
                PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
                EXECUTE format('SELECT pg_catalog.json_agg(pg_catalog.json_build_array('
                               'ARRAY(SELECT rt.webhook_id FROM webhooks.capture_routes rt WHERE rt.relid OPERATOR(pg_catalog.=) %1$s::pg_catalog.oid'
                               ' AND rt.operation OPERATOR(pg_catalog.=) %2$L AND rt.column_name OPERATOR(pg_catalog.=) %3$L'
                               ' AND rt.value OPERATOR(pg_catalog.=) (r.%3$I)::pg_catalog.text),'
                               'ARRAY(SELECT rt.webhook_id FROM webhooks.capture_routes rt WHERE x.paired AND rt.relid OPERATOR(pg_catalog.=) %1$s::pg_catalog.oid'
                               ' AND rt.operation OPERATOR(pg_catalog.=) %2$L AND rt.column_name OPERATOR(pg_catalog.=) %3$L'
                               ' AND rt.value OPERATOR(pg_catalog.=) ((x.old).%3$I)::pg_catalog.text)))',
                               TG_RELID, TG_OP, c.route_column) || from_clause INTO flags;
                taken := true;
                RAISE EXCEPTION USING ERRCODE = 'WHR00';
            EXCEPTION
                WHEN SQLSTATE 'WHR00' THEN
                    IF NOT taken THEN problem := SQLERRM; END IF;
                WHEN OTHERS THEN problem := SQLERRM;
            END;
            IF problem IS NULL THEN
                routed := routed || jsonb_build_array(coalesce(flags::jsonb, '[]'));
            ELSE
                held := held || (SELECT jsonb_object_agg(f.webhook_id::text, problem)
                                 FROM webhooks._filter_conds(TG_RELID, TG_OP) f WHERE f.route_column = c.route_column);
            END IF;
        END LOOP;
        FOR c IN SELECT * FROM webhooks._filter_conds(TG_RELID, TG_OP) f WHERE f.kind <> 'route' LOOP
            taken := false;
            problem := NULL;
            BEGIN
                PERFORM set_config('transaction_read_only', 'on', true);
                PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
                EXECUTE format('SELECT pg_catalog.json_agg(pg_catalog.json_build_array('
                               'CASE WHEN %s THEN 1 ELSE 0 END, CASE WHEN x.paired AND %s THEN 1 ELSE 0 END))',
                               c.cond, c.ocond) || from_clause INTO flags;
                taken := true;
                RAISE EXCEPTION USING ERRCODE = 'WHR00';
            EXCEPTION
                WHEN SQLSTATE 'WHR00' THEN
                    IF NOT taken THEN problem := SQLERRM; END IF;
                WHEN OTHERS THEN problem := SQLERRM;
            END;
            IF problem IS NULL THEN
                all_flags := all_flags || jsonb_build_object(c.webhook_id::text, flags);
            ELSE
                held := held || jsonb_build_object(c.webhook_id::text, problem);
            END IF;
        END LOOP;
        SELECT json_agg(json_build_object('r', b.v -> 'r', 'o', b.v -> 'o',
                   'h', coalesce((SELECT json_agg(u.k) FROM (
                                      SELECT f.key AS k FROM jsonb_each(all_flags) f
                                      WHERE f.value -> (b.i::int - 1) ->> 0 = '1'
                                      UNION ALL
                                      SELECT jsonb_array_elements_text(rs -> (b.i::int - 1) -> 0)
                                      FROM jsonb_array_elements(routed) rs) u), '[]'),
                   'oh', coalesce((SELECT json_agg(u.k) FROM (
                                      SELECT f.key AS k FROM jsonb_each(all_flags) f
                                      WHERE TG_OP = 'UPDATE' AND f.value -> (b.i::int - 1) ->> 1 = '1'
                                      UNION ALL
                                      SELECT jsonb_array_elements_text(rs -> (b.i::int - 1) -> 1)
                                      FROM jsonb_array_elements(routed) rs WHERE TG_OP = 'UPDATE') u), '[]')))
        INTO found_rows
        FROM json_array_elements(base_rows) WITH ORDINALITY AS b(v, i);
        IF held <> '{}' THEN
            INSERT INTO webhooks.held_rows (webhook_id, operation, relid, schema_name, table_name, record,
                                            old_record, held_error)
            SELECT hk.key::uuid, TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, b.v -> 'r',
                   CASE WHEN TG_OP = 'UPDATE' AND json_typeof(b.v -> 'o') = 'object' THEN b.v -> 'o' END,
                   hk.value #>> '{}'
            FROM jsonb_each(held) hk CROSS JOIN json_array_elements(base_rows) b(v);
            PERFORM pg_notify('webhooks_alerts', left(jsonb_build_object(
                        'kind', 'filter_failed', 'at', now(), 'webhook_id', hk.key,
                        'table', format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'operation', TG_OP,
                        'rows', json_array_length(base_rows), 'error', left(hk.value #>> '{}', 1000))::text, 7900))
            FROM jsonb_each(held) hk;
        END IF;
    END IF;
    -- One entry per row and set of webhooks: those whose filter the old row passes too get the
    -- old image, the others the row without it. (An INSERT's or DELETE's set-based result is
    -- already that.)
    IF TG_OP = 'UPDATE' OR failed THEN
        SELECT json_agg(json_build_object('r', p.r, 'o', p.o, 'h', p.hooks) ORDER BY p.i, p.part) INTO found_rows
        FROM (
            SELECT e.i, 0 AS part, e.r, e.o, ARRAY(SELECT unnest(e.h) INTERSECT SELECT unnest(e.oh)) AS hooks
            FROM (SELECT v -> 'r' AS r, v -> 'o' AS o, i,
                         ARRAY(SELECT json_array_elements_text(v -> 'h'))::uuid[] AS h,
                         ARRAY(SELECT json_array_elements_text(CASE WHEN json_typeof(v -> 'oh') = 'array'
                                                                     THEN v -> 'oh' ELSE '[]' END))::uuid[] AS oh
                  FROM json_array_elements(found_rows) WITH ORDINALITY AS a(v, i)) e
            WHERE TG_OP = 'UPDATE' AND json_typeof(e.o) = 'object'
            UNION ALL
            SELECT e.i, 1, e.r, NULL, CASE WHEN TG_OP = 'UPDATE' AND json_typeof(e.o) = 'object'
                                           THEN ARRAY(SELECT unnest(e.h) EXCEPT SELECT unnest(e.oh)) ELSE e.h END
            FROM (SELECT v -> 'r' AS r, v -> 'o' AS o, i,
                         ARRAY(SELECT json_array_elements_text(v -> 'h'))::uuid[] AS h,
                         ARRAY(SELECT json_array_elements_text(CASE WHEN json_typeof(v -> 'oh') = 'array'
                                                                     THEN v -> 'oh' ELSE '[]' END))::uuid[] AS oh
                  FROM json_array_elements(found_rows) WITH ORDINALITY AS a(v, i)) e
        ) p
        WHERE cardinality(p.hooks) > 0;
    END IF;
    captured := coalesce(json_array_length(found_rows), 0);
    IF captured = 0 THEN
        RETURN NULL;  -- no webhook wants any of these rows: nothing stored
    END IF;
    this_capture := nextval('webhooks.captures_id_seq'::regclass);
    IF captured = 1 THEN
        INSERT INTO webhooks.captures (id, operation, relid, schema_name, table_name, webhook_ids, row_count,
                                       record, old_record)
        SELECT this_capture, TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME,
               ARRAY(SELECT json_array_elements_text(v -> 'h'))::uuid[], 1, v -> 'r',
               CASE WHEN TG_OP = 'UPDATE' AND json_typeof(v -> 'o') <> 'null' THEN v -> 'o' END
        FROM (SELECT found_rows -> 0 AS v) one;
    ELSE
        INSERT INTO webhooks.events (capture_id, n, record, old_record, webhook_ids)
        SELECT this_capture, i.n, i.v -> 'r',
               CASE WHEN TG_OP = 'UPDATE' AND json_typeof(i.v -> 'o') <> 'null' THEN i.v -> 'o' END,
               ARRAY(SELECT json_array_elements_text(i.v -> 'h'))::uuid[]
        FROM json_array_elements(found_rows) WITH ORDINALITY AS i(v, n);
        INSERT INTO webhooks.captures (id, operation, relid, schema_name, table_name, webhook_ids, row_count, routed)
        SELECT this_capture, TG_OP, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME,
               ARRAY(SELECT DISTINCT h::uuid FROM json_array_elements(found_rows) e,
                                            json_array_elements_text(e -> 'h') h), captured, true;
    END IF;
    PERFORM pg_notify('webhooks', '');
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

GRANT EXECUTE ON FUNCTION webhooks._filter_conds, webhooks._filter_from, webhooks._no_old_row TO webhooks_capture;
