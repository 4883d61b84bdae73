-- pgwebhooks: the route path of capture filters. On a table whose webhooks either have no filter
-- or are routed by value on the same one column (`"where": "tenant_id = 42"`), a one-row
-- statement's row is routed by _routed_row, whose plan the session keeps, instead of by the query
-- of _filter_query (032_capture_filters.sql), which EXECUTE plans at every write: that planning
-- was most of what a filter cost a one-row write. _sync_triggers (034) gives such a trigger the
-- route column as its third argument; _capture_filtered takes the path when it has one.

-- Whether a column of type `typ` reads the same as text and in its row's JSON image (->>): then a
-- route value, stored as the column's text, can be matched against the image.
CREATE OR REPLACE FUNCTION webhooks._json_text_is_text(typ oid)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    -- bool, int8, int2, int4, text, varchar, numeric, uuid
    SELECT typ OPERATOR(pg_catalog.=) ANY ('{16, 20, 21, 23, 25, 1043, 1700, 2950}'::pg_catalog.oid[])
$$;

-- The route column of `relid` for `op` when every subscription of it is plain or routed by value
-- on that one column, whose text is the same in the row's JSON image (integers, numeric, text,
-- varchar, uuid, boolean): its trigger then routes a one-row statement with _routed_row, plan kept,
-- not _filter_query's, planned at every write (~165 us of a one-row INSERT's ~225). NULL otherwise.
CREATE OR REPLACE FUNCTION webhooks._route_column(relid oid, op text)
RETURNS name
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN op IN ('INSERT', 'UPDATE', 'DELETE') AND count(DISTINCT f.route_column) = 1
                     AND bool_and(f.kind = 'plain' OR (f.kind = 'route' AND webhooks._json_text_is_text(a.atttypid)))
                THEN min(f.route_column) END
    FROM webhooks._filter_conds(relid, op) f
    LEFT JOIN pg_attribute a ON a.attrelid = relid AND a.attname = f.route_column AND NOT a.attisdropped
$$;

-- What _filter_query's query gives for the one row of a statement on a table of _route_column
-- (and an UPDATE's old row): [{r, o, h, oh}] if some webhook wants it, `plain` getting every row.
-- A route column dropped since the trigger was made, or given a type whose JSON text differs
-- (char(n) keeps its padding there), is an error: the trigger's fail-closed path then evaluates
-- each webhook's filter alone. A generic plan: a custom one, made per call, cost what it saves.
CREATE OR REPLACE FUNCTION webhooks._routed_row(image json, old_image json, plain text, route_column text,
                                                relid oid, op text)
RETURNS json
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    found_rows json;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a
                   WHERE a.attrelid = _routed_row.relid AND a.attname = route_column AND NOT a.attisdropped
                     AND webhooks._json_text_is_text(a.atttypid)) THEN
        RAISE EXCEPTION 'the route column % is no longer in the table, or no longer of a type routed by its JSON text',
            route_column;
    END IF;
    SELECT json_build_array(json_build_object('r', image, 'o', old_image, 'h', h.hooks, 'oh', h.ohooks))
    INTO found_rows
    FROM (SELECT array_remove(plain::uuid[] || ARRAY(
                     SELECT rt.webhook_id FROM webhooks.capture_routes rt
                     WHERE rt.relid = _routed_row.relid AND rt.operation = op AND rt.column_name = route_column
                       AND rt.value = image ->> route_column), NULL) AS hooks,
                 CASE WHEN old_image IS NOT NULL THEN array_remove(plain::uuid[] || ARRAY(
                     SELECT rt.webhook_id FROM webhooks.capture_routes rt
                     WHERE rt.relid = _routed_row.relid AND rt.operation = op AND rt.column_name = route_column
                       AND rt.value = old_image ->> route_column), NULL) END AS ohooks) h
    WHERE cardinality(h.hooks) > 0;
    RETURN found_rows;
END
$$;

-- _capture_filtered runs as webhooks_capture, and calls it.
GRANT EXECUTE ON FUNCTION webhooks._routed_row, webhooks._json_text_is_text TO webhooks_capture;
