-- pgwebhooks: webhooks at rest. A webhook without unfinished (pending or leased) deliveries
-- comes to rest ('idle' in its endpoints row), and claim(), next_due_in() and the open floors
-- look only at the others, so their cost follows the webhooks with work, not all webhooks
-- (10,000 idle webhooks made each claim(200) three times slower, migration 0020).
--
-- Deliveries only ever become unfinished by being inserted (every other change of status starts
-- from 'leased'). Each INSERT into `deliveries` sets its webhooks 'open' (_open_webhooks). The
-- hard part is the other way: a claim that sees no unfinished delivery cannot just set 'idle',
-- because a transaction inserting one may have read the row as 'open' (so changed nothing) and
-- not have committed yet. So rest takes three steps, each in a later statement than the one
-- before (_rest_webhooks, called by claim() at most every 100 ms):
--
--   1. 'open' -> 'emptied', when this statement sees no unfinished delivery;
--   2. 'emptied' -> its horizon H, the xmax of a snapshot that sees step 1 committed: every
--      transaction that read the row before step 1 committed and inserted deliveries had its
--      transaction id by then (the insert comes first), so its id is below H;
--   3. 'emptied' with H -> 'idle', once H <= the snapshot's xmin (every transaction below H has
--      ended, so their deliveries are visible here) and still none is unfinished.
--
-- A transaction that reads the row after step 1 committed sees it not 'open' and sets it 'open'
-- again: an UPDATE, so it and step 3 cannot both win (the later re-reads the row). A webhook
-- with unfinished deliveries at any step goes back to 'open'. The cost of a mistake the other way
-- (a webhook left 'open' with nothing to do) is one probe per claim.

-- After an INSERT into deliveries: its webhooks may have work. One statement per insert
-- statement (fan-out inserts hundreds of rows at a time), and a row is written only when its
-- webhook was not 'open' already.
CREATE OR REPLACE FUNCTION webhooks._open_webhooks()
RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE webhooks.endpoints e
    SET work_state = 'open', work_horizon = NULL
    WHERE e.webhook_id IN (SELECT DISTINCT n.webhook_id FROM new_deliveries n)
      AND e.work_state <> 'open';
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER deliveries_open_webhooks AFTER INSERT ON webhooks.deliveries
    REFERENCING NEW TABLE AS new_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks._open_webhooks();

-- Steps 1-3 above for every webhook not at rest, and back to 'open' for any with work; at most
-- every 100 ms per session unless `force` (claim() and next_due_in() call it on every call). A
-- row another transaction holds, or one changed since this statement's snapshot, is left for
-- the next call: each step must see the state it moves from in its own snapshot. `floors` are
-- the session's open floors (027_open_floors.sql): the probe starts there. Also adds an
-- endpoints row a webhook lacks (see _add_endpoint). Returns how many webhooks came to rest.
-- Its plans are generic: a custom plan (made per call for `floors`) cost 0.5 ms more with 2,000
-- webhooks, the planner weighing each one's statistics, for the same plan.
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
       OR NOT force AND clock_timestamp() < coalesce(nullif(current_setting('pgwebhooks.rested_at', true), ''),
                                                   '-infinity')::timestamptz + interval '100 milliseconds' THEN
        RETURN 0;
    END IF;
    PERFORM set_config('pgwebhooks.rested_at', clock_timestamp()::text, false);
    -- Should a webhook lack its endpoints row, add it without ever waiting: one another
    -- transaction is adding (the advisory lock taken) is left to that one. Every 10 minutes per
    -- session: the check reads every webhook (~25 ms for 10,000), and each is created with its row.
    IF force OR clock_timestamp() > coalesce(nullif(current_setting('pgwebhooks.endpoints_checked_at', true), ''),
                                             '-infinity')::timestamptz + interval '10 minutes' THEN
        PERFORM set_config('pgwebhooks.endpoints_checked_at', clock_timestamp()::text, false);
        INSERT INTO webhooks.endpoints (webhook_id)
        SELECT w.id FROM webhooks.webhooks w
        WHERE NOT EXISTS (SELECT 1 FROM webhooks.endpoints e WHERE e.webhook_id = w.id)
          AND pg_try_advisory_xact_lock(2003, hashtext(w.id::text))
        ON CONFLICT DO NOTHING;
    END IF;
    WITH probed AS (
        SELECT c.webhook_id, c.xmin AS version, c.work_state, c.work_horizon,
               EXISTS (SELECT 1 FROM webhooks.deliveries o  -- as in _due_webhooks
                       WHERE (o.webhook_id, o.id + 0) >= (c.webhook_id, coalesce((floors ->> c.webhook_id::text)::bigint, 0))
                         AND o.webhook_id = c.webhook_id AND o.status IN ('pending', 'leased')
                         AND o.id + 0 >= coalesce((floors ->> c.webhook_id::text)::bigint, 0)) AS busy,
               pg_snapshot_xmin(pg_current_snapshot()) AS xmin,
               pg_snapshot_xmax(pg_current_snapshot()) AS xmax
        FROM webhooks.endpoints c
        WHERE c.work_state <> 'idle'
    ), moving AS (
        SELECT p.* FROM probed p
        WHERE CASE WHEN p.busy THEN p.work_state <> 'open'
                   ELSE p.work_state = 'open' OR p.work_horizon IS NULL OR p.work_horizon <= p.xmin END
    ), locked AS (
        -- The latest version, locked: moved only if it is the one the snapshot saw.
        SELECT l.webhook_id, l.xmin AS version
        FROM webhooks.endpoints l
        WHERE l.webhook_id IN (SELECT m.webhook_id FROM moving m)
        FOR NO KEY UPDATE OF l SKIP LOCKED
    ), moved AS (
        UPDATE webhooks.endpoints e
        SET work_state = CASE WHEN p.busy THEN 'open'
                              WHEN p.work_state = 'emptied' AND p.work_horizon <= p.xmin THEN 'idle'
                              ELSE 'emptied' END,
            work_horizon = CASE WHEN p.busy OR p.work_state = 'open' OR p.work_horizon <= p.xmin THEN NULL
                                WHEN p.work_horizon IS NULL THEN p.xmax
                                ELSE p.work_horizon END
        FROM moving p
        JOIN locked k ON k.webhook_id = p.webhook_id AND k.version = p.version
        WHERE e.webhook_id = p.webhook_id
        RETURNING e.work_state
    )
    SELECT count(*) FILTER (WHERE m.work_state = 'idle') INTO rested FROM moved m;
    RETURN rested;
END
$$;

REVOKE ALL ON FUNCTION webhooks._rest_webhooks, webhooks._open_webhooks FROM PUBLIC;
