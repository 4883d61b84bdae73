-- pgwebhooks: held rows. When a statement's filter query fails at capture, _capture_filtered
-- (032_capture_filters.sql) evaluates each filter alone with the helpers below and keeps the rows
-- for each webhook whose filter fails; release_held() evaluates them again.

-- Fail closed, webhook by webhook: the queries a statement whose filter query failed is
-- evaluated with again, each alone, over _filter_from's FROM clause. First 'base', the rows
-- themselves ([{r, o}]); then per routing column, one query for all its webhooks however many
-- tenants (per row [hooks, ohooks]); then per other webhook its own ([passes, old passes too]
-- as 1/0).
CREATE OR REPLACE FUNCTION webhooks._filter_units(relid oid, op text)
RETURNS TABLE (kind text, webhook_ids uuid[], probe text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT u.kind, u.webhook_ids, u.probe
    FROM (
        SELECT 0 AS ord, NULL::text AS sort_key, 'base' AS kind, NULL::uuid[] AS webhook_ids,
               'SELECT pg_catalog.json_agg(pg_catalog.json_build_object(''r'', pg_catalog.row_to_json(r),'
               ' ''o'', pg_catalog.row_to_json(x.old)))' AS probe
        UNION ALL
        SELECT 1, f.route_column::text, 'route', array_agg(f.webhook_id ORDER BY f.webhook_id),
               format('SELECT pg_catalog.json_agg(pg_catalog.json_build_array('
                      'ARRAY(SELECT rt.webhook_id FROM webhooks.capture_routes rt WHERE rt.relid OPERATOR(pg_catalog.=) %1$s::pg_catalog.oid'
                      ' AND rt.operation OPERATOR(pg_catalog.=) %2$L AND rt.column_name OPERATOR(pg_catalog.=) %3$L'
                      ' AND rt.value OPERATOR(pg_catalog.=) (r.%3$I)::pg_catalog.text),'
                      'ARRAY(SELECT rt.webhook_id FROM webhooks.capture_routes rt WHERE x.paired AND rt.relid OPERATOR(pg_catalog.=) %1$s::pg_catalog.oid'
                      ' AND rt.operation OPERATOR(pg_catalog.=) %2$L AND rt.column_name OPERATOR(pg_catalog.=) %3$L'
                      ' AND rt.value OPERATOR(pg_catalog.=) ((x.old).%3$I)::pg_catalog.text)))',
                      relid, op, f.route_column)
        FROM webhooks._filter_conds(relid, op) f WHERE f.kind = 'route'
        GROUP BY f.route_column
        UNION ALL
        SELECT 2, f.webhook_id::text, f.kind, ARRAY[f.webhook_id],
               format('SELECT pg_catalog.json_agg(pg_catalog.json_build_array('
                      'CASE WHEN %s THEN 1 ELSE 0 END, CASE WHEN x.paired AND %s THEN 1 ELSE 0 END))', f.cond, f.ocond)
        FROM webhooks._filter_conds(relid, op) f WHERE f.kind <> 'route'
    ) u
    ORDER BY u.ord, u.sort_key
$$;

-- The failed statement's rows (base_rows: [{r, o}]) with the webhooks each goes to, from the
-- results of _filter_units' queries ([{kind, ids, flags, problem}]) that worked: a filter's
-- flags are per row [passes, old passes too], a routing column's per row [hooks, ohooks]. The
-- same shape as the set-based query's result: [{r, o, h, oh}].
CREATE OR REPLACE FUNCTION webhooks._filter_merge(base_rows json, results jsonb, op text)
RETURNS json
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
    WITH worked AS (
        SELECT x.v, x.n FROM jsonb_array_elements(results) WITH ORDINALITY AS x(v, n) WHERE x.v ->> 'problem' IS NULL
    ), parts AS (
        SELECT coalesce((SELECT jsonb_object_agg(w.v -> 'ids' ->> 0, w.v -> 'flags') FROM worked w
                         WHERE w.v ->> 'kind' <> 'route'), '{}') AS flags,
               coalesce((SELECT jsonb_agg(coalesce(nullif(w.v -> 'flags', 'null'), '[]') ORDER BY w.n) FROM worked w
                         WHERE w.v ->> 'kind' = 'route'), '[]') AS routed
    )
    SELECT json_agg(json_build_object('r', b.v -> 'r', 'o', b.v -> 'o',
               'h', coalesce((SELECT json_agg(u.k) FROM (
                                  SELECT f.key AS k FROM jsonb_each(p.flags) f
                                  WHERE f.value -> (b.i::int - 1) ->> 0 = '1'
                                  UNION ALL
                                  SELECT jsonb_array_elements_text(rs -> (b.i::int - 1) -> 0)
                                  FROM jsonb_array_elements(p.routed) rs) u), '[]'),
               'oh', coalesce((SELECT json_agg(u.k) FROM (
                                  SELECT f.key AS k FROM jsonb_each(p.flags) f
                                  WHERE op = 'UPDATE' AND f.value -> (b.i::int - 1) ->> 1 = '1'
                                  UNION ALL
                                  SELECT jsonb_array_elements_text(rs -> (b.i::int - 1) -> 1)
                                  FROM jsonb_array_elements(p.routed) rs WHERE op = 'UPDATE') u), '[]')))
    FROM parts p, json_array_elements(base_rows) WITH ORDINALITY AS b(v, i)
$$;

-- Keep a failed statement's rows (base_rows) for each webhook whose query of _filter_units
-- failed (results: [{kind, ids, flags, problem}]) until release_held(), and say so on
-- webhooks_alerts.
CREATE OR REPLACE FUNCTION webhooks._hold_rows(results jsonb, base_rows json, relid oid, op text,
                                               schema_name name, table_name name)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    held jsonb := (SELECT jsonb_object_agg(w, x.v -> 'problem')
                   FROM jsonb_array_elements(results) x(v), jsonb_array_elements_text(x.v -> 'ids') w
                   WHERE x.v ->> 'problem' IS NOT NULL);
BEGIN
    IF held IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO webhooks.held_rows (webhook_id, operation, relid, schema_name, table_name, record,
                                    old_record, held_error)
    SELECT hk.key::uuid, op, _hold_rows.relid, _hold_rows.schema_name, _hold_rows.table_name, b.v -> 'r',
           CASE WHEN op = 'UPDATE' AND json_typeof(b.v -> 'o') = 'object' THEN b.v -> 'o' END,
           hk.value #>> '{}'
    FROM jsonb_each(held) hk CROSS JOIN json_array_elements(base_rows) b(v);
    PERFORM pg_notify('webhooks_alerts', left(jsonb_build_object(
                'kind', 'filter_failed', 'at', now(), 'webhook_id', hk.key,
                'table', format('%I.%I', _hold_rows.schema_name, _hold_rows.table_name), 'operation', op,
                'rows', json_array_length(base_rows), 'error', left(hk.value #>> '{}', 1000))::text, 7900))
    FROM jsonb_each(held) hk;
END
$$;

-- Re-evaluate the rows held for webhook `id` (its filter failed at capture) with its CURRENT
-- filter, in the same guarded read-only way as capture: those that match are queued for it
-- (each a capture of its own), those that do not are dropped as filtered, and those whose filter
-- still fails stay held with the new error. Needs the same right as creating the webhook: the
-- caller must be allowed to watch every table the held rows come from.
CREATE OR REPLACE FUNCTION webhooks.release_held(id uuid)
RETURNS TABLE (queued integer, dropped integer, still_held integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    h record;
    c record;
    keep boolean;
    keep_old boolean;
    problem text;
    taken boolean;
BEGIN
    PERFORM webhooks._webhook_exists(id);
    PERFORM webhooks._check_reach(id);
    PERFORM webhooks._check_watchable('id', t.relid)
    FROM (SELECT DISTINCT x.relid FROM webhooks.held_rows x
          WHERE x.webhook_id = release_held.id AND EXISTS (SELECT 1 FROM pg_class k WHERE k.oid = x.relid)) t;
    queued := 0;
    dropped := 0;
    still_held := 0;
    FOR h IN SELECT * FROM webhooks.held_rows x WHERE x.webhook_id = release_held.id ORDER BY x.id FOR UPDATE LOOP
        SELECT * INTO c FROM webhooks._filter_conds(h.relid, h.operation, false) f WHERE f.webhook_id = release_held.id;
        IF NOT FOUND OR NOT EXISTS (SELECT 1 FROM pg_class k WHERE k.oid = h.relid) THEN
            DELETE FROM webhooks.held_rows x WHERE x.id = h.id;  -- no longer subscribed: nothing owed
            dropped := dropped + 1;
            CONTINUE;
        END IF;
        problem := NULL;
        taken := false;
        BEGIN
            PERFORM set_config('transaction_read_only', 'on', true);
            PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
            EXECUTE format('SELECT coalesce(%s, false), coalesce(x.paired AND %s, false)'
                           ' FROM (SELECT (pg_catalog.json_populate_record(NULL::%s, $1)).*) r'
                           ' CROSS JOIN (SELECT pg_catalog.json_populate_record(NULL::%3$s, $2) AS old,'
                           ' $2 IS NOT NULL AS paired) x', c.cond, c.ocond, h.relid::regclass)
            INTO keep, keep_old USING h.record, h.old_record;
            taken := true;
            RAISE EXCEPTION USING ERRCODE = 'WHR00';
        EXCEPTION
            WHEN SQLSTATE 'WHR00' THEN
                IF NOT taken THEN problem := SQLERRM; END IF;
            WHEN OTHERS THEN problem := SQLERRM;
        END;
        IF problem IS NOT NULL THEN
            UPDATE webhooks.held_rows x SET held_error = problem WHERE x.id = h.id;
            still_held := still_held + 1;
        ELSIF keep THEN
            INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count,
                                           record, old_record)
            VALUES (h.operation, h.relid, h.schema_name, h.table_name, ARRAY[release_held.id], 1, h.record,
                    CASE WHEN keep_old THEN h.old_record END);
            DELETE FROM webhooks.held_rows x WHERE x.id = h.id;
            queued := queued + 1;
        ELSE
            DELETE FROM webhooks.held_rows x WHERE x.id = h.id;
            dropped := dropped + 1;
        END IF;
    END LOOP;
    IF queued > 0 THEN
        PERFORM pg_notify('webhooks', '');
    END IF;
    RETURN NEXT;
END
$$;

GRANT EXECUTE ON FUNCTION webhooks.release_held TO webhooks_admin;

COMMENT ON FUNCTION webhooks.release_held IS
    'Re-evaluate the rows held for a webhook (its where filter failed at capture) with its current filter: '
    'queue those that match, drop the others, keep those whose filter still fails. Returns the three counts.';

COMMENT ON TABLE webhooks.held_rows IS
    'Rows kept for one webhook whose where filter failed at capture, with the error; see release_held()';

-- _capture_filtered runs as webhooks_capture: its helpers are that role's to execute, nobody else's.
GRANT EXECUTE ON FUNCTION webhooks._filter_units, webhooks._filter_merge, webhooks._hold_rows TO webhooks_capture;

COMMENT ON FUNCTION webhooks._filter_units IS
    'Capture filters failing closed: the queries evaluated alone (the rows, each routing column, each other webhook''s filter).';

COMMENT ON FUNCTION webhooks._filter_merge IS
    'Capture filters failing closed: a statement''s rows with the webhooks each goes to, from the queries that worked.';

COMMENT ON FUNCTION webhooks._hold_rows IS
    'Capture filters failing closed: keep a statement''s rows for each webhook whose filter failed, and alert.';
