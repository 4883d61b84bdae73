-- pgwebhooks: day-to-day operations: test events, replay, keeping the outbox bounded, HTTPS only.

-- send_test takes the shape of the test event since 0.2.
DROP FUNCTION IF EXISTS webhooks.send_test(uuid);

-- replay_failed takes dry_run since 0.2.
DROP FUNCTION IF EXISTS webhooks.replay_failed(uuid, timestamptz);

-- Queue a test event for one webhook, whatever it watches: the way to check an endpoint and its
-- signature verification. Without arguments a TEST event; with `event` (INSERT, UPDATE, DELETE,
-- TRUNCATE), "table" and `record` (and `old_record`) a row change of that shape; with `event_type`
-- (declared) and `data` an application event. Sent in the webhook's profile like real ones, and
-- marked as a test: "test": true in the body, a `webhook-test: true` header (see claim()).
-- Returns the delivery id (see get_deliveries).
-- send_test's row change: a capture of `event` on `table` with the given images, only as the
-- caller could have made it. Returns the capture's id.
CREATE OR REPLACE FUNCTION webhooks._test_row_change(id uuid, event text, "table" text, record jsonb, old_record jsonb)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    capture bigint;
    parts text[];
    op text := upper(event);
    target oid;
BEGIN
    IF op IS NULL OR op NOT IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE') THEN
        PERFORM webhooks._fail('WH007', 'event', format('%s is not an operation; expected INSERT, UPDATE, '
            'DELETE or TRUNCATE', coalesce(quote_literal(event), 'null')));
    END IF;
    BEGIN
        parts := parse_ident(coalesce("table", ''));
    EXCEPTION WHEN OTHERS THEN
        PERFORM webhooks._fail('WH006', 'table', format('%L is not a table name', "table"));
    END;
    IF cardinality(parts) NOT IN (1, 2) THEN
        PERFORM webhooks._fail('WH006', 'table', format('%L is not a table name; use "table" or "schema.table"', "table"));
    END IF;
    IF record IS NOT NULL AND jsonb_typeof(record) <> 'object' OR old_record IS NOT NULL AND jsonb_typeof(old_record) <> 'object' THEN
        PERFORM webhooks._fail('WH013', 'record', 'record and old_record must be JSON objects');
    END IF;
    target := to_regclass(format('%I.%I', CASE WHEN cardinality(parts) = 2 THEN parts[1] ELSE 'public' END,
                                 parts[cardinality(parts)]))::oid;
    -- A test row change is signed like a real one, so it may only claim a change its caller
    -- could have made: the receiver cannot tell "INSERT" from a test that says so.
    IF target IS NOT NULL AND NOT has_table_privilege(webhooks._caller(), target, op) THEN
        PERFORM webhooks._fail('WH035', 'event', format('role %I may not %s %s; a test %s of a table needs '
            'the same right on it', webhooks._caller(), op, target::regclass, op));
    END IF;
    -- The images as a capture stores them: a DELETE's row in `record`, compact JSON.
    INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count,
                                   fanned_out, record, old_record, test)
    VALUES (op, coalesce(target, 0),
            CASE WHEN cardinality(parts) = 2 THEN parts[1] ELSE 'public' END, parts[cardinality(parts)],
            ARRAY[id], 1, 1,
            CASE WHEN op = 'DELETE' THEN webhooks._compact_json(coalesce(old_record, record))::json
                 WHEN op <> 'TRUNCATE' THEN webhooks._compact_json(coalesce(record, '{}'))::json END,
            CASE WHEN op = 'UPDATE' THEN webhooks._compact_json(old_record)::json END, true)
    RETURNING captures.id INTO capture;
    RETURN capture;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.send_test(
    id uuid, event text DEFAULT NULL, "table" text DEFAULT NULL, record jsonb DEFAULT NULL,
    old_record jsonb DEFAULT NULL, event_type text DEFAULT NULL, data jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    capture bigint;
    delivery bigint;
BEGIN
    PERFORM webhooks._webhook_exists(id);
    PERFORM webhooks._check_reach(id);  -- 070_webhooks.sql
    -- Before creating a delivery (025_event_ids.sql); not while another transaction records a
    -- restored copy's new salt: this delivery skips fan-out, which must wait for that.
    IF NOT webhooks._ensure_identity() THEN
        PERFORM webhooks._fail('WH033', 'id', 'this database is a restored copy and another transaction is '
            'recording its new event ids right now; try again once it has committed');
    END IF;
    PERFORM webhooks._check_event_data('data', data);
    PERFORM webhooks._check_event_data('record', record);
    PERFORM webhooks._check_event_data('old_record', old_record);
    -- The transaction id before the capture's and the delivery's ids (see _open_floors).
    PERFORM pg_current_xact_id();
    IF event_type IS NOT NULL OR data IS NOT NULL THEN
        IF event IS NOT NULL OR "table" IS NOT NULL OR record IS NOT NULL OR old_record IS NOT NULL THEN
            PERFORM webhooks._fail('WH013', 'event_type',
                'a test event is either a row change (event, table, record) or an application event (event_type, data)');
        END IF;
        PERFORM webhooks._check_event_type_declared('event_type', event_type);
        INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count,
                                       fanned_out, event_type, data, test)
        VALUES ('EVENT', 0, 'webhooks', 'events', ARRAY[id], 1, 1, event_type, coalesce(data, '{}'), true)
        RETURNING captures.id INTO capture;
    ELSIF event IS NOT NULL OR "table" IS NOT NULL OR record IS NOT NULL OR old_record IS NOT NULL THEN
        capture := webhooks._test_row_change(id, event, "table", record, old_record);
    ELSE
        INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count,
                                       fanned_out, record, test)
        VALUES ('TEST', 0, 'webhooks', 'test', ARRAY[id], 1, 1,
                (SELECT row_to_json(x) FROM (SELECT 'test event from pgwebhooks' AS message, now() AS sent_at) x), true)
        RETURNING captures.id INTO capture;
    END IF;
    INSERT INTO webhooks.deliveries (capture_id, n, webhook_id) VALUES (capture, 1, id)
    RETURNING deliveries.id INTO delivery;
    PERFORM pg_notify('webhooks', '');
    RETURN delivery;
END
$$;

-- Send a delivery again as a new delivery of the same event (same webhook-id, so a receiver
-- that already processed it can tell). The old delivery and its attempts stay in the log.
--
-- The event's capture is locked (FOR KEY SHARE) before the new delivery is written: purge()
-- locks the captures it is about to delete, so a replay either keeps its capture alive or
-- finds it purged and says so; it can never leave a delivery whose event is gone.
CREATE OR REPLACE FUNCTION webhooks.replay(delivery_id bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    original webhooks.deliveries;
    replayed bigint;
BEGIN
    SELECT * INTO original FROM webhooks.deliveries d WHERE d.id = replay.delivery_id;
    IF NOT FOUND THEN
        PERFORM webhooks._fail('WH404', 'delivery_id', format('no delivery with id %s', coalesce(delivery_id::text, 'null')));
    END IF;
    PERFORM webhooks._check_reach(original.webhook_id);  -- 070_webhooks.sql
    PERFORM 1 FROM webhooks.captures c WHERE c.id = original.capture_id FOR KEY SHARE;
    IF NOT FOUND THEN
        PERFORM webhooks._fail('WH404', 'delivery_id',
            format('the event of delivery %s was purged; it can no longer be sent', delivery_id));
    END IF;
    INSERT INTO webhooks.deliveries (capture_id, n, webhook_id)
    VALUES (original.capture_id, original.n, original.webhook_id)
    RETURNING id INTO replayed;
    PERFORM pg_notify('webhooks', '');
    RETURN replayed;
END
$$;

-- Replay every failed delivery of a webhook (completed since `since`, if given): the way back
-- after an endpoint's outage outlasted its retries. Each failed delivery is replayed once: it
-- records its replay (replayed_as), and a second call queues nothing new (two at once wait for
-- each other's row locks and the second finds them replayed). replay() of one delivery records
-- nothing: marking the original would lock a row purge() may be deleting. A replay that fails in turn is a
-- failed delivery of its own, replayed by a later call. With dry_run, nothing is queued and the
-- count is what would be. Returns how many were (or would be) queued.
CREATE OR REPLACE FUNCTION webhooks.replay_failed(id uuid, since timestamptz DEFAULT NULL,
                                                  dry_run boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    queued integer;
BEGIN
    PERFORM webhooks._webhook_exists(id);
    PERFORM webhooks._check_reach(id);  -- 070_webhooks.sql
    IF dry_run IS NULL THEN
        PERFORM webhooks._fail('WH045', 'dry_run', 'must be true or false, not null');
    END IF;
    IF dry_run THEN
        SELECT count(*) INTO queued
        FROM webhooks.deliveries d
        WHERE d.webhook_id = replay_failed.id AND d.status = 'failed' AND d.replayed_as IS NULL
          AND (since IS NULL OR d.completed_at >= since)
          AND EXISTS (SELECT 1 FROM webhooks.captures c WHERE c.id = d.capture_id);
        RETURN queued;
    END IF;
    -- As in replay(): hold each event's capture, and skip events already purged.
    WITH failed AS MATERIALIZED (
        SELECT d.id, d.capture_id, d.n, d.webhook_id
        FROM webhooks.deliveries d
        WHERE d.webhook_id = replay_failed.id AND d.status = 'failed' AND d.replayed_as IS NULL
          AND (since IS NULL OR d.completed_at >= since)
        ORDER BY d.id
        FOR NO KEY UPDATE
    ), held AS (
        SELECT c.id FROM webhooks.captures c
        WHERE c.id IN (SELECT f.capture_id FROM failed f)
        FOR KEY SHARE
    ), queued_rows AS (
        INSERT INTO webhooks.deliveries AS nd (capture_id, n, webhook_id)
        SELECT f.capture_id, f.n, f.webhook_id
        FROM failed f JOIN held h ON h.id = f.capture_id
        ORDER BY f.id
        RETURNING nd.id, nd.capture_id, nd.n
    ), marked AS (
        UPDATE webhooks.deliveries d SET replayed_as = q.id
        FROM failed f JOIN queued_rows q ON q.capture_id = f.capture_id AND q.n = f.n
        WHERE d.id = f.id
    )
    SELECT count(*) INTO queued FROM queued_rows;
    IF queued > 0 THEN
        PERFORM pg_notify('webhooks', '');
    END IF;
    RETURN queued;
END
$$;

-- Delete what is finished and older than `older_than`: delivered and failed deliveries with
-- their attempts, deliveries left behind by a deleted webhook, then captures (and their events)
-- that no delivery needs any more. Run it from cron, pg_cron or `pgwebhooks purge`; it keeps the
-- outbox as large as its window.
CREATE OR REPLACE FUNCTION webhooks.purge(older_than interval DEFAULT '7 days')
RETURNS TABLE (deliveries bigint, captures bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    cutoff timestamptz;
    gone_deliveries bigint;
    orphans bigint;
    gone_captures bigint;
BEGIN
    -- Checked before any arithmetic: now() - '100000000 years' overflows.
    IF older_than IS NULL OR older_than < interval '0' OR older_than > interval '100 years' THEN
        PERFORM webhooks._fail('WH013', 'older_than',
            format('%s is out of range; expected an interval from 0 to 100 years', coalesce(older_than::text, 'null')));
    END IF;
    PERFORM webhooks._check_read_committed('purge()');
    cutoff := now() - older_than;
    -- maintain()'s steps (075_maintain.sql) over every id at once.
    SELECT x.deliveries INTO gone_deliveries
    FROM webhooks._maintain_deliveries(cutoff, 0, 9223372036854775807) x;

    -- A fan-out that raced delete_webhook() may have left deliveries of a webhook that is gone.
    WITH orphaned AS (
        DELETE FROM webhooks.deliveries d
        WHERE d.status <> 'leased' AND NOT EXISTS (SELECT 1 FROM webhooks.webhooks w WHERE w.id = d.webhook_id)
        RETURNING d.id
    ), attempts AS (
        DELETE FROM webhooks.delivery_attempts a USING orphaned o WHERE a.delivery_id = o.id
    )
    SELECT count(*) INTO orphans FROM orphaned;

    gone_captures := webhooks._maintain_captures(cutoff, 0, 9223372036854775807);
    RETURN QUERY SELECT gone_deliveries + orphans, gone_captures;
END
$$;

-- The installation's HTTPS-only option: when on, create_webhook and update_webhook refuse
-- http:// URLs (WH024). It cannot be turned on while a webhook still has one. Returns the setting.
CREATE OR REPLACE FUNCTION webhooks.require_https(enabled boolean DEFAULT true)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    plain text;
BEGIN
    IF enabled IS NULL THEN
        PERFORM webhooks._fail('WH013', 'enabled', 'must be true or false');
    END IF;
    SELECT w.name INTO plain FROM webhooks.webhooks w WHERE w.url ~* '^http://' ORDER BY w.name LIMIT 1;
    IF enabled AND plain IS NOT NULL THEN
        PERFORM webhooks._fail('WH024', 'enabled', format('webhook %L still has an http:// URL', plain),
            'change its url to https:// (update_webhook) first');
    END IF;
    UPDATE webhooks._installation SET https_only = enabled;
    RETURN enabled;
END
$$;

REVOKE ALL ON FUNCTION webhooks.send_test, webhooks.replay, webhooks.replay_failed, webhooks.purge,
    webhooks.require_https FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhooks.send_test, webhooks.replay, webhooks.replay_failed, webhooks.purge,
    webhooks.require_https TO webhooks_admin;

COMMENT ON FUNCTION webhooks.send_test IS
    'Queue a test event for one webhook (TEST; or a row change: event, table, record; or an application event: event_type, data); returns the delivery id.';

COMMENT ON FUNCTION webhooks.replay IS
    'Send a delivery''s event again as a new delivery (same webhook-id); WH404 if the event was purged.';

COMMENT ON FUNCTION webhooks.replay_failed IS
    'Replay every failed delivery of a webhook (completed since `since`, if given) once: a second call queues nothing new; dry_run only counts. Returns how many were (or would be) queued.';

COMMENT ON FUNCTION webhooks.purge IS
    'Delete finished deliveries and captures older than older_than (0 to 100 years); pending and leased work is never purged.';

COMMENT ON FUNCTION webhooks.require_https IS
    'Turn the installation''s HTTPS-only option on or off: when on, http:// webhook URLs are refused (WH024).';

COMMENT ON FUNCTION webhooks._test_row_change IS
    'send_test''s row change: checks the operation, table and images, and the caller''s right to make that change; returns the capture id.';
