-- pgwebhooks: held rows. What a failing `where` filter kept for one webhook at capture
-- (032_capture_filters.sql), and release_held() to evaluate them again.

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
