-- pgwebhooks: event types' routes at rest (migration 0022; 041_cursors.sql). A claim looks only at
-- the cursors of routes not at rest, so 10,000 quiet types (a webhook per tenant, each with a type
-- of its own) cost it nothing. A route comes to rest (no cursor has an event past it) in the
-- three steps of a webhook (044_resting_webhooks.sql), on its `event_types` row; publish() reads
-- its route's state in the lookup it makes anyway and adds a `_route_wakes` row when the route is
-- not open, having taken its transaction id first, as the argument there needs. (_session_due,
-- which paces the steps per session, is defined in 044.)

-- The routes not at rest: event types' open or emptied, or woken since, and every table route
-- with a cursor (table routes do not rest: migration 0023). Inlined into its callers.
CREATE OR REPLACE FUNCTION webhooks._open_routes()
RETURNS TABLE (route integer)
LANGUAGE sql STABLE
AS $$
    SELECT t.route FROM webhooks.event_types t WHERE t.route_state <> 'idle'
    UNION
    SELECT k.route FROM webhooks._route_wakes k
    UNION
    SELECT r.route FROM webhooks.table_routes r WHERE EXISTS (SELECT 1 FROM webhooks.cursors c WHERE c.route = r.route)
$$;

-- The routes' rest, in the steps of _rest_webhooks (044_resting_webhooks.sql): a route is busy
-- while a cursor of it has an event past it, woken by a `_route_wakes` row; at most every 100 ms
-- per session unless `force`. Returns how many routes came to rest.
CREATE OR REPLACE FUNCTION webhooks._rest_routes(force boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    rested integer;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed'
       OR NOT (webhooks._session_due('routes_rested_at', 0.1) OR force) THEN
        RETURN 0;
    END IF;
    WITH probed AS (
        SELECT t.route, t.xmin AS version, t.route_state, t.route_horizon,
               EXISTS (SELECT 1 FROM webhooks._route_wakes k WHERE k.route = t.route) AS woken,
               EXISTS (SELECT 1 FROM webhooks.cursors c
                       WHERE c.route = t.route
                         AND (SELECT true FROM webhooks.captures x  -- a probe per cursor: see _fill_from_cursors
                              WHERE x.route = c.route AND x.route IS NOT NULL
                                AND (x.xid, x.id) > (c.xid, c.id) LIMIT 1)) AS busy,
               pg_snapshot_xmin(pg_current_snapshot()) AS xmin,
               pg_snapshot_xmax(pg_current_snapshot()) AS xmax
        FROM webhooks._open_routes() o
        JOIN webhooks.event_types t ON t.route = o.route
    ), moving AS (
        SELECT p.* FROM probed p
        WHERE webhooks._rest_moves(p.route_state, p.route_horizon, p.busy, p.woken, p.xmin)
    ), locked AS (
        SELECT l.route, l.xmin AS version
        FROM webhooks.event_types l
        WHERE l.route IN (SELECT m.route FROM moving m)
        FOR NO KEY UPDATE OF l SKIP LOCKED
    ), moved AS (
        UPDATE webhooks.event_types t
        SET route_state = webhooks._rest_next_state(p.route_state, p.route_horizon, p.busy, p.woken, p.xmin),
            route_horizon = webhooks._rest_next_horizon(p.route_state, p.route_horizon, p.busy, p.woken, p.xmin, p.xmax)
        FROM moving p
        JOIN locked k ON k.route = p.route AND k.version = p.version
        WHERE t.route = p.route
        RETURNING t.route, t.route_state, p.woken
    ), consumed AS (
        DELETE FROM webhooks._route_wakes k
        WHERE k.route IN (SELECT m.route FROM moved m WHERE m.woken)
    )
    SELECT count(*) FILTER (WHERE m.route_state = 'idle') INTO rested FROM moved m;
    RETURN rested;
END
$$;

REVOKE ALL ON FUNCTION webhooks._open_routes, webhooks._rest_routes FROM PUBLIC;
