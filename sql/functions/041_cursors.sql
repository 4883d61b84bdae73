-- pgwebhooks: published events and one-row changes through cursors (migrations 0022 and 0023;
-- docs/outbox-design.md, steps 1a and 1b).
--
-- publish() writes each event once, on its type's route, with its transaction id; a capture
-- trigger does the same with a one-row change, on its table and operation's route (table_routes).
-- Each webhook subscribed has a cursor on the route: every event at or before the cursor's
-- (xid, id) has been given to it. claim() moves the cursors (_fill_from_cursors) and creates a
-- pending delivery per event passed; from there on a delivery is a delivery, however it came.
--
-- Why (xid, id) order, and when a cursor may pass an event: ids are drawn as events are written,
-- not as they commit, so an event may become visible below others already passed. A cursor only
-- passes events of transactions below the snapshot's xmin, leaving out those of other databases
-- (_cursor_horizon): those have all ended, and every event they wrote is visible. A long
-- transaction of this database holds it back, so events committed past a writer still running
-- are given ahead of the cursor once they are `_route_patience()` old; the cursor row keeps how
-- far that got and which writers were running below that point, and when it gets there it skips
-- what already has a delivery.
--
-- Which cursors a claim looks at: the routes not at rest (042_resting_routes.sql).

-- How old an event committed past a running writer must be before it is given ahead of the
-- cursor: long enough that most writers in flight have committed (and the cursor passes their
-- events in order), short enough that a long transaction delays others' events by this, not by
-- its length.
CREATE OR REPLACE FUNCTION webhooks._route_patience()
RETURNS interval
LANGUAGE sql IMMUTABLE
AS $$ SELECT interval '1 second' $$;

-- The transaction id below which a cursor may pass events: every transaction below it has ended,
-- so all it wrote is visible. A snapshot lists the running transactions below its xmax; those
-- from its xmax on are running too (xmax is one past the last that completed), and are not
-- listed: so the lesser of the first listed and the xmax. The server's transaction ids are
-- shared by all its databases, and so are its snapshots: a transaction that pg_stat_activity
-- shows in another database writes nothing here, and is left out, so that a long transaction
-- there does not hold back every event of this one (by _route_patience() each). One whose
-- database is not shown (a prepared transaction, a backend this role may not look at) counts as
-- this database's. A backend never changes database: what it shows stays true for as long as
-- that transaction runs. The caller's own transaction counts as
-- ended for its own events (a claim in the transaction that published, as tests do; they go
-- with it if it rolls back) once every transaction between that point and its own id has ended:
-- asked of each (pg_xact_status, at most 1,000), in READ COMMITTED only, where the next
-- statement sees what they wrote.
CREATE OR REPLACE FUNCTION webhooks._cursor_horizon()
RETURNS xid8
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    snap pg_snapshot := pg_current_snapshot();
    horizon xid8 := pg_snapshot_xmax(snap);
    own xid8 := pg_current_xact_id_if_assigned();
    candidate numeric;
BEGIN
    -- Only when a transaction is listed: a look at pg_stat_activity reads every backend's entry.
    IF EXISTS (SELECT 1 FROM pg_snapshot_xip(snap)) THEN
        -- A look taken after the snapshot, not one kept from earlier in this transaction: a
        -- backend's database and its transaction id are read one after the other, and only a
        -- backend whose listed transaction began before the snapshot is sure to show its own
        -- database by then (it shows it before it can take an id; a backend that left its slot
        -- cleared it before the next could take it).
        PERFORM pg_stat_clear_snapshot();
        -- least() skips a NULL (nothing listed of this database); PostgreSQL 14 has no min(xid8).
        horizon := least(horizon, (
            SELECT x FROM pg_snapshot_xip(snap) x
            WHERE NOT EXISTS (SELECT 1 FROM pg_stat_get_activity(NULL) a
                              WHERE a.backend_xid = x::xid AND a.datid <> 0
                                AND a.datid <> (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()))
            ORDER BY x LIMIT 1));
    END IF;
    IF own IS NULL OR own < horizon OR current_setting('transaction_isolation') <> 'read committed' THEN
        RETURN horizon;
    END IF;
    candidate := horizon::text::numeric;
    WHILE candidate < own::text::numeric LOOP
        IF candidate >= horizon::text::numeric + 1000 OR pg_xact_status(candidate::text::xid8) = 'in progress' THEN
            RETURN candidate::text::xid8;
        END IF;
        candidate := candidate + 1;
    END LOOP;
    RETURN (own::text::numeric + 1)::text::xid8;
END
$$;

-- The cursors of `route` for exactly `hooks` (those of them that exist), or, unless `add`, for
-- no webhook outside them (a filtered table's route keeps the cursors it has until they are
-- unsubscribed, and gets no new one: 034_sync_triggers.sql). A new cursor starts at this
-- transaction's snapshot xmin: what transactions still running when the subscription was made
-- put on the route is given to it, rather than lost in between; past what this transaction
-- itself put there, if anything.
CREATE OR REPLACE FUNCTION webhooks._sync_route_cursors(route integer, hooks uuid[], add boolean DEFAULT true)
RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (
        DELETE FROM webhooks.cursors k
        WHERE k.route = _sync_route_cursors.route AND k.webhook_id <> ALL (coalesce(hooks, '{}'))
    )
    INSERT INTO webhooks.cursors (route, webhook_id, xid, id)
    SELECT _sync_route_cursors.route, h, coalesce(own.xid, pg_snapshot_xmin(pg_current_snapshot())),
           coalesce(own.id, 0)
    FROM unnest(hooks) h
    -- What this transaction put on the route before subscribing stays out, as before cursors (a
    -- type's subscribers were read when an event was published, a table's when it was written).
    LEFT JOIN LATERAL (
        SELECT x.xid, x.id FROM webhooks.captures x
        WHERE x.route = _sync_route_cursors.route AND x.route IS NOT NULL
          AND x.xid = pg_current_xact_id_if_assigned()
        ORDER BY x.route, x.xid DESC, x.id DESC LIMIT 1
    ) own ON true
    WHERE add AND EXISTS (SELECT 1 FROM webhooks.webhooks w WHERE w.id = h)
    ON CONFLICT DO NOTHING
$$;

-- After event_types.webhook_ids changed for `types` (NULL: all): a cursor for each webhook that
-- now receives a type, none for one that no longer does. (The count makes every type's call run:
-- a SQL function may stop reading its last SELECT after the first row.)
CREATE OR REPLACE FUNCTION webhooks._sync_cursors(types text[])
RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(webhooks._sync_route_cursors(t.route, t.webhook_ids))
    FROM webhooks.event_types t
    WHERE types IS NULL OR t.name = ANY (types)
$$;

-- The route of `relid`'s one-row changes of operation `op`, created the first time it is asked
-- for (by _sync_triggers, which writes it into the capture trigger's arguments).
CREATE OR REPLACE FUNCTION webhooks._table_route(relid oid, op text)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_route integer;
BEGIN
    SELECT r.route INTO found_route FROM webhooks.table_routes r
    WHERE r.relid = _table_route.relid AND r.operation = op;
    IF found_route IS NULL THEN
        INSERT INTO webhooks.table_routes (relid, operation) VALUES (relid, op)
        ON CONFLICT ON CONSTRAINT table_routes_relid_operation DO NOTHING;
        SELECT r.route INTO found_route FROM webhooks.table_routes r
        WHERE r.relid = _table_route.relid AND r.operation = op;
    END IF;
    RETURN found_route;
END
$$;

-- A cursor's next events in order, from (from_xid, from_id) up to the oldest writer still running
-- (`horizon`), at most `share` of them; where it got. Below a point reached ahead (`passing`), an
-- event may have its delivery already: it is passed, not taken again.
CREATE OR REPLACE FUNCTION webhooks._cursor_in_order(route integer, webhook_id uuid, from_xid xid8, from_id bigint,
                                                     passing boolean, share integer, horizon xid8,
                                                     OUT taken bigint[], OUT at_xid xid8, OUT at_id bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
DECLARE
    r record;
BEGIN
    taken := '{}';
    at_xid := from_xid;
    at_id := from_id;
    FOR r IN
        SELECT x.xid, x.id,
               passing AND EXISTS (SELECT 1 FROM webhooks.deliveries d
                                   WHERE d.capture_id = x.id AND d.webhook_id = _cursor_in_order.webhook_id) AS given
        FROM webhooks.captures x
        WHERE x.route = _cursor_in_order.route AND x.route IS NOT NULL
          AND (x.xid, x.id) > (from_xid, from_id) AND x.xid < horizon
        ORDER BY x.route, x.xid, x.id
        LIMIT CASE WHEN passing THEN 10 * share ELSE share END
    LOOP
        EXIT WHEN cardinality(taken) >= share;
        at_xid := r.xid;
        at_id := r.id;
        IF NOT r.given THEN
            taken := taken || r.id;
        END IF;
    END LOOP;
END
$$;

-- Events committed past a writer still running, given ahead of the cursor: those at least
-- _route_patience() old past the point reached ahead (from_xid, from_id), in order, then those
-- of `running` writers (running below that point last time) that have since committed; at most
-- `room`, none of `already`. Where the point got to.
CREATE OR REPLACE FUNCTION webhooks._cursor_ahead(route integer, webhook_id uuid, from_xid xid8, from_id bigint,
                                                  running xid8[], already bigint[], room integer, horizon xid8,
                                                  OUT taken bigint[], OUT ahead_xid xid8, OUT ahead_id bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
DECLARE
    r record;
BEGIN
    taken := '{}';
    ahead_xid := from_xid;
    ahead_id := from_id;
    FOR r IN
        SELECT x.xid, x.id, x.occurred_at FROM webhooks.captures x
        WHERE x.route = _cursor_ahead.route AND x.route IS NOT NULL AND x.xid >= horizon
          AND (x.xid, x.id) > (from_xid, from_id)
        ORDER BY x.route, x.xid, x.id
        LIMIT room
    LOOP
        EXIT WHEN r.occurred_at > now() - webhooks._route_patience();  -- left for later, in order
        taken := taken || r.id;
        ahead_xid := r.xid;
        ahead_id := r.id;
    END LOOP;
    taken := taken || ARRAY(
        SELECT x.id FROM webhooks.captures x
        WHERE x.route = _cursor_ahead.route AND x.route IS NOT NULL AND x.xid = ANY (running)
          AND x.id <> ALL (already)
          AND NOT EXISTS (SELECT 1 FROM webhooks.deliveries d
                          WHERE d.capture_id = x.id AND d.webhook_id = _cursor_ahead.webhook_id)
        ORDER BY x.route, x.xid, x.id
        LIMIT greatest(room - cardinality(taken), 0));
END
$$;

-- One cursor's turn in _fill_from_cursors: its next events (at most `share`), a pending delivery
-- for each if its webhook is enabled, the cursor moved. A cursor another claim holds, or whose
-- webhook is being deleted, is skipped. Returns the deliveries created.
CREATE OR REPLACE FUNCTION webhooks._give_from_cursor(route integer, webhook_id uuid, share integer,
                                                      horizon xid8, running xid8[])
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k record;
    done record;
    ahead record;
    taken bigint[];
    kept_xid xid8;
    kept_id bigint;
    kept_open xid8[];
BEGIN
    -- The webhook's row too (FOR KEY SHARE, as _fan_out): a delete_webhook() running now is
    -- skipped, and one that comes later waits for this claim and then deletes what it made.
    SELECT c.*, w.enabled INTO k
    FROM webhooks.cursors c JOIN webhooks.webhooks w ON w.id = c.webhook_id
    WHERE c.route = _give_from_cursor.route AND c.webhook_id = _give_from_cursor.webhook_id
    FOR NO KEY UPDATE OF c SKIP LOCKED
    FOR KEY SHARE OF w SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    done := webhooks._cursor_in_order(k.route, k.webhook_id, k.xid, k.id, k.ahead_id IS NOT NULL, share, horizon);
    taken := done.taken;
    kept_xid := k.ahead_xid;
    kept_id := k.ahead_id;
    kept_open := k.ahead_open;
    IF kept_id IS NOT NULL AND (done.at_xid, done.at_id) >= (kept_xid, kept_id) THEN
        kept_xid := NULL;  -- past the point reached ahead: all given ahead is behind the cursor
        kept_id := NULL;
        kept_open := '{}';
    END IF;
    -- Ahead of writers still running (a disabled webhook gets nothing ahead: its cursor passes
    -- events in order only).
    IF cardinality(taken) < share AND running <> '{}' AND k.enabled THEN
        ahead := webhooks._cursor_ahead(k.route, k.webhook_id, coalesce(kept_xid, done.at_xid),
                                        coalesce(kept_id, done.at_id), kept_open, taken,
                                        share - cardinality(taken), horizon);
        taken := taken || ahead.taken;
        IF (ahead.ahead_xid, ahead.ahead_id) = (done.at_xid, done.at_id) THEN
            kept_xid := NULL;  -- nothing given ahead: no point to keep
            kept_id := NULL;
            kept_open := '{}';
        ELSE
            kept_xid := ahead.ahead_xid;
            kept_id := ahead.ahead_id;
            kept_open := ARRAY(SELECT w FROM unnest(running) w WHERE w < ahead.ahead_xid ORDER BY w);
        END IF;
    END IF;
    IF k.enabled AND cardinality(taken) > 0 THEN
        INSERT INTO webhooks.deliveries (capture_id, n, webhook_id)
        SELECT t, 1, k.webhook_id FROM unnest(taken) AS t ORDER BY t;
    END IF;
    -- Left as it is when nothing moved (a claim behind a long writer, with nothing old enough to
    -- give ahead): no row version per claim.
    IF (done.at_xid, done.at_id, kept_xid, kept_id, kept_open)
       IS DISTINCT FROM (k.xid, k.id, k.ahead_xid, k.ahead_id, k.ahead_open) THEN
        UPDATE webhooks.cursors c
        SET xid = done.at_xid, id = done.at_id, ahead_xid = kept_xid, ahead_id = kept_id, ahead_open = kept_open
        WHERE c.route = k.route AND c.webhook_id = k.webhook_id;
    END IF;
    RETURN CASE WHEN k.enabled THEN cardinality(taken) ELSE 0 END;
END
$$;

-- Give each cursor of the open routes its next events, about `budget` in all, shared alike
-- between the cursors that have any: a pending delivery per event, for an enabled webhook (a
-- disabled one's cursor passes its events and gets nothing, as fan-out never gave a disabled
-- webhook anything). Returns the deliveries created.
CREATE OR REPLACE FUNCTION webhooks._fill_from_cursors(budget integer)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
DECLARE
    horizon xid8;
    running xid8[];
    todo record;
    created integer := 0;
BEGIN
    SELECT array_agg(c.route ORDER BY c.xid, c.route, c.webhook_id) AS routes,
           array_agg(c.webhook_id ORDER BY c.xid, c.route, c.webhook_id) AS hooks
    INTO todo
    FROM webhooks.cursors c
    WHERE c.route IN (SELECT o.route FROM webhooks._open_routes() o)
      -- A probe per cursor, written so that no planner turns it into a join that reads the whole
      -- route (it did once captures was partitioned, 0024: a hash of every capture on it).
      AND (SELECT true FROM webhooks.captures x
           WHERE x.route = c.route AND x.route IS NOT NULL AND (x.xid, x.id) > (c.xid, c.id) LIMIT 1);
    IF todo.routes IS NULL THEN
        RETURN 0;
    END IF;
    -- Only with events to give (it may read every backend's activity), before any cursor reads them.
    horizon := webhooks._cursor_horizon();
    running := ARRAY(SELECT x FROM pg_snapshot_xip(pg_current_snapshot()) x ORDER BY x);
    FOR i IN 1 .. cardinality(todo.routes) LOOP
        created := created + webhooks._give_from_cursor(todo.routes[i], todo.hooks[i],
                                                         greatest(1, budget / cardinality(todo.routes)),
                                                         horizon, running);
    END LOOP;
    RETURN created;
END
$$;

-- A copy of the database (pg_restore into another server, CREATE DATABASE ... TEMPLATE) keeps
-- the original's transaction ids in `captures.xid` and `cursors`, and another server's may be
-- lower: the copy's new events would sort before its cursors and never be given. So when the
-- restore check finds a copy (_ensure_identity), every published event takes transaction id 1,
-- which orders them by id, and every cursor starts again below its first event not given yet
-- (and at or below its own id, which every event the copy publishes is above), with the point
-- reached ahead at the last event: what lies between is given unless it has a delivery already.
CREATE OR REPLACE FUNCTION webhooks._rebase_cursors()
RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
    WITH n AS (
        SELECT k.route, k.webhook_id,
               least(k.id, (SELECT min(x.id) - 1 FROM webhooks.captures x
                            WHERE x.route = k.route AND x.route IS NOT NULL AND (x.xid, x.id) > (k.xid, k.id))) AS from_id,
               (SELECT max(x.id) FROM webhooks.captures x WHERE x.route = k.route AND x.route IS NOT NULL) AS last_id
        FROM webhooks.cursors k
    ), rebased AS (
        UPDATE webhooks.cursors c
        SET xid = '1', id = n.from_id,
            ahead_xid = CASE WHEN n.last_id > n.from_id THEN '1'::xid8 END,
            ahead_id = CASE WHEN n.last_id > n.from_id THEN n.last_id END,
            ahead_open = '{}'
        FROM n
        WHERE c.route = n.route AND c.webhook_id = n.webhook_id
    )
    UPDATE webhooks.captures x SET xid = '1' WHERE x.route IS NOT NULL AND x.xid <> '1'
$$;

-- Seconds until a cursor of an open route has an event to give (0: now), or NULL: for
-- next_due_in(). An event past the point reached ahead is due once its writer's transaction is
-- below the horizon, or once it is `_route_patience()` old; an event of a writer that was running
-- below that point, once it has committed.
CREATE OR REPLACE FUNCTION webhooks._cursors_due_in()
RETURNS double precision
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    -- PL/pgSQL for its cached plans: next_due_in() asks after every short claim, and with every
    -- route at rest this is one probe.
    IF NOT EXISTS (SELECT 1 FROM webhooks._open_routes()) THEN
        RETURN NULL;
    END IF;
    -- The horizon is an uncorrelated subquery (an InitPlan): taken once, and only when a cursor
    -- has an event past the point reached ahead, since taking it may read pg_stat_activity.
    RETURN (
        SELECT min(x.due)
        FROM webhooks.cursors c
        CROSS JOIN LATERAL (
            (SELECT CASE WHEN n.xid < (SELECT webhooks._cursor_horizon()) THEN 0
                         ELSE greatest(0, extract(epoch FROM n.occurred_at + webhooks._route_patience() - now()))::float8
                    END AS due
             FROM webhooks.captures n
             WHERE n.route = c.route AND n.route IS NOT NULL
               AND (n.xid, n.id) > (coalesce(c.ahead_xid, c.xid), coalesce(c.ahead_id, c.id))
             ORDER BY n.route, n.xid, n.id LIMIT 1)
            UNION ALL
            (SELECT 0::float8 FROM webhooks.captures n
             WHERE c.ahead_open <> '{}' AND n.route = c.route AND n.route IS NOT NULL AND n.xid = ANY (c.ahead_open)
               AND NOT EXISTS (SELECT 1 FROM webhooks.deliveries d WHERE d.capture_id = n.id AND d.webhook_id = c.webhook_id)
             LIMIT 1)
        ) x
        WHERE c.route IN (SELECT o.route FROM webhooks._open_routes() o));
END
$$;

REVOKE ALL ON FUNCTION webhooks._route_patience, webhooks._cursor_horizon, webhooks._sync_cursors,
    webhooks._sync_route_cursors, webhooks._table_route,
    webhooks._cursor_in_order, webhooks._cursor_ahead, webhooks._give_from_cursor, webhooks._fill_from_cursors, webhooks._cursors_due_in, webhooks._rebase_cursors FROM PUBLIC;
