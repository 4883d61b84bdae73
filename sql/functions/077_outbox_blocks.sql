-- pgwebhooks: the outbox's blocks as an operator sees them (073_blocks.sql): which exist, how big
-- each is, and, for a closed block maintain() cannot empty yet, which webhooks still have work in
-- it. That answers "why does the outbox not shrink?": most often a webhook paused (or failing) for
-- longer than the retention, whose unsent work keeps its block until it is sent (and then for
-- one more retention, as any finished work) or the webhook is deleted.
--
-- Every figure is an index probe or the catalog's, never a scan of a block: `rows_estimate` is
-- the planner's, as of the block's last ANALYZE. `held_by` is asked only of a closed block whose
-- last row is past the retention (a younger one is kept by the retention itself), one probe per
-- webhook: 7 ms for 20 webhooks beside a paused one's backlog of 1,000,000 (it read all of it,
-- 0.3 s and more, as one DISTINCT).

CREATE OR REPLACE FUNCTION webhooks.get_outbox_blocks()
RETURNS TABLE (family text, block bigint, first_id bigint, state text, rows_estimate bigint, bytes bigint,
               first_at timestamptz, last_at timestamptz, held_by uuid[], next_check timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    f record;
    b record;
    current_block bigint;
    cutoff timestamptz := now() - webhooks.retention();
BEGIN
    FOR f IN SELECT x.family AS main, x.child, x.made_at FROM webhooks._block_families() x LOOP
        EXECUTE format('SELECT last_value FROM webhooks.%I', f.main || '_id_seq') INTO current_block;
        current_block := current_block >> webhooks._block_bits();
        FOR b IN SELECT x.block, x.name FROM webhooks._blocks(f.main) x LOOP
            family := f.main;
            block := b.block;
            first_id := b.block << webhooks._block_bits();
            state := CASE WHEN b.block IS NULL THEN 'default'
                          WHEN b.block < current_block THEN 'closed'
                          WHEN b.block = current_block THEN 'current'
                          ELSE 'ahead' END;
            held_by := NULL;
            BEGIN  -- maintain() may drop a block listed at this call's start: it is left out
                SELECT greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid)
                       + coalesce(pg_total_relation_size(to_regclass(
                             format('webhooks.%I', f.child || substring(b.name FROM '_[^_]+$')))), 0)
                INTO STRICT rows_estimate, bytes
                FROM pg_class c WHERE c.oid = to_regclass(format('webhooks.%I', b.name));
                EXECUTE format('SELECT t.%I FROM webhooks.%I t ORDER BY t.id LIMIT 1', f.made_at, b.name)
                    INTO first_at;
                EXECUTE format('SELECT t.%I FROM webhooks.%I t ORDER BY t.id DESC LIMIT 1', f.made_at, b.name)
                    INTO last_at;
                -- Only past the retention is a block kept by anyone but the retention itself. One
                -- probe per webhook, each stopping at its first row: unsent deliveries are read in
                -- the order of deliveries_webhook_open (0018), the one index a planner cannot
                -- swap for a scan of a paused webhook's whole backlog. At worst a webhook's
                -- backlog that refers to other blocks' captures is read.
                IF state <> 'closed' OR last_at IS NULL OR last_at >= cutoff THEN
                    NULL;
                ELSIF f.main = 'deliveries' THEN
                    EXECUTE format('SELECT array_agg(w.id ORDER BY w.id) FROM webhooks.webhooks w WHERE ('
                                   '    SELECT true FROM webhooks.%I d'
                                   '    WHERE d.webhook_id = w.id AND d.status IN (''pending'', ''leased'')'
                                   '    ORDER BY d.webhook_id, d.id + 0 LIMIT 1)', b.name)
                        INTO held_by;
                ELSE
                    -- What _block_of_captures_unreferenced asks, by webhook: a cursor that has yet
                    -- to pass one of its changes, a change still to fan out, a delivery still to send.
                    EXECUTE format(
                        'SELECT array_agg(w.id ORDER BY w.id) FROM webhooks.webhooks w '
                        'WHERE (SELECT true FROM webhooks.cursors k WHERE k.webhook_id = w.id AND ('
                        '           SELECT true FROM webhooks.%1$I c'
                        '           WHERE c.route = k.route AND (c.xid, c.id) > (k.xid, k.id) LIMIT 1) LIMIT 1)'
                        '   OR (SELECT true FROM webhooks.%1$I c WHERE c.fanned_out < c.row_count'
                        '       AND w.id = ANY (c.webhook_ids) LIMIT 1)'
                        '   OR (SELECT true FROM webhooks.deliveries d WHERE d.webhook_id = w.id'
                        '       AND d.status IN (''pending'', ''leased'') AND d.capture_id >= $1 AND d.capture_id < $2'
                        '       ORDER BY d.webhook_id, d.id + 0 LIMIT 1)',
                        b.name)
                        USING first_id, first_id + (1::bigint << webhooks._block_bits())
                        INTO held_by;
                END IF;
            EXCEPTION WHEN undefined_table OR no_data_found THEN
                CONTINUE;
            END;
            next_check := (SELECT k.next_check FROM webhooks._block_checks k
                           WHERE k.family = f.main AND k.block = b.block AND k.next_check > now());
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;

CREATE OR REPLACE VIEW webhooks.outbox_blocks AS
SELECT * FROM webhooks.get_outbox_blocks();

-- The same for the runner's /metrics (metrics.py), which alerts are built on: the outbox's size
-- and, per webhook, how many blocks past the retention its unsent work keeps. webhooks_runner
-- reads no table; this window shows it block counts and webhook ids, as runner_backlog does.
CREATE OR REPLACE FUNCTION webhooks.runner_outbox()
RETURNS TABLE (webhook_id uuid, bytes bigint, blocks integer, kept_blocks integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    -- One row with webhook_id NULL for the whole outbox, then one per webhook that keeps blocks.
    WITH b AS (SELECT * FROM webhooks.get_outbox_blocks())
    SELECT NULL::uuid, sum(b.bytes)::bigint, count(*)::integer, count(b.held_by)::integer FROM b
    UNION ALL
    SELECT h.webhook_id, NULL, NULL, count(*)::integer FROM b, unnest(b.held_by) h (webhook_id) GROUP BY h.webhook_id
$$;

REVOKE ALL ON FUNCTION webhooks.get_outbox_blocks, webhooks.runner_outbox FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhooks.get_outbox_blocks TO webhooks_admin, webhooks_viewer;
GRANT EXECUTE ON FUNCTION webhooks.runner_outbox TO webhooks_admin, webhooks_viewer, webhooks_runner;

COMMENT ON FUNCTION webhooks.get_outbox_blocks IS
    'The outbox''s blocks (ranges of 2^36 ids that maintain() empties whole): family (deliveries or captures), state (ahead, current, closed, default), size, first and last rows'' times, and for a closed block past the retention the webhooks whose unsent work keeps it (held_by) and when maintain() looks at it again (next_check). For webhooks_admin and webhooks_viewer.';
COMMENT ON VIEW webhooks.outbox_blocks IS
    'The outbox''s blocks, one row each (get_outbox_blocks): a closed block with held_by set is kept for those webhooks (paused or failing); resume or delete them to free it.';
COMMENT ON FUNCTION webhooks.runner_outbox IS
    'For the runner''s /metrics: the outbox''s bytes, blocks and blocks kept past the retention (the row with webhook_id NULL), and per webhook the blocks its unsent work keeps (outbox_blocks.held_by). For webhooks_runner, webhooks_admin and webhooks_viewer.';
