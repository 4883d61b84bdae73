-- pgwebhooks: publish(), the application's own events. Published events go through the outbox
-- like row changes (one `captures` row each, operation 'EVENT'), so they get the same fan-out,
-- retries, logs and signatures, and a rollback sends nothing.

-- What an event's data may be (publish, send_test, README "Limits"): at most
-- _max_data_depth() levels of arrays and objects, and at most _max_data_bytes() bytes as JSON
-- text. Checked where the data comes in, so no delivery is ever asked to render more; claim()
-- still fails a delivery it cannot render rather than fail the whole claim.
CREATE OR REPLACE FUNCTION webhooks._max_data_depth()
RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$ SELECT 64 $$;

CREATE OR REPLACE FUNCTION webhooks._max_data_bytes()
RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$ SELECT 1048576 $$;

-- WH030 (too deep) or WH031 (too large) for an event's data. The text length is measured only
-- when the stored size says it could matter: a JSON text is at most about six times its jsonb
-- (a string of control characters, each \u00XX), so small events pay one size lookup. Not so
-- for a compressed value (data read from a table column): pg_column_size() is its compressed
-- size, which says nothing of its text (2 MB of one letter compresses to 23 kB).
CREATE OR REPLACE FUNCTION webhooks._check_event_data(field text, data jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    size bigint;
BEGIN
    IF data IS NULL THEN
        RETURN;
    END IF;
    IF pg_column_size(data) * 6 > webhooks._max_data_bytes() OR pg_column_compression(data) IS NOT NULL THEN
        size := octet_length(data::text);
        IF size > webhooks._max_data_bytes() THEN
            PERFORM webhooks._fail('WH031', field, format('is %s bytes of JSON text; at most %s are allowed',
                                                          size, webhooks._max_data_bytes()));
        END IF;
    END IF;
    -- Level 0 is the value itself: a container at level 64 is the 65th level of nesting.
    IF jsonb_path_exists(data, 'strict $.**{64} ? (@.type() == "object" || @.type() == "array")') THEN
        PERFORM webhooks._fail('WH030', field, format('nests arrays and objects more than %s levels deep '
            '(starts %s)', webhooks._max_data_depth(), left(data::text, 40)));
    END IF;
END
$$;

-- What publish()'s first statement does not take (see publish): data that may be too large or too
-- deep, SQL NULL, a reserved or undeclared type. Raises the error publish() has always raised, in
-- its order, for a field and value; returns (the data is acceptable) otherwise.
CREATE OR REPLACE FUNCTION webhooks._check_publish(event_type text, data jsonb)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF starts_with(event_type, 'pgwebhooks.') THEN
        PERFORM webhooks._fail('WH032', 'event_type', format(
            '%L is reserved: pgwebhooks.* events are published by pgwebhooks only', event_type));
    END IF;
    PERFORM webhooks._check_event_data('data', data);
    IF data IS NULL THEN
        PERFORM webhooks._fail('WH013', 'data', 'must be a JSON value, not SQL NULL (use ''null''::jsonb or ''{}'')');
    END IF;
    PERFORM webhooks._check_event_type_declared('event_type', event_type);
END
$$;

DROP FUNCTION IF EXISTS webhooks._publish_checked(text, jsonb);
REVOKE ALL ON FUNCTION webhooks._check_publish FROM PUBLIC;

-- Publish an application event in the caller's transaction; returns its id (the webhook-id
-- receivers see). The event goes on its type's route (migration 0022): each subscribed webhook's
-- cursor gives it the event once its transaction has ended (041_cursors.sql). Runs in every
-- publishing transaction, so like the capture triggers it skips `SET search_path` (a GUC save and
-- restore per call) and names everything with its schema.
--
-- Types under `pgwebhooks.` are reserved for pgwebhooks' own alerts (webhooks._alert); no one
-- may publish one (WH032), so a receiver can trust that an alert came from pgwebhooks.
CREATE OR REPLACE FUNCTION webhooks.publish(event_type text, data jsonb)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
AS $$
DECLARE
    -- First: the transaction id before the route's state is read and before the event's id is
    -- drawn. A route coming to rest counts on every publisher that read it open having had its
    -- id by then (041_cursors.sql), and the open floors on ids drawn after it (027_open_floors.sql).
    writer pg_catalog.xid8 := pg_catalog.pg_current_xact_id();
    on_route pg_catalog.int4;
    route_open boolean;
    event_id pg_catalog.uuid;
    runner_waits boolean;
BEGIN
    -- The common event in one lookup: a declared, unreserved type and small data. An uncompressed
    -- jsonb of at most 512 bytes is neither too large nor too deep (65 nested arrays take 520: 4
    -- bytes of header per level and 4 to point at each inner one); a compressed one's size says
    -- nothing, and SQL NULL has none. Anything else is checked by _check_publish, which raises the
    -- error or lets it through.
    SELECT t.route, t.route_state OPERATOR(pg_catalog.=) 'open' INTO on_route, route_open
    FROM webhooks.event_types t
    WHERE t.name OPERATOR(pg_catalog.=) event_type
      AND NOT pg_catalog.starts_with(event_type, 'pgwebhooks.')
      AND pg_catalog.pg_column_size(data) OPERATOR(pg_catalog.<=) 512
      AND pg_catalog.pg_column_compression(data) IS NULL;
    IF on_route IS NULL THEN
        PERFORM webhooks._check_publish(event_type, data);
        SELECT t.route, t.route_state OPERATOR(pg_catalog.=) 'open' INTO on_route, route_open
        FROM webhooks.event_types t WHERE t.name OPERATOR(pg_catalog.=) event_type;
    END IF;
    -- Routed: no webhook_ids (the cursors say who receives it) and nothing to fan out.
    INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count, fanned_out,
                                   event_type, data, published_id, route, xid)
    VALUES ('EVENT', 0, 'webhooks', 'events', '{}', 1, 1, event_type, data, pg_catalog.gen_random_uuid(),
            on_route, writer)
    RETURNING published_id,
              pg_catalog.pg_sequence_last_value('webhooks._runners_waiting'::pg_catalog.regclass) OPERATOR(pg_catalog.>) 0
    INTO event_id, runner_waits;
    -- A route at rest is woken by an insert: a publisher never waits on a claim or another publisher.
    IF NOT route_open THEN
        INSERT INTO webhooks._route_wakes (route) VALUES (on_route);
    END IF;
    -- Like a capture, only while a runner waits (_wake_runners(), inline; 028_wakeups.sql): a
    -- NOTIFY serialises the commits that send one. Identical ones in a transaction are folded.
    IF runner_waits THEN
        PERFORM pg_catalog.pg_notify('webhooks', '');
    END IF;
    RETURN event_id;
END
$$;

REVOKE ALL ON FUNCTION webhooks.publish FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhooks.publish TO webhooks_publisher, webhooks_admin;

COMMENT ON FUNCTION webhooks.publish IS
    'Publish an application event of a declared type in the current transaction (rollback sends nothing); returns its id. For webhooks_publisher.';
