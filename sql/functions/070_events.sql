-- pgwebhooks: application events (issue 10). An event type catalogue, webhooks.publish() for the
-- application's own events, and the installation's HTTPS-only option. Published events go
-- through the outbox like row changes (one `captures` row each, operation 'EVENT'), so they get
-- the same fan-out, retries, logs and signatures, and a rollback sends nothing.

-- Which webhooks receive events of `type`, by exact name, prefix pattern (order.*) or *.
CREATE OR REPLACE FUNCTION webhooks._subscribers(type text)
RETURNS uuid[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(DISTINCT s.webhook_id ORDER BY s.webhook_id), '{}')
    FROM webhooks.event_subscriptions s
    WHERE s.pattern = type OR s.pattern = '*'
       OR (right(s.pattern, 2) = '.*' AND starts_with(type, left(s.pattern, -1)))
$$;

-- Keep event_types.webhook_ids current after any change to event_subscriptions (including the
-- cascade of a deleted webhook), incrementally: only the (type, webhook) pairs a changed row's
-- pattern matches are looked at (an exact name: one type; order.*: its family; *: all), and for
-- each the webhook is added or removed as it now subscribes to the type by any pattern, one
-- primary-key probe each. A TRUNCATE recomputes every type. Changes are serialised by the table
-- lock, and the update runs in a statement of its own after it, so it sees every change committed
-- before: two webhooks subscribing at once cannot leave a type missing one of them.
CREATE OR REPLACE FUNCTION webhooks._refresh_subscribers()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    hooks uuid[];
    patterns text[];
BEGIN
    -- Each branch names only the transition tables its trigger declares.
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(a.webhook_id), array_agg(a.pattern) INTO hooks, patterns FROM added a;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(r.webhook_id), array_agg(r.pattern) INTO hooks, patterns FROM removed r;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(x.webhook_id), array_agg(x.pattern) INTO hooks, patterns
        FROM (SELECT a.webhook_id, a.pattern FROM added a UNION SELECT r.webhook_id, r.pattern FROM removed r) x;
    ELSE
        LOCK TABLE webhooks.event_types IN SHARE ROW EXCLUSIVE MODE;
        UPDATE webhooks.event_types t SET webhook_ids = webhooks._subscribers(t.name)
        WHERE t.webhook_ids <> '{}';
        RETURN NULL;
    END IF;
    IF hooks IS NULL THEN
        RETURN NULL;  -- a statement that changed no row
    END IF;
    LOCK TABLE webhooks.event_types IN SHARE ROW EXCLUSIVE MODE;
    WITH changed AS (
        SELECT DISTINCT t.name, c.webhook_id
        FROM unnest(hooks, patterns) AS c(webhook_id, pattern)
        JOIN webhooks.event_types t
          ON c.pattern = t.name OR c.pattern = '*' OR (right(c.pattern, 2) = '.*' AND starts_with(t.name, left(c.pattern, -1)))
    ), verdict AS (
        SELECT c.name, c.webhook_id, EXISTS (
            SELECT 1 FROM webhooks.event_subscriptions s
            WHERE s.webhook_id = c.webhook_id
              AND (s.pattern = c.name OR s.pattern = '*'
                   OR (right(s.pattern, 2) = '.*' AND starts_with(c.name, left(s.pattern, -1))))) AS subscribed
        FROM changed c
    ), per_type AS (
        SELECT v.name, array_agg(v.webhook_id) FILTER (WHERE v.subscribed) AS plus,
               array_agg(v.webhook_id) FILTER (WHERE NOT v.subscribed) AS minus
        FROM verdict v GROUP BY v.name
    )
    UPDATE webhooks.event_types t
    SET webhook_ids = ARRAY(SELECT DISTINCT u FROM unnest(t.webhook_ids || coalesce(p.plus, '{}')) u
                            WHERE u <> ALL (coalesce(p.minus, '{}')) ORDER BY u)
    FROM per_type p
    WHERE t.name = p.name;
    RETURN NULL;
END
$$;
-- Transition tables need one trigger per event.
DROP TRIGGER IF EXISTS event_subscriptions_refresh ON webhooks.event_subscriptions;
CREATE OR REPLACE TRIGGER event_subscriptions_refresh_insert
    AFTER INSERT ON webhooks.event_subscriptions REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks._refresh_subscribers();
CREATE OR REPLACE TRIGGER event_subscriptions_refresh_update
    AFTER UPDATE ON webhooks.event_subscriptions REFERENCING OLD TABLE AS removed NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks._refresh_subscribers();
CREATE OR REPLACE TRIGGER event_subscriptions_refresh_delete
    AFTER DELETE ON webhooks.event_subscriptions REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks._refresh_subscribers();
CREATE OR REPLACE TRIGGER event_subscriptions_refresh_truncate
    AFTER TRUNCATE ON webhooks.event_subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks._refresh_subscribers();

CREATE OR REPLACE FUNCTION webhooks.create_event_type(name text, description text DEFAULT NULL,
                                                      example jsonb DEFAULT NULL)
RETURNS SETOF webhooks.event_types
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webhooks._check_event_type_name('name', name);
    IF length(description) > 2000 THEN
        PERFORM webhooks._fail('WH013', 'description',
            format('is %s characters long; at most 2000 are allowed', length(description)));
    END IF;
    IF EXISTS (SELECT 1 FROM webhooks.event_types t WHERE t.name = create_event_type.name) THEN
        PERFORM webhooks._fail('WH002', 'name', format('event type %L already exists', name));
    END IF;
    LOCK TABLE webhooks.event_types IN SHARE ROW EXCLUSIVE MODE;  -- see _refresh_subscribers
    RETURN QUERY INSERT INTO webhooks.event_types AS t (name, description, example, webhook_ids)
        VALUES (create_event_type.name, create_event_type.description, create_event_type.example,
                webhooks._subscribers(create_event_type.name))
        RETURNING t.*;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.list_event_types()
RETURNS TABLE (name text, description text, example jsonb, created_at timestamptz, subscribers integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    -- subscribers: webhooks receiving the type, by exact name, pattern or table subscription.
    SELECT t.name, t.description, t.example, t.created_at,
           (SELECT count(DISTINCT x.webhook_id)::integer FROM (
                SELECT s.webhook_id FROM webhooks.event_subscriptions s
                WHERE s.pattern = t.name OR s.pattern = '*'
                   OR (right(s.pattern, 2) = '.*' AND starts_with(t.name, left(s.pattern, -1)))
                UNION ALL
                SELECT s.webhook_id FROM webhooks.subscriptions s WHERE s.event_type = t.name) x)
    FROM webhooks.event_types t
    ORDER BY t.name
$$;

-- A type still named by a subscription cannot be deleted (its receivers would silently stop).
CREATE OR REPLACE FUNCTION webhooks.delete_event_type(name text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    user_name text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks.event_types t WHERE t.name = delete_event_type.name) THEN
        PERFORM webhooks._fail('WH021', 'name', format('event type %L is not declared', name));
    END IF;
    SELECT w.name INTO user_name
    FROM webhooks.webhooks w
    WHERE EXISTS (SELECT 1 FROM webhooks.event_subscriptions s WHERE s.webhook_id = w.id AND s.pattern = delete_event_type.name)
       OR EXISTS (SELECT 1 FROM webhooks.subscriptions s WHERE s.webhook_id = w.id AND s.event_type = delete_event_type.name)
    ORDER BY w.name LIMIT 1;
    IF user_name IS NOT NULL THEN
        PERFORM webhooks._fail('WH025', 'name', format('event type %L is used by webhook %L', name, user_name),
            'remove it from that webhook''s events first (update_webhook)');
    END IF;
    DELETE FROM webhooks.event_types t WHERE t.name = delete_event_type.name;
END
$$;

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
-- (a string of control characters, each \u00XX), so small events pay one size lookup.
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
    IF pg_column_size(data) * 6 > webhooks._max_data_bytes() THEN
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
    settled boolean := true;
BEGIN
    IF pg_catalog.starts_with(event_type, 'pgwebhooks.') THEN
        PERFORM webhooks._fail('WH032', 'event_type', pg_catalog.format(
            '%L is reserved: pgwebhooks.* events are published by pgwebhooks only', event_type));
    END IF;
    PERFORM webhooks._check_event_data('data', data);
    -- A restored copy starts a new salt before its first event id is handed out (045_restore.sql);
    -- checked once per session, the test inline to keep a GUC save and restore off every call.
    -- (_identity_token() inline: a function with its own search_path costs a GUC save and restore.)
    IF pg_catalog.current_setting('pgwebhooks.identity_checked', true) IS DISTINCT FROM
           (SELECT pg_catalog.md5(k.key OPERATOR(pg_catalog.||) '/' OPERATOR(pg_catalog.||) pg_catalog.pg_backend_pid())
            FROM webhooks._identity_key k) THEN
        settled := webhooks._ensure_identity();
    END IF;
    -- One statement does it all (type check, subscribers, insert, id): each statement a call runs
    -- costs about as much as the insert itself. The subscribers are the type's webhook_ids.
    -- Unsettled (another transaction is recording a copy's new salt): this capture is past the
    -- copy's boundary, so its id is under the copy's derived salt (_salt_at).
    INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count,
                                   event_type, data)
    SELECT 'EVENT', 0, 'webhooks', 'events', t.webhook_ids, 1, event_type, data
    FROM webhooks.event_types t
    WHERE t.name OPERATOR(pg_catalog.=) event_type AND data IS NOT NULL
    RETURNING pg_catalog.md5((CASE WHEN settled THEN (SELECT i.salt FROM webhooks._salt_for(id) i)
                                   ELSE webhooks._salt_at(webhooks._database_identity()) END)::pg_catalog.text
                             OPERATOR(pg_catalog.||) '/' OPERATOR(pg_catalog.||) id
                             OPERATOR(pg_catalog.||) '/1')::pg_catalog.uuid
    INTO event_id;
    IF event_id IS NULL THEN
        IF data IS NULL THEN
            PERFORM webhooks._fail('WH013', 'data', 'must be a JSON value, not SQL NULL (use ''null''::jsonb or ''{}'')');
        END IF;
        PERFORM webhooks._check_event_type_declared('event_type', event_type);
    END IF;
    -- Identical notifications in one transaction are folded into one, sent at commit.
    PERFORM pg_catalog.pg_notify('webhooks', '');
    RETURN event_id;
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

GRANT USAGE ON SCHEMA webhooks TO webhooks_publisher;
REVOKE ALL ON FUNCTION webhooks.publish(text, jsonb), webhooks.create_event_type(text, text, jsonb),
    webhooks.list_event_types(), webhooks.delete_event_type(text), webhooks.require_https(boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhooks.publish(text, jsonb) TO webhooks_publisher, webhooks_admin;
GRANT EXECUTE ON FUNCTION webhooks.create_event_type(text, text, jsonb), webhooks.list_event_types(),
    webhooks.delete_event_type(text), webhooks.require_https(boolean) TO webhooks_admin;

COMMENT ON TABLE webhooks.event_types IS
    'The event type catalogue (dotted lowercase names): what publish() accepts and table subscriptions may send as.';
COMMENT ON TABLE webhooks.event_subscriptions IS
    'Which webhooks receive published events: by type, by prefix pattern (order.*) or all (*).';
COMMENT ON FUNCTION webhooks.create_event_type(text, text, jsonb) IS
    'Declare an event type (dotted lowercase, like order.completed) with an optional description and example payload.';
COMMENT ON FUNCTION webhooks.list_event_types() IS
    'Every declared event type with the number of webhooks receiving it.';
COMMENT ON FUNCTION webhooks.delete_event_type(text) IS
    'Delete an event type no subscription names (WH025 otherwise).';
COMMENT ON FUNCTION webhooks.publish(text, jsonb) IS
    'Publish an application event of a declared type in the current transaction (rollback sends nothing); returns its id. For webhooks_publisher.';
COMMENT ON FUNCTION webhooks.require_https(boolean) IS
    'Turn the installation''s HTTPS-only option on or off: when on, http:// webhook URLs are refused (WH024).';
