-- pgwebhooks: the outbox's blocks (migration 0024). captures, events, deliveries and
-- delivery_attempts are partitioned by ranges of 2^36 ids, a block each, in two families: captures
-- and events by the capture id, deliveries and delivery_attempts by the delivery id. maintain()
-- rolls each family to a new block once its current block's first row is older than the roll
-- interval, and empties a whole block (TRUNCATE) once nothing in it is needed any more, instead of
-- deleting its rows one by one: no dead rows, no vacuum, the space back at once.
--
-- Locks, and who waits for them:
-- - A new block is created ahead (CREATE TABLE, then ATTACH PARTITION): the parent takes a SHARE
--   UPDATE EXCLUSIVE lock, which no reader or writer conflicts with; the DEFAULT partition (which
--   ATTACH checks) is locked for an instant.
-- - Rolling is setval() on the family's sequence: no lock at all. Ids drawn before it still
--   land in the old block; that is why a block is emptied only after a check under its own lock.
-- - TRUNCATE of a block locks that block only, not the parent: writers (which insert into the
--   current block) never wait for it; a claim that is reading the outbox at that moment holds the
--   block too, and the TRUNCATE waits at most 250 ms for it, or gives up and tries a minute later.
-- - An emptied block is dropped later, when DROP gets the parent's lock within 50 ms.
--
-- A block is emptied only when all of it is past the retention and finished:
-- - deliveries: none pending or leased, none created or completed within the retention;
-- - captures: none within the retention, none still to fan out, none a delivery refers to, and
--   none a cursor still has to pass (041_cursors.sql).
-- A block that keeps one such row stays, and maintain()'s DELETE pass removes its finished rows as
-- before (075_maintain.sql): a webhook paused or retrying for longer than the retention keeps its
-- work, and only its block's remains.

CREATE OR REPLACE FUNCTION webhooks._block_bits()
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 36 $$;

-- How long a block stays current: a quarter of the retention, from one hour to one day, so a
-- block is emptied at most a quarter past the retention, and a table has a handful of blocks.
CREATE OR REPLACE FUNCTION webhooks._roll_interval(retention interval)
RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT least(greatest(retention / 4, interval '1 hour'), interval '1 day') $$;

-- The two families of blocks: the main table, the table whose rows go with its rows (by the same
-- id range), and the main table's column of when a row was made. Deliveries first: their
-- captures can go only once no delivery refers to them (_empty_blocks).
CREATE OR REPLACE FUNCTION webhooks._block_families()
RETURNS TABLE (family text, child text, made_at text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ VALUES ('deliveries', 'delivery_attempts', 'created_at'), ('captures', 'events', 'occurred_at') $$;

-- The blocks of `tbl`: number (id >> 36), name, and whether it is the DEFAULT partition's (number NULL).
CREATE OR REPLACE FUNCTION webhooks._blocks(tbl text)
RETURNS TABLE (block bigint, name text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN c.relname ~ '_\d+$' THEN substring(c.relname FROM '_(\d+)$')::bigint END, c.relname::text
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = ('webhooks.' || tbl)::regclass
    ORDER BY 1 NULLS LAST
$$;

-- Creates block `block` of `tbl` if it is missing: a plain table, then attached. A lock that stays
-- busy for 50 ms (a reader of the DEFAULT partition, which ATTACH checks) raises lock_not_available.
CREATE OR REPLACE FUNCTION webhooks._create_block(tbl text, block bigint)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '50ms'
AS $$
DECLARE
    name text := tbl || '_' || block;
    lo bigint := block << webhooks._block_bits();
BEGIN
    IF to_regclass('webhooks.' || quote_ident(name)) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE webhooks.%I (LIKE webhooks.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                   'INCLUDING STORAGE)', name, tbl);
    EXECUTE format('COMMENT ON TABLE webhooks.%I IS %L', name,
                   format('Block of webhooks.%s: ids from %s (073_blocks.sql)', tbl, lo));
    -- The database's owner reads every table here, for its backups (078_restore.sql).
    EXECUTE format('GRANT SELECT ON webhooks.%I TO %I', name,
                   (SELECT pg_get_userbyid(d.datdba) FROM pg_database d WHERE d.datname = current_database()));
    EXECUTE format('ALTER TABLE webhooks.%I ATTACH PARTITION webhooks.%I FOR VALUES FROM (%s) TO (%s)',
                   tbl, name, lo, lo + (1::bigint << webhooks._block_bits()));
END
$$;

-- Rolls each family whose current block began (its first row) more than `every` ago: the two
-- blocks after it exist (created ahead), and its sequence moves to the next one's start. Returns
-- how many families rolled. A lock that stays busy for 50 ms (a reader of the DEFAULT
-- partition) leaves the roll to the next call.
CREATE OR REPLACE FUNCTION webhooks._roll_blocks(every interval)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    family record;
    last_id bigint;
    current bigint;
    first_at timestamptz;
    rolled integer := 0;
BEGIN
    FOR family IN SELECT f.family AS tbl, f.made_at AS col, ARRAY[f.family, f.child] AS tables
                  FROM webhooks._block_families() f
    LOOP
        EXECUTE format('SELECT last_value FROM webhooks.%I', family.tbl || '_id_seq') INTO last_id;
        current := last_id >> webhooks._block_bits();
        EXECUTE format('SELECT t.%I FROM webhooks.%I t WHERE t.id >= $1 AND t.id < $2 ORDER BY t.id LIMIT 1',
                       family.col, family.tbl)
            USING current << webhooks._block_bits(), current + 1 << webhooks._block_bits() INTO first_at;
        CONTINUE WHEN first_at IS NULL OR first_at > now() - every;
        BEGIN
            PERFORM webhooks._create_block(t, b)
            FROM unnest(family.tables) t, (VALUES (current + 1), (current + 2)) n (b);
        EXCEPTION WHEN lock_not_available THEN
            CONTINUE;
        END;
        -- Forward only: ids are never handed out twice.
        EXECUTE format('SELECT last_value FROM webhooks.%I', family.tbl || '_id_seq') INTO last_id;
        IF last_id < current + 1 << webhooks._block_bits() THEN
            PERFORM setval(format('webhooks.%I', family.tbl || '_id_seq'), current + 1 << webhooks._block_bits(), false);
        END IF;
        rolled := rolled + 1;
    END LOOP;
    RETURN rolled;
END
$$;

-- Whether closed block `block` of the deliveries family may be emptied: all its deliveries
-- finished, and none created or completed since `cutoff`. Cheapest first: its newest delivery (an
-- index probe), an unfinished one (the partial index), then a scan of the block, taken without a
-- lock; what can change meanwhile (a delivery whose id was drawn before the roll, landing late) is
-- checked again under the lock (_empty_blocks).
CREATE OR REPLACE FUNCTION webhooks._block_of_deliveries_done(block bigint, cutoff timestamptz,
                                                           OUT done boolean, OUT deliveries bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    name text := 'deliveries_' || block;
BEGIN
    EXECUTE format('SELECT coalesce((SELECT d.created_at < $1 FROM webhooks.%1$I d ORDER BY d.id DESC LIMIT 1), true) '
                   'AND NOT EXISTS (SELECT 1 FROM webhooks.%1$I d WHERE d.status IN (''pending'', ''leased''))', name)
        USING cutoff INTO done;
    IF done THEN
        EXECUTE format('SELECT NOT coalesce(bool_or(d.completed_at >= $1 OR d.created_at >= $1), false), count(*) '
                       'FROM webhooks.%I d', name)
            USING cutoff INTO done, deliveries;
    END IF;
END
$$;

-- Whether closed block `block` of the captures family may be emptied: every capture older than
-- `cutoff`, and nothing refers to one (_block_of_captures_unreferenced). Cheapest first, as above.
CREATE OR REPLACE FUNCTION webhooks._block_of_captures_done(block bigint, cutoff timestamptz,
                                                         OUT done boolean, OUT captures bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    name text := 'captures_' || block;
BEGIN
    EXECUTE format('SELECT coalesce((SELECT c.occurred_at < $1 FROM webhooks.%I c ORDER BY c.id DESC LIMIT 1), true)',
                   name)
        USING cutoff INTO done;
    done := done AND webhooks._block_of_captures_unreferenced(block);
    IF done THEN
        EXECUTE format('SELECT NOT coalesce(bool_or(c.occurred_at >= $1), false), count(*) FROM webhooks.%I c', name)
            USING cutoff INTO done, captures;
    END IF;
END
$$;

-- What other sessions can change about a block of captures, all index probes: a capture still to
-- fan out, a delivery that refers to one of its captures (a replay), a cursor that has yet to pass
-- one of its routed captures (041_cursors.sql).
CREATE OR REPLACE FUNCTION webhooks._block_of_captures_unreferenced(block bigint)
RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM webhooks.%1$I c WHERE c.fanned_out < c.row_count) '
                   'OR EXISTS (SELECT 1 FROM webhooks.deliveries d WHERE d.capture_id >= $1 AND d.capture_id < $2) '
                   'OR EXISTS (SELECT 1 FROM webhooks.cursors k WHERE EXISTS ('
                   '    SELECT 1 FROM webhooks.%1$I c WHERE c.route = k.route AND (c.xid, c.id) > (k.xid, k.id)))',
                   'captures_' || block)
        USING block << webhooks._block_bits(), block + 1 << webhooks._block_bits() INTO found;
    RETURN NOT found;
END
$$;

-- Empties every closed block that is done (above), and drops emptied ones when the parents' locks
-- come within 50 ms: one block a call, deliveries first (their captures go with the next call).
-- `touched` says it emptied or dropped one: it then holds their locks (the parents' too, after a
-- DROP), and its caller should commit at once. A block found not done after its scan is looked at
-- again an hour later (_block_checks), so a straggler (a webhook paused for longer than the
-- retention) costs a scan an hour, not one per call. Returns the rows removed.
CREATE OR REPLACE FUNCTION webhooks._empty_blocks(cutoff timestamptz, OUT deliveries bigint, OUT attempts bigint,
                                                  OUT captures bigint, OUT touched boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f record;
    current_id bigint; -- the family's sequence: blocks before this one's are closed
    b record;
    done boolean;
    n bigint;          -- rows of the family's main table in the block (NULL: not scanned)
    children bigint;   -- its attempts, for the deliveries family
    still_done text;   -- what is checked again under the block's locks
    emptied boolean;   -- NULL: a lock stayed busy
BEGIN
    deliveries := 0;
    attempts := 0;
    captures := 0;
    touched := false;
    DELETE FROM webhooks._block_checks k WHERE k.next_check <= now();
    FOR f IN SELECT * FROM webhooks._block_families() LOOP
        EXECUTE format('SELECT last_value FROM webhooks.%I', f.family || '_id_seq') INTO current_id;
        FOR b IN
            SELECT x.block FROM webhooks._blocks(f.family) x
            WHERE x.block < current_id >> webhooks._block_bits()
              AND NOT EXISTS (SELECT 1 FROM webhooks._block_checks k WHERE k.family = f.family AND k.block = x.block)
        LOOP
            IF f.family = 'deliveries' THEN
                SELECT v.done, v.deliveries INTO done, n FROM webhooks._block_of_deliveries_done(b.block, cutoff) v;
                still_done := format('SELECT NOT EXISTS (SELECT 1 FROM webhooks.%I d '
                                     'WHERE d.status IN (''pending'', ''leased''))', 'deliveries_' || b.block);
            ELSE
                SELECT v.done, v.captures INTO done, n FROM webhooks._block_of_captures_done(b.block, cutoff) v;
                still_done := format('SELECT webhooks._block_of_captures_unreferenced(%s)', b.block);
            END IF;
            IF NOT done THEN
                IF n IS NOT NULL THEN  -- scanned: not again before an hour
                    INSERT INTO webhooks._block_checks VALUES (f.family, b.block, now() + interval '1 hour');
                END IF;
            ELSIF n > 0 THEN
                IF f.family = 'deliveries' THEN
                    EXECUTE format('SELECT count(*) FROM webhooks.%I', 'delivery_attempts_' || b.block) INTO children;
                END IF;
                emptied := webhooks._truncate_blocks(ARRAY[f.family || '_' || b.block, f.child || '_' || b.block],
                                                     still_done);
                IF emptied AND f.family = 'deliveries' THEN
                    deliveries := n;
                    attempts := children;
                ELSIF emptied THEN
                    captures := n;
                END IF;
                touched := coalesce(emptied, false);
                -- A lock that stayed busy, or a row that landed late: looked at again a minute later.
                IF NOT touched THEN
                    PERFORM webhooks._block_busy(f.family, b.block);
                    done := false;
                END IF;
            END IF;
            IF done THEN  -- empty now: dropped if the locks come at once
                IF webhooks._drop_blocks(ARRAY[f.child || '_' || b.block, f.family || '_' || b.block]) THEN
                    touched := true;
                ELSE
                    PERFORM webhooks._block_busy(f.family, b.block);
                END IF;
            END IF;
            IF touched THEN
                RETURN;  -- one block a call: its locks must not be held through the next block's scan
            END IF;
        END LOOP;
    END LOOP;
END
$$;

-- A block whose lock stayed busy (a long transaction that wrote or read it; for a DROP, any
-- transaction on its table) is tried again a minute later, not on every call: each try makes the outbox's readers queue behind it. Meanwhile
-- the DELETE pass may take its finished rows.
CREATE OR REPLACE FUNCTION webhooks._block_busy(family text, block bigint)
RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO webhooks._block_checks VALUES (family, block, now() + interval '1 minute')
    ON CONFLICT DO NOTHING
$$;

-- TRUNCATE `blocks` (one family's tables for one block) once `still_done` (a query) holds under
-- their locks. Returns whether they were emptied, or NULL when a lock stayed busy for 250 ms: a
-- claim reads every block while it runs (tens of milliseconds), and one queued behind this
-- waits at most that long. A block found not done under the locks (a row that landed late) gives
-- its locks back at once: they would otherwise last to the end of the caller's transaction, with
-- every claim that reads the block queued behind them.
CREATE OR REPLACE FUNCTION webhooks._truncate_blocks(blocks text[], still_done text)
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '250ms'
AS $$
DECLARE
    done boolean;
    names text := (SELECT string_agg(format('webhooks.%I', t), ', ') FROM unnest(blocks) t);
BEGIN
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', names);
    EXECUTE still_done INTO done;
    IF done IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = 'WHR01';  -- rolls this function's subtransaction back, locks and all
    END IF;
    EXECUTE format('TRUNCATE %s', names);
    RETURN true;
EXCEPTION
    WHEN lock_not_available THEN
        RETURN NULL;
    WHEN SQLSTATE 'WHR01' THEN
        RETURN false;
END
$$;

-- DROP emptied `blocks` once the parents' locks come within 50 ms (and they are still empty).
CREATE OR REPLACE FUNCTION webhooks._drop_blocks(blocks text[])
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '50ms'
AS $$
DECLARE
    t text;
    rows_left boolean;
BEGIN
    FOREACH t IN ARRAY blocks LOOP
        EXECUTE format('LOCK TABLE webhooks.%I IN ACCESS EXCLUSIVE MODE', t);
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM webhooks.%I)', t) INTO rows_left;
        IF rows_left THEN
            RAISE lock_not_available;  -- a row that landed late: the DELETE pass takes it; undo the drops
        END IF;
        EXECUTE format('DROP TABLE webhooks.%I', t);
    END LOOP;
    RETURN true;
EXCEPTION WHEN lock_not_available THEN
    RETURN false;
END
$$;

REVOKE ALL ON FUNCTION webhooks._block_bits, webhooks._roll_interval, webhooks._block_families, webhooks._blocks, webhooks._create_block,
    webhooks._roll_blocks, webhooks._block_of_deliveries_done, webhooks._block_of_captures_done,
    webhooks._block_of_captures_unreferenced, webhooks._empty_blocks, webhooks._block_busy, webhooks._truncate_blocks,
    webhooks._drop_blocks FROM PUBLIC;

COMMENT ON FUNCTION webhooks._roll_blocks IS
    'Moves each outbox family whose current block began more than `every` ago to a new block (maintain()).';
COMMENT ON FUNCTION webhooks._empty_blocks IS
    'Empties (TRUNCATE) every closed outbox block past the retention with nothing left to do, and drops emptied ones (maintain()).';
