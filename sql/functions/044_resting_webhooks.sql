-- pgwebhooks: webhooks at rest. A webhook without unfinished (pending or leased) deliveries
-- comes to rest ('idle' in its endpoints row), and claim(), next_due_in() and the open floors
-- look only at the others (_unrested), so their cost follows the webhooks with work, not all
-- webhooks (10,000 quiet webhooks made each claim(200) three times slower, migration 0020).
--
-- Deliveries only ever become unfinished by being inserted (every other change of status starts
-- from 'leased'). An INSERT into `deliveries` for a webhook that is not 'open' adds a `_wakes`
-- row for it (_open_webhooks): claims count the webhook as not at rest from the moment that row
-- is visible, and _rest_webhooks opens it and removes the row. A writer only ever inserts there,
-- so it never waits: not on another writer, nor on an admin's open transaction, nor on a claim.
--
-- The hard part is coming to rest: a claim that sees no unfinished delivery cannot just set
-- 'idle', because a transaction inserting one may have read the row as 'open' (so it added no
-- wake) and not have committed yet. So rest takes three steps, each in a later statement than
-- the one before (_rest_webhooks, which claim() and next_due_in() run at most every 100 ms):
--
--   1. 'open' -> 'emptied', when this statement sees no unfinished delivery and no wake;
--   2. 'emptied' -> its horizon H, the xmax of a snapshot that sees step 1 committed: every
--      transaction that read the row before step 1 committed had inserted its deliveries, and so
--      had its transaction id, before that: its id is below H;
--   3. 'emptied' with H -> 'idle', once H <= the snapshot's xmin (every transaction below H has
--      ended, so their deliveries are visible here) and still none is unfinished.
--
-- A writer that reads the row after step 1 committed sees it not 'open' and adds a wake, which
-- brings the webhook back as soon as the writer commits. A webhook with unfinished deliveries or
-- a wake at any step goes back to 'open'. The cost of a mistake the other way (a webhook left
-- 'open' with nothing to do) is one probe per claim.

-- After an INSERT into deliveries: a wake for each of its webhooks that is not 'open'. One
-- statement per insert statement (fan-out inserts hundreds of rows at a time). Outside READ
-- COMMITTED the state read may be older than the transaction's insert (a REPEATABLE READ
-- snapshot is taken at its first statement), so every webhook gets a wake.
CREATE OR REPLACE FUNCTION webhooks._open_webhooks()
RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO webhooks._wakes (webhook_id)
    SELECT DISTINCT n.webhook_id FROM new_deliveries n
    WHERE current_setting('transaction_isolation') <> 'read committed'
       OR EXISTS (SELECT 1 FROM webhooks.endpoints e WHERE e.webhook_id = n.webhook_id AND e.work_state <> 'open');
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER deliveries_open_webhooks AFTER INSERT ON webhooks.deliveries
    REFERENCING NEW TABLE AS new_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks._open_webhooks();

-- The webhooks not at rest: open or emptied, or woken since. Inlined into its callers.
CREATE OR REPLACE FUNCTION webhooks._unrested()
RETURNS TABLE (webhook_id uuid)
LANGUAGE sql STABLE
AS $$
    SELECT e.webhook_id FROM webhooks.endpoints e WHERE e.work_state <> 'idle'
    UNION
    SELECT k.webhook_id FROM webhooks._wakes k
$$;

-- Whether this session last did `what` at least `period` seconds ago, or never; if so, records
-- now. Kept as epoch seconds in the session setting pgwebhooks.<what>: a value that is not one
-- (set by hand, or through a pooled connection) counts as never, so it can only make the session
-- do the work sooner, never fail its claims.
CREATE OR REPLACE FUNCTION webhooks._session_due(what text, period double precision)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    raw text := current_setting('pgwebhooks.' || what, true);
    now_s double precision := extract(epoch FROM clock_timestamp());
BEGIN
    IF raw ~ '^[0-9]{1,12}(\.[0-9]+)?$' AND now_s < raw::double precision + period THEN
        RETURN false;
    END IF;
    PERFORM set_config('pgwebhooks.' || what, now_s::text, false);
    RETURN true;
END
$$;

-- The three steps as three decisions, shared by webhooks and event types' routes
-- (042_resting_routes.sql): given a row's state and horizon, whether it has work (`busy`) or a
-- wake, and the snapshot's xmin and xmax, whether the row moves, and to what. SQL expressions,
-- inlined into the statements that call them.
CREATE OR REPLACE FUNCTION webhooks._rest_moves(state text, horizon xid8, busy boolean, woken boolean, xmin xid8)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE WHEN woken THEN true
                WHEN busy THEN state OPERATOR(pg_catalog.<>) 'open'
                ELSE state OPERATOR(pg_catalog.=) 'open' OR horizon IS NULL OR horizon OPERATOR(pg_catalog.<=) xmin END
$$;

CREATE OR REPLACE FUNCTION webhooks._rest_next_state(state text, horizon xid8, busy boolean, woken boolean, xmin xid8)
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE WHEN busy OR woken THEN 'open'
                WHEN state OPERATOR(pg_catalog.=) 'emptied' AND horizon OPERATOR(pg_catalog.<=) xmin THEN 'idle'
                ELSE 'emptied' END
$$;

CREATE OR REPLACE FUNCTION webhooks._rest_next_horizon(state text, horizon xid8, busy boolean, woken boolean,
                                                       xmin xid8, xmax xid8)
RETURNS xid8
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE WHEN busy OR woken OR state OPERATOR(pg_catalog.=) 'open' OR horizon OPERATOR(pg_catalog.<=) xmin THEN NULL
                WHEN horizon IS NULL THEN xmax
                ELSE horizon END
$$;

-- Steps 1-3 above for every webhook not at rest, and back to 'open' for any with work or a
-- wake (its wakes seen now are removed); at most every 100 ms per session unless `force`. A row
-- another transaction holds, or one changed since this statement's snapshot, is left for the
-- next call: each step must see the state it moves from in its own snapshot. `floors` are the
-- session's open floors (027_open_floors.sql): the probe starts there. Every 10 minutes it also
-- adds an endpoints row a webhook lacks (see _add_endpoint) and drops wakes of deleted webhooks.
-- Returns how many webhooks came to rest. Its plans are generic: a custom plan (made per call
-- for `floors`) cost 0.5 ms more with 2,000 webhooks, the planner weighing each one's
-- statistics, for the same plan.
CREATE OR REPLACE FUNCTION webhooks._rest_webhooks(floors jsonb, force boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    rested integer;
BEGIN
    -- A REPEATABLE READ snapshot is older than the statement: the steps need a fresh one each.
    IF current_setting('transaction_isolation') <> 'read committed'
       OR NOT (webhooks._session_due('rested_at', 0.1) OR force) THEN
        RETURN 0;
    END IF;
    -- Should a webhook lack its endpoints row, add it without ever waiting: one another
    -- transaction is adding (the advisory lock taken) is left to that one. Every 10 minutes per
    -- session: the check reads every webhook (~25 ms for 10,000), and each is created with its row.
    IF webhooks._session_due('endpoints_checked_at', 600) OR force THEN
        INSERT INTO webhooks.endpoints (webhook_id)
        SELECT w.id FROM webhooks.webhooks w
        WHERE NOT EXISTS (SELECT 1 FROM webhooks.endpoints e WHERE e.webhook_id = w.id)
          AND pg_try_advisory_xact_lock(2003, hashtext(w.id::text))
        ON CONFLICT DO NOTHING;
        DELETE FROM webhooks._wakes k
        WHERE NOT EXISTS (SELECT 1 FROM webhooks.webhooks w WHERE w.id = k.webhook_id);
    END IF;
    WITH probed AS (
        SELECT c.webhook_id, c.xmin AS version, c.work_state, c.work_horizon,
               EXISTS (SELECT 1 FROM webhooks._wakes k WHERE k.webhook_id = c.webhook_id) AS woken,
               EXISTS (SELECT 1 FROM webhooks.deliveries o  -- as in _due_webhooks
                       WHERE (o.webhook_id, o.id + 0) >= (c.webhook_id, coalesce((floors ->> c.webhook_id::text)::bigint, 0))
                         AND o.webhook_id = c.webhook_id AND o.status IN ('pending', 'leased')
                         AND o.id + 0 >= coalesce((floors ->> c.webhook_id::text)::bigint, 0)) AS busy,
               pg_snapshot_xmin(pg_current_snapshot()) AS xmin,
               pg_snapshot_xmax(pg_current_snapshot()) AS xmax
        FROM webhooks._unrested() u
        JOIN webhooks.endpoints c ON c.webhook_id = u.webhook_id
    ), moving AS (
        SELECT p.* FROM probed p
        WHERE webhooks._rest_moves(p.work_state, p.work_horizon, p.busy, p.woken, p.xmin)
    ), locked AS (
        -- The latest version, locked: moved only if it is the one the snapshot saw.
        SELECT l.webhook_id, l.xmin AS version
        FROM webhooks.endpoints l
        WHERE l.webhook_id IN (SELECT m.webhook_id FROM moving m)
        FOR NO KEY UPDATE OF l SKIP LOCKED
    ), moved AS (
        UPDATE webhooks.endpoints e
        SET work_state = webhooks._rest_next_state(p.work_state, p.work_horizon, p.busy, p.woken, p.xmin),
            work_horizon = webhooks._rest_next_horizon(p.work_state, p.work_horizon, p.busy, p.woken, p.xmin, p.xmax)
        FROM moving p
        JOIN locked k ON k.webhook_id = p.webhook_id AND k.version = p.version
        WHERE e.webhook_id = p.webhook_id
        RETURNING e.webhook_id, e.work_state, p.woken
    ), consumed AS (
        -- The wakes this statement sees, of the webhooks it opened (holding their rows, so no
        -- other call removes the same ones); a wake committed since stays for the next call.
        DELETE FROM webhooks._wakes k
        WHERE k.webhook_id IN (SELECT m.webhook_id FROM moved m WHERE m.woken)
    )
    SELECT count(*) FILTER (WHERE m.work_state = 'idle') INTO rested FROM moved m;
    RETURN rested;
END
$$;

REVOKE ALL ON FUNCTION webhooks._rest_webhooks, webhooks._open_webhooks, webhooks._unrested, webhooks._session_due,
    webhooks._rest_moves, webhooks._rest_next_state, webhooks._rest_next_horizon FROM PUBLIC;
