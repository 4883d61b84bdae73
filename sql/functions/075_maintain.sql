-- pgwebhooks: bounded tables by default. maintain() removes finished work older than the
-- installation's retention (set_retention), a bounded batch at a time under a time budget, so
-- the runner can call it on a timer (and pg_cron may too) without holding locks for long.
--
-- What it removes: delivered and failed deliveries completed before now() - retention, with
-- their attempts; then captures older than that which are fully fanned out and that no delivery
-- references any more, with their events. What it never removes: pending or leased deliveries,
-- a capture still to fan out or still needed by any delivery (a pending replay included), held
-- rows. Both kinds of rows are walked in windows of ids, from the oldest up to a bound found by
-- bisection, each call going on where the last one stopped (_maintain_cursor), so a pass costs
-- what it walks once and a stretch of rows kept cannot starve what lies beyond it; a window of
-- ids (rather than "the next N that qualify") keeps every step an index range scan whatever the
-- planner guesses about how many rows qualify.

-- The window helpers took a batch size before purge() shared them (never in a release).
DROP FUNCTION IF EXISTS webhooks._maintain_deliveries(timestamptz, bigint, bigint, integer);
DROP FUNCTION IF EXISTS webhooks._maintain_captures(timestamptz, bigint, bigint, integer);

-- The range of ids of `tbl` (deliveries or captures) to walk: from its first id to the first
-- whose `col` is at or after `cutoff`, found by bisection over the primary key: ids grow with
-- time, so everything older lies below it. A row that committed out of order (a long
-- transaction) may lie above it; a later call, with a later cutoff, takes it. NULLs when the
-- table is empty.
CREATE OR REPLACE FUNCTION webhooks._maintain_bound(tbl regclass, col name, cutoff timestamptz,
                                                    OUT first_id bigint, OUT below_id bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    lo bigint;
    hi bigint;
    mid bigint;
    found_id bigint;
    found_at timestamptz;
    probe text := format('SELECT t.id, t.%I FROM %s t WHERE t.id >= $1 ORDER BY t.id LIMIT 1', col, tbl);
BEGIN
    EXECUTE format('SELECT min(t.id), max(t.id) + 1 FROM %s t', tbl) INTO lo, hi;
    IF lo IS NULL THEN
        RETURN;
    END IF;
    first_id := lo;
    -- Invariant: every row below `lo` is older than cutoff; the row at `hi` (or the end) is not.
    -- 64 rounds halve any bigint range to one id.
    FOR round IN 1..64 LOOP
        EXIT WHEN lo >= hi;
        mid := lo + (hi - lo) / 2;
        EXECUTE probe INTO found_id, found_at USING mid;
        IF found_id IS NULL OR found_id >= hi THEN
            hi := mid;
        ELSIF found_at < cutoff THEN
            lo := found_id + 1;
        ELSE
            hi := found_id;
        END IF;
    END LOOP;
    below_id := hi;
END
$$;

-- The first id of `tbl` from `from_id` on, or `below_id` if there is none below it: windows step
-- over the gaps between blocks (073_blocks.sql) instead of walking them.
CREATE OR REPLACE FUNCTION webhooks._maintain_next_id(tbl regclass, from_id bigint, below_id bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_id bigint;
BEGIN
    EXECUTE format('SELECT t.id FROM %s t WHERE t.id >= $1 AND t.id < $2 ORDER BY t.id LIMIT 1', tbl)
        INTO found_id USING from_id, below_id;
    RETURN coalesce(found_id, below_id);
END
$$;

-- The finished deliveries completed before `cutoff` among ids from_id .. below_id - 1, and their
-- attempts (maintain() takes a window at a time, purge() everything). A finished delivery changes no more (replay_failed() only marks it), so nothing
-- else waits for these row locks.
CREATE OR REPLACE FUNCTION webhooks._maintain_deliveries(cutoff timestamptz, from_id bigint, below_id bigint)
RETURNS TABLE (deliveries bigint, attempts bigint)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (
        DELETE FROM webhooks.deliveries d
        WHERE d.id >= from_id AND d.id < below_id
          AND d.status IN ('delivered', 'failed') AND d.completed_at < cutoff
        RETURNING d.id
    ), gone_attempts AS (
        DELETE FROM webhooks.delivery_attempts a USING gone g WHERE a.delivery_id = g.id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM gone_attempts)
$$;

-- The fanned-out captures older than `cutoff` that no delivery needs, among ids from_id ..
-- below_id - 1, and their events. Two statements, as in purge(): the second sees every replay that committed
-- before the first locked its capture; a replay holds the capture (FOR KEY SHARE) until it
-- commits, and one that comes later finds the capture gone and refuses. Returns how many went.
CREATE OR REPLACE FUNCTION webhooks._maintain_captures(cutoff timestamptz, from_id bigint, below_id bigint,
                                                       OUT captures bigint)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    candidates bigint[];
BEGIN
    SELECT array_agg(x.id ORDER BY x.id) INTO candidates
    FROM (SELECT c.id FROM webhooks.captures c
          WHERE c.id >= from_id AND c.id < below_id
            AND c.occurred_at < cutoff AND c.fanned_out = c.row_count
            AND NOT EXISTS (SELECT 1 FROM webhooks.deliveries d WHERE d.capture_id = c.id)
            -- A published event stays until every cursor of its route has passed it (041_cursors.sql).
            AND (c.route IS NULL OR NOT EXISTS (SELECT 1 FROM webhooks.cursors k
                                                WHERE k.route = c.route AND (k.xid, k.id) < (c.xid, c.id)))
          FOR UPDATE SKIP LOCKED) x;
    WITH unneeded AS (
        DELETE FROM webhooks.captures c
        WHERE c.id = ANY (coalesce(candidates, '{}'))
          AND NOT EXISTS (SELECT 1 FROM webhooks.deliveries d WHERE d.capture_id = c.id)
        RETURNING c.id, c.record IS NULL AS images_apart
    ), events AS (
        -- A capture holding its row's image inline (every one-row change, in every release) has
        -- no events rows to look for.
        DELETE FROM webhooks.events e USING unneeded u WHERE e.capture_id = u.id AND u.images_apart
    )
    SELECT count(*) INTO captures FROM unneeded;
END
$$;

-- Whole blocks go first (073_blocks.sql): what they take, the DELETE pass need not. A call that
-- emptied or dropped a block returns at once: its locks (a DROP's on the parent, which every
-- writer needs) go with its commit, not held through the DELETE pass. Only a call that is its own
-- transaction (the runner's, pg_cron's) touches blocks: one inside a longer transaction would
-- hold those locks for as long as it stays open, so it deletes row by row. "Its own": the
-- statement began with the transaction, give or take the few microseconds between a prepared
-- statement's protocol messages (psycopg prepares a query it has run 5 times).
CREATE OR REPLACE FUNCTION webhooks.maintain(time_budget interval DEFAULT interval '0.5 seconds',
                                             batch_size integer DEFAULT 5000)
RETURNS TABLE (deliveries bigint, attempts bigint, captures bigint, more boolean, busy boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz;
    deadline timestamptz;
    saved webhooks._maintain_cursor;
    range record;
    next_id bigint;
    deliveries_done bigint;
    step record;
    gone_deliveries bigint := 0;
    gone_attempts bigint := 0;
    gone_captures bigint := 0;
    emptied boolean;
BEGIN
    IF time_budget IS NULL OR time_budget < interval '1 millisecond' OR time_budget > interval '1 hour' THEN
        PERFORM webhooks._fail('WH056', 'time_budget', format('%s is out of range; expected 1 millisecond to '
            '1 hour, like ''0.5 seconds''', coalesce(quote_literal(time_budget::text), 'null')));
    END IF;
    PERFORM webhooks._check_range('batch_size', batch_size, 1, 100000);
    PERFORM webhooks._check_read_committed('maintain()');
    -- One at a time: a second caller (another runner, pg_cron) leaves at once.
    IF NOT pg_try_advisory_xact_lock(2016, 0) THEN
        RETURN QUERY SELECT 0::bigint, 0::bigint, 0::bigint, true, true;
        RETURN;
    END IF;
    cutoff := now() - (SELECT i.retention FROM webhooks._installation i);
    deadline := clock_timestamp() + time_budget;
    SELECT * INTO saved FROM webhooks._maintain_cursor;

    -- Whole blocks first, only as its own transaction (above).
    IF statement_timestamp() - transaction_timestamp() < interval '5 milliseconds' THEN
        PERFORM webhooks._roll_blocks(webhooks._roll_interval(now() - cutoff));
        SELECT e.deliveries, e.attempts, e.captures, e.touched
        INTO gone_deliveries, gone_attempts, gone_captures, emptied
        FROM webhooks._empty_blocks(cutoff) e;
        IF emptied THEN
            RETURN QUERY SELECT gone_deliveries, gone_attempts, gone_captures, true, false;
            RETURN;
        END IF;
    END IF;

    -- Deliveries first: the captures they free go in the same pass. Every call takes at least
    -- one window, however small its budget, so each makes progress.
    range := webhooks._maintain_bound('webhooks.deliveries', 'created_at', cutoff);
    next_id := greatest(range.first_id, saved.deliveries_from);
    WHILE next_id < range.below_id LOOP
        SELECT * INTO step
        FROM webhooks._maintain_deliveries(cutoff, next_id, least(next_id + batch_size, range.below_id));
        next_id := webhooks._maintain_next_id('webhooks.deliveries', next_id + batch_size, range.below_id);
        gone_deliveries := gone_deliveries + step.deliveries;
        gone_attempts := gone_attempts + step.attempts;
        IF clock_timestamp() >= deadline AND next_id < range.below_id THEN
            UPDATE webhooks._maintain_cursor SET deliveries_from = next_id;
            RETURN QUERY SELECT gone_deliveries, gone_attempts, gone_captures, true, false;
            RETURN;
        END IF;
    END LOOP;
    -- While this pass finishes the captures, later calls only take deliveries newer than this.
    deliveries_done := greatest(next_id, range.below_id);

    range := webhooks._maintain_bound('webhooks.captures', 'occurred_at', cutoff);
    next_id := greatest(range.first_id, saved.captures_from);
    WHILE next_id < range.below_id LOOP
        gone_captures := gone_captures
            + webhooks._maintain_captures(cutoff, next_id, least(next_id + batch_size, range.below_id));
        next_id := webhooks._maintain_next_id('webhooks.captures', next_id + batch_size, range.below_id);
        IF clock_timestamp() >= deadline AND next_id < range.below_id THEN
            UPDATE webhooks._maintain_cursor SET deliveries_from = deliveries_done, captures_from = next_id;
            RETURN QUERY SELECT gone_deliveries, gone_attempts, gone_captures, true, false;
            RETURN;
        END IF;
    END LOOP;
    -- The pass is complete: the next one starts from the oldest rows again.
    UPDATE webhooks._maintain_cursor SET deliveries_from = NULL, captures_from = NULL
    WHERE deliveries_from IS NOT NULL OR captures_from IS NOT NULL;
    RETURN QUERY SELECT gone_deliveries, gone_attempts, gone_captures, false, false;
END
$$;

-- The installation's retention: how long maintain() keeps finished work. Returns the setting.
CREATE OR REPLACE FUNCTION webhooks.set_retention(retention interval)
RETURNS interval
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webhooks._check_retention(retention);
    UPDATE webhooks._installation SET retention = set_retention.retention;
    RETURN retention;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.retention()
RETURNS interval
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT i.retention FROM webhooks._installation i
$$;

REVOKE ALL ON FUNCTION webhooks.maintain, webhooks.set_retention, webhooks.retention, webhooks._maintain_bound, webhooks._maintain_next_id,
    webhooks._maintain_deliveries, webhooks._maintain_captures FROM PUBLIC;
-- The runner calls maintain() on a timer (--maintain-interval); it may read the retention, not change it.
GRANT EXECUTE ON FUNCTION webhooks.maintain, webhooks.retention TO webhooks_admin, webhooks_runner;
GRANT EXECUTE ON FUNCTION webhooks.set_retention TO webhooks_admin;

COMMENT ON FUNCTION webhooks.maintain IS
    'Remove finished deliveries, their attempts and captures no delivery needs, older than the retention, in batches for at most time_budget; never pending, leased or held work. Returns the counts, whether more remains, and busy when another maintain() was running.';

COMMENT ON FUNCTION webhooks.set_retention IS
    'Set how long maintain() keeps finished work (0 to 100 years; default 7 days). Returns the setting.';

COMMENT ON FUNCTION webhooks.retention IS
    'How long maintain() keeps finished work (see set_retention).';
