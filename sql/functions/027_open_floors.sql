-- pgwebhooks: open floors, ids below which all work is known to be done: per webhook, the id
-- below which all of its deliveries are finished (delivered or failed, which is final), and the
-- capture id below which every capture is fanned out; below either, no new row will ever appear.
--
-- Why: a finished delivery leaves an entry in `deliveries_webhook_due` for each version it had
-- (pending, then leased), a fanned-out capture one in `captures_fan_out_pending`. Vacuum removes
-- them once no snapshot can see those versions; a session idle in a transaction that holds an
-- old snapshot stops that, and every scan of those indexes from their start then steps over all
-- of them (a drained 50,000-delivery webhook cost claim() ~4x its time). claim() and next_due_in()
-- look for captures to fan out from the capture floor, and first ask `deliveries_webhook_open`,
-- in id order from the webhook's floor, whether it has any unfinished delivery: one without is
-- not scanned in time order at all.
--
-- Why a floor is safe. Ids come from sequences (cache 1) as rows are inserted, so a snapshot can
-- show a row whose id is below ones already visible: its transaction took the id first and
-- committed later. A floor is therefore raised in two steps: record the sequences' last values
-- L, then (in a later statement, so with a later snapshot) the snapshot's xmax X. Every
-- transaction that took an id <= L had its transaction id before it took the id, so below X:
-- every path that creates rows here writes or locks a row first (the capture triggers fire after
-- the watched rows changed; _fan_out, replay and replay_failed lock the capture, release_held
-- the held rows; publish and send_test ask for their transaction id first). Once a later snapshot's
-- xmin has passed X, all of them have ended: every id <= L is visible or will never be, and a
-- floor may rise to the lowest unfinished id at or below L (or L + 1). A transaction that keeps
-- its id open only delays the floors; one that holds a snapshot and writes nothing does not.
--
-- The floors and the pending (L, X) are kept per session in `pgwebhooks.open_floors`, signed with
-- the session's identity token (025_event_ids.sql), so a value set by hand is ignored: a floor
-- that is too high would hide work. A session starts with no floors (0), as before. They rise
-- at most every 100 ms (each rise probes every webhook not at rest once, see
-- 044_resting_webhooks.sql: one at rest has no floor, nor needs one), and only in a READ COMMITTED
-- transaction: a longer-lived snapshot could miss rows committed after it was taken.

-- Raise this session's floors when that is safe (see above); returns them: {"captures": id,
-- "<webhook id>": id, ...}, a missing one being 0. Generic plans, as _rest_webhooks.
CREATE OR REPLACE FUNCTION webhooks._open_floors()
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    raw text := current_setting('pgwebhooks.open_floors', true);
    token text;
    state jsonb;
    floors jsonb;
    last_delivery bigint;
    last_capture bigint;
    sequences text;
    horizon xid8;
BEGIN
    -- One statement: every call of claim() and next_due_in() pays for this one.
    SELECT md5(k.key || '/' || pg_backend_pid()),  -- as _identity_token
           CASE WHEN d.is_called THEN d.last_value ELSE d.last_value - 1 END,
           CASE WHEN c.is_called THEN c.last_value ELSE c.last_value - 1 END,
           concat_ws('/', 'webhooks.deliveries_id_seq'::regclass::oid, 'webhooks.captures_id_seq'::regclass::oid)
    INTO token, last_delivery, last_capture, sequences
    FROM webhooks._identity_key k, webhooks.deliveries_id_seq d, webhooks.captures_id_seq c;
    IF token IS NULL THEN
        RETURN '{}';
    END IF;
    IF md5(token || substr(raw, 34)) = left(raw, 32) THEN
        state := substr(raw, 34)::jsonb;
    END IF;
    -- Floors hold only for the sequences they were raised by: one set back or made anew (a
    -- restore, a reinstall) drops them. So does age: every minute they start again from 0, so that
    -- a row that appeared below one by a path the argument above does not cover (explicit ids: a
    -- data-only restore into a live database) waits at most that long.
    IF state ->> 's' IS DISTINCT FROM sequences OR last_delivery < (state ->> 'l')::bigint
       OR last_capture < (state ->> 'c')::bigint
       OR clock_timestamp() > (state ->> 'b')::timestamptz + interval '1 minute' THEN
        state := NULL;
        PERFORM set_config('pgwebhooks.open_floors', '', false);
    END IF;
    floors := coalesce(state -> 'f', '{}');
    IF current_setting('transaction_isolation') <> 'read committed'
       OR clock_timestamp() < (state ->> 't')::timestamptz + interval '100 milliseconds' THEN
        RETURN floors;
    END IF;
    IF (state ->> 'x')::xid8 <= pg_snapshot_xmin(pg_current_snapshot()) THEN
        SELECT coalesce(jsonb_object_agg(w.id, least((state ->> 'l')::bigint + 1, (
                   SELECT o.id
                   FROM webhooks.deliveries o  -- in `deliveries_webhook_open`: see _due_webhooks
                   WHERE (o.webhook_id, o.id + 0) >= (w.id, coalesce((floors ->> w.id::text)::bigint, 0))
                     AND o.webhook_id = w.id AND o.status IN ('pending', 'leased')
                     AND o.id + 0 >= coalesce((floors ->> w.id::text)::bigint, 0)
                   ORDER BY o.webhook_id, o.id + 0 LIMIT 1))), '{}')
               || jsonb_build_object('captures', least((state ->> 'c')::bigint + 1, (
                   SELECT c.id FROM webhooks.captures c
                   WHERE c.fanned_out < c.row_count AND c.id >= coalesce((floors ->> 'captures')::bigint, 0)
                   ORDER BY c.id LIMIT 1)))
        INTO floors
        FROM (SELECT u.webhook_id AS id FROM webhooks._unrested() u) w;
    ELSIF state ? 'x' THEN
        RETURN floors;  -- a transaction that may still commit an id <= L is running
    END IF;
    -- L was read above, X is read now, in a later statement. A sequence that hands out ids from
    -- per-session caches breaks the order argued above: no floors then.
    IF (SELECT bool_and(s.seqcache = 1) FROM pg_sequence s
        WHERE s.seqrelid IN ('webhooks.deliveries_id_seq'::regclass, 'webhooks.captures_id_seq'::regclass)) THEN
        SELECT pg_snapshot_xmax(pg_current_snapshot()) INTO horizon;
        state := jsonb_build_object('f', floors, 'l', last_delivery, 'c', last_capture, 'x', horizon::text,
                                    's', sequences, 't', clock_timestamp(),
                                    'b', coalesce((state ->> 'b')::timestamptz, clock_timestamp()));
    ELSE
        floors := '{}';
        state := jsonb_build_object('f', floors, 's', sequences, 't', clock_timestamp(), 'b', clock_timestamp());
    END IF;
    PERFORM set_config('pgwebhooks.open_floors', md5(token || state::text) || '|' || state::text, false);
    RETURN floors;
END
$$;

COMMENT ON FUNCTION webhooks._open_floors IS
    'Raises this session''s open floors when safe; returns them (captures, and per webhook the first unfinished id).';
