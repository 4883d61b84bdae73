-- pgwebhooks: capture filters (issue 11). A table whose subscriptions for an operation include a
-- `where` or (for UPDATE) a `columns` filter gets _capture_filtered() for that operation instead
-- of _capture_statement(). It evaluates, set-based in one query per statement, which webhooks
-- each changed row goes to, and stores a row only if some webhook wants it:
--   * webhooks without such filters get every row;
--   * `where` filters that are an equality on one column (`tenant_id = 42`) are looked up in
--     capture_routes by the row's value, one index probe per row however many webhooks there are;
--   * other `where` filters (and `columns`) are evaluated, each a CASE in the query.
-- The query runs read-only, in a subtransaction rolled back on purpose (as the guarded images of
-- 030_capture.sql), with search_path pg_catalog, public: a predicate may call user functions,
-- and they can write nothing and have no more rights than webhooks_capture.
-- A filter that cannot be evaluated any more (a column it names was dropped or renamed, or it
-- raises an error) never fails the application's write: the statement's rows are then captured
-- for every subscribed webhook, unfiltered (refresh_triggers() rebuilds the filters).

-- The query giving (record, old_record, hooks) for each changed row of `op` on `relid`, over the
-- transition tables; for UPDATE, '/*key*/' stands for the old/new pairing chosen at fire time.
-- NULL when no subscription of that operation has a filter that applies at capture.
CREATE OR REPLACE FUNCTION webhooks._filter_query(relid oid, op text)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s record;
    plain uuid[] := '{}';
    predicates text[] := '{}';
    routes text[] := '{}';
    cond text;
    live_columns text[];
BEGIN
    FOR s IN SELECT * FROM webhooks.subscriptions x
             WHERE x.relid = _filter_query.relid AND op = ANY (x.operations) ORDER BY x.webhook_id LOOP
        live_columns := CASE WHEN op = 'UPDATE' THEN ARRAY(
            SELECT c FROM unnest(s.columns) c
            WHERE EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = relid AND a.attname = c
                                                        AND a.attnum > 0 AND NOT a.attisdropped)) END;
        IF s.where_clause IS NULL AND coalesce(cardinality(live_columns), 0) = 0 THEN
            plain := plain || s.webhook_id;
        ELSIF s.route_column IS NOT NULL AND coalesce(cardinality(live_columns), 0) = 0 THEN
            IF NOT format('%I', s.route_column) = ANY (routes) THEN
                routes := routes || format('%I', s.route_column);
            END IF;
        ELSE
            cond := concat_ws(' AND ',
                '(' || s.where_clause || ')',
                CASE WHEN cardinality(live_columns) > 0 THEN format(
                    '(x.paired IS NULL OR ROW(%s) IS DISTINCT FROM ROW(%s))',
                    (SELECT string_agg(format('r.%I', c), ', ') FROM unnest(live_columns) c),
                    (SELECT string_agg(format('(x.old).%I', c), ', ') FROM unnest(live_columns) c)) END);
            predicates := predicates || format('CASE WHEN %s THEN %L::pg_catalog.uuid END', cond, s.webhook_id);
        END IF;
    END LOOP;
    IF cardinality(predicates) = 0 AND cardinality(routes) = 0 THEN
        RETURN NULL;
    END IF;
    RETURN format(
        'SELECT pg_catalog.row_to_json(r) AS record, pg_catalog.row_to_json(x.old) AS old_record, h.hooks'
        ' FROM %s r %s'
        ' CROSS JOIN LATERAL (SELECT pg_catalog.array_remove(%L::pg_catalog.uuid[]%s%s, NULL) AS hooks) h'
        ' WHERE pg_catalog.cardinality(h.hooks) OPERATOR(pg_catalog.>) 0',
        CASE WHEN op = 'DELETE' THEN 'old_rows' ELSE 'new_rows' END,
        CASE WHEN op = 'UPDATE' THEN
            ' CROSS JOIN LATERAL (SELECT r AS new_row) n'
            ' LEFT JOIN LATERAL (SELECT o.old_row AS old, true AS paired'
            ' FROM (SELECT old_row FROM old_rows old_row) o WHERE /*key*/ LIMIT 1) x ON true'
        ELSE format(' CROSS JOIN (SELECT NULL::%s AS old, NULL::boolean AS paired) x', relid::regclass) END,
        plain,
        (SELECT string_agg(format(
            ' OPERATOR(pg_catalog.||) ARRAY(SELECT rt.webhook_id FROM webhooks.capture_routes rt'
            ' WHERE rt.relid OPERATOR(pg_catalog.=) %s::pg_catalog.oid AND rt.operation OPERATOR(pg_catalog.=) %L'
            ' AND rt.column_name OPERATOR(pg_catalog.=) %L AND rt.value OPERATOR(pg_catalog.=) (r.%s)::pg_catalog.text)',
            relid, op, btrim(c, '"'), c), '') FROM unnest(routes) c),
        CASE WHEN cardinality(predicates) > 0
             THEN format(' OPERATOR(pg_catalog.||) ARRAY[%s]::pg_catalog.uuid[]', array_to_string(predicates, ', ')) ELSE '' END);
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
    found_rows json;
    captured int4;
    taken bool := false;
    unfiltered bool := false;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        query := replace(query, '/*key*/',
            CASE WHEN (SELECT count(*) FROM new_rows) = 1 THEN 'true'
                 ELSE coalesce(webhooks._primary_key_join(TG_RELID), 'false') END);
    END IF;
    BEGIN
        PERFORM set_config('transaction_read_only', 'on', true);
        PERFORM set_config('search_path', 'pg_catalog, public', true);
        EXECUTE 'SELECT pg_catalog.json_agg(pg_catalog.json_build_object(''r'', f.record, ''o'', f.old_record,'
                ' ''h'', f.hooks)) FROM (' || query || ') f' INTO found_rows;
        taken := true;
        RAISE EXCEPTION USING ERRCODE = 'WHR00';
    EXCEPTION
        -- WHR00 raised by a predicate's own code, not by us, is an error like any other.
        WHEN SQLSTATE 'WHR00' THEN unfiltered := NOT taken;
        WHEN OTHERS THEN unfiltered := true;
    END;
    IF unfiltered THEN
        -- Fail open: every subscribed webhook gets every row (see the top of this file).
        taken := false;
        BEGIN
            PERFORM set_config('transaction_read_only', 'on', true);
            EXECUTE format('SELECT pg_catalog.json_agg(pg_catalog.json_build_object(''r'', pg_catalog.row_to_json(r),'
                           ' ''o'', NULL, ''h'', $1)) FROM %s r',
                           CASE WHEN TG_OP = 'DELETE' THEN 'old_rows' ELSE 'new_rows' END)
            INTO found_rows
            USING TG_ARGV[0]::uuid[] || ARRAY(
                SELECT DISTINCT rt.webhook_id FROM webhooks.capture_routes rt
                WHERE rt.relid = TG_RELID AND rt.operation = TG_OP);
            taken := true;
            RAISE EXCEPTION USING ERRCODE = 'WHR00';
        EXCEPTION WHEN SQLSTATE 'WHR00' THEN
            IF NOT taken THEN
                RAISE;  -- the owner's code, not us: fail the write rather than capture nothing
            END IF;
        END;
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

-- A row image without the columns `excluded`, its column order kept (json, not jsonb), as
-- compact JSON (webhooks._compact_image: json_object_agg prints { "id" : 1 }, and a jsonb column
-- embeds "a": 1). Called by claim() for every row image it sends; a NULL list removes nothing.
CREATE OR REPLACE FUNCTION webhooks._without(image json, excluded text[])
RETURNS json
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT webhooks._compact_image(
        CASE WHEN excluded IS NULL OR image IS NULL OR json_typeof(image) <> 'object' THEN image
             ELSE coalesce((SELECT json_object_agg(k.key, k.value ORDER BY k.ord)
                            FROM json_each(image) WITH ORDINALITY AS k(key, value, ord)
                            WHERE k.key <> ALL (excluded)), '{}'::json) END)
$$;
