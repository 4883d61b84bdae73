-- pgwebhooks: each webhook's open floor, the id below which all of its deliveries are finished
-- (delivered or failed, which is final) and below which none will ever be created.
--
-- Why: a finished delivery leaves an entry in `deliveries_webhook_due` for each version it had
-- (pending, then leased). Vacuum removes them once no snapshot can see those versions; a session
-- idle in a transaction that holds an old snapshot stops that, and every scan of the index in time
-- order then steps over all of them (a drained webhook: 50,000 deliveries cost claim() ~4x its
-- time). claim() and next_due_in() first look in `deliveries_webhook_open`, in id order from the
-- floor, for any unfinished delivery; a webhook without one is not scanned in time order at all.
--
-- Why the floor is safe. Ids come from a sequence (cache 1) as rows are inserted, so a committed
-- snapshot can show a delivery whose id is below ones already visible: its transaction took the
-- id first and committed later. A floor is therefore raised in two steps: record the sequence's
-- last value L, then (in a later statement, so with a later snapshot) the snapshot's xmax X.
-- Every transaction that took an id <= L had its transaction id before it took the id (every
-- path that creates deliveries writes or locks a row first: _fan_out locks the capture, send_test
-- inserts the capture, replay and replay_failed lock it), so below X. Once a later snapshot's xmin
-- has passed X, all of them have ended: every id <= L is visible or will never be, and the floor
-- may rise to the lowest unfinished id at or below L (or L + 1). A transaction that keeps its id
-- open only delays the floor; one that holds a snapshot and writes nothing does not.
--
-- The floors and the pending (L, X) are kept per session in `pgwebhooks.open_floors`, signed with
-- the session's identity token (025_event_ids.sql), so a value set by hand is ignored: a floor
-- that is too high would hide work. A session starts with no floor (0), as before. Only a
-- READ COMMITTED transaction raises them: a longer-lived snapshot could miss rows committed after
-- it was taken.
CREATE OR REPLACE FUNCTION webhooks._open_floors()
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    raw text := current_setting('pgwebhooks.open_floors', true);
    token text := webhooks._identity_token();
    state jsonb;
    floors jsonb;
    seen bigint;
    horizon xid8;
BEGIN
    IF token IS NULL THEN
        RETURN '{}';
    END IF;
    IF raw IS NOT NULL AND md5(token || substr(raw, 34)) = left(raw, 32) THEN
        state := substr(raw, 34)::jsonb;
    END IF;
    floors := coalesce(state -> 'f', '{}');
    IF current_setting('transaction_isolation') <> 'read committed'
       OR clock_timestamp() < (state ->> 't')::timestamptz + interval '100 milliseconds' THEN
        RETURN floors;
    END IF;
    IF (state ->> 'x')::xid8 <= pg_snapshot_xmin(pg_current_snapshot()) THEN
        seen := (state ->> 'l')::bigint;
        SELECT coalesce(jsonb_object_agg(w.id, least(seen + 1, (
                   SELECT o.id
                   FROM webhooks.deliveries o  -- in `deliveries_webhook_open`: see _due_webhooks
                   WHERE (o.webhook_id, o.id + 0) >= (w.id, coalesce((floors ->> w.id::text)::bigint, 0))
                     AND o.webhook_id = w.id AND o.status IN ('pending', 'leased')
                     AND o.id + 0 >= coalesce((floors ->> w.id::text)::bigint, 0)
                   ORDER BY o.webhook_id, o.id + 0 LIMIT 1))), '{}')
        INTO floors
        FROM webhooks.webhooks w;
    ELSIF state ? 'x' THEN
        RETURN floors;  -- a transaction that may still commit an id <= L is running
    END IF;
    -- A sequence that hands out ids from per-session caches breaks the order argued above.
    IF (SELECT s.seqcache FROM pg_sequence s WHERE s.seqrelid = 'webhooks.deliveries_id_seq'::regclass) = 1 THEN
        SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END INTO seen
        FROM webhooks.deliveries_id_seq s;
        SELECT pg_snapshot_xmax(pg_current_snapshot()) INTO horizon;
        state := jsonb_build_object('f', floors, 'l', seen, 'x', horizon::text, 't', clock_timestamp());
    ELSE
        floors := '{}';
        state := jsonb_build_object('f', floors, 't', clock_timestamp());
    END IF;
    PERFORM set_config('pgwebhooks.open_floors', md5(token || state::text) || '|' || state::text, false);
    RETURN floors;
END
$$;

COMMENT ON FUNCTION webhooks._open_floors IS
    'Per webhook, the id below which all its deliveries are finished (this session''s, raised when safe).';
