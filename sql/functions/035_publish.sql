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

-- publish() for what its one statement does not take (see publish): data that may be too large or
-- too deep, SQL NULL, a reserved or undeclared type. The checks in publish()'s order, then the
-- same insert; an error names the field and the value. Called from publish(), with its rights.
CREATE OR REPLACE FUNCTION webhooks._publish_checked(event_type text, data jsonb)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    event_id uuid;
BEGIN
    IF starts_with(event_type, 'pgwebhooks.') THEN
        PERFORM webhooks._fail('WH032', 'event_type', format(
            '%L is reserved: pgwebhooks.* events are published by pgwebhooks only', event_type));
    END IF;
    PERFORM webhooks._check_event_data('data', data);
    IF data IS NULL THEN
        PERFORM webhooks._fail('WH013', 'data', 'must be a JSON value, not SQL NULL (use ''null''::jsonb or ''{}'')');
    END IF;
    INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count,
                                   event_type, data, published_id)
    SELECT 'EVENT', 0, 'webhooks', 'events', t.webhook_ids, 1, event_type, data, gen_random_uuid()
    FROM webhooks.event_types t
    WHERE t.name = event_type AND pg_current_xact_id() IS NOT NULL
    RETURNING published_id INTO event_id;
    IF event_id IS NULL THEN
        PERFORM webhooks._check_event_type_declared('event_type', event_type);
    END IF;
    RETURN event_id;
END
$$;

REVOKE ALL ON FUNCTION webhooks._publish_checked FROM PUBLIC;

-- Publish an application event in the caller's transaction; returns its id (the webhook-id
-- receivers see). The receiving webhooks are resolved now, from event_subscriptions; whether
-- each is enabled is decided at fan-out, like for row changes. Runs in every publishing
-- transaction, so like the capture triggers it skips `SET search_path` (a GUC save and restore
-- per call) and names everything with its schema.
--
-- Types under `pgwebhooks.` are reserved for pgwebhooks' own alerts (webhooks._alert); no one
-- may publish one (WH032), so a receiver can trust that an alert came from pgwebhooks.
CREATE OR REPLACE FUNCTION webhooks.publish(event_type text, data jsonb)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
AS $$
DECLARE
    event_id pg_catalog.uuid;
    runner_waits boolean;
BEGIN
    -- One statement takes the common event: each statement a call runs costs about as much as the
    -- insert itself. It resolves the subscribers (the type's webhook_ids), draws the event's id
    -- (stored with it: migration 0021) and asks whether a runner waits. It takes only a declared,
    -- unreserved type and small data: an uncompressed jsonb of at most 512 bytes is neither too
    -- large nor too deep (65 nested arrays take 520: 4 bytes of header per level and 4 to point at
    -- each inner one); a compressed one's size says nothing, and SQL NULL has none. Anything else
    -- inserts nothing here and goes to _publish_checked, which checks it, raises the error or
    -- inserts it.
    INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count,
                                   event_type, data, published_id)
    SELECT 'EVENT', 0, 'webhooks', 'events', t.webhook_ids, 1, event_type, data, pg_catalog.gen_random_uuid()
    FROM webhooks.event_types t
    WHERE t.name OPERATOR(pg_catalog.=) event_type
      AND NOT pg_catalog.starts_with(event_type, 'pgwebhooks.')
      AND pg_catalog.pg_column_size(data) OPERATOR(pg_catalog.<=) 512
      AND pg_catalog.pg_column_compression(data) IS NULL
      -- The transaction id before the capture's id (see _open_floors): a filter of the scan that
      -- feeds the insert, so it is asked before the id is drawn for the row.
      AND pg_catalog.pg_current_xact_id() IS NOT NULL
    RETURNING published_id,
              pg_catalog.pg_sequence_last_value('webhooks._runners_waiting'::pg_catalog.regclass) OPERATOR(pg_catalog.>) 0
    INTO event_id, runner_waits;
    IF event_id IS NULL THEN
        event_id := webhooks._publish_checked(event_type, data);
        runner_waits := pg_catalog.pg_sequence_last_value('webhooks._runners_waiting'::pg_catalog.regclass)
                        OPERATOR(pg_catalog.>) 0;
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
