-- pgwebhooks: the event type catalogue. What publish() accepts and table subscriptions may send as.

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
    PERFORM pg_advisory_xact_lock('webhooks.event_types'::regclass::oid::integer, 0);  -- see _refresh_subscribers
    RETURN QUERY INSERT INTO webhooks.event_types AS t (name, description, example, webhook_ids)
        VALUES (create_event_type.name, create_event_type.description, create_event_type.example,
                webhooks._subscribers(create_event_type.name))
        RETURNING t.*;
    PERFORM webhooks._sync_cursors(ARRAY[create_event_type.name]);
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
    used_as text;
BEGIN
    -- Serialised with subscription changes (see _refresh_subscribers): a webhook subscribing
    -- meanwhile is either seen below, or finds the type gone.
    PERFORM pg_advisory_xact_lock('webhooks.event_types'::regclass::oid::integer, 0);
    IF NOT EXISTS (SELECT 1 FROM webhooks.event_types t WHERE t.name = delete_event_type.name) THEN
        PERFORM webhooks._fail('WH021', 'name', format('event type %L is not declared', name));
    END IF;
    -- Still received by a webhook, by name or through a pattern (order.*, *) that reaches it: the
    -- webhook would silently stop getting it. The same match as _subscribers().
    SELECT w.name, u.used_as INTO user_name, used_as
    FROM webhooks.webhooks w
    CROSS JOIN LATERAL (
        SELECT format('subscribes to %L', s.pattern) AS used_as
        FROM webhooks.event_subscriptions s
        WHERE s.webhook_id = w.id
          AND (s.pattern = delete_event_type.name OR s.pattern = '*'
               OR (right(s.pattern, 2) = '.*' AND starts_with(delete_event_type.name, left(s.pattern, -1))))
        UNION ALL
        SELECT 'sends a table''s changes as it' FROM webhooks.subscriptions s
        WHERE s.webhook_id = w.id AND s.event_type = delete_event_type.name
        LIMIT 1
    ) u
    ORDER BY w.name LIMIT 1;
    IF user_name IS NOT NULL THEN
        PERFORM webhooks._fail('WH025', 'name', format('event type %L is used by webhook %L, which %s', name,
                                                       user_name, used_as),
            'remove it from that webhook''s events first (update_webhook)');
    END IF;
    -- Its cursors too: a cursor's route may be an event type's or a table's (no foreign key).
    WITH gone AS (
        DELETE FROM webhooks.event_types t WHERE t.name = delete_event_type.name RETURNING t.route
    )
    DELETE FROM webhooks.cursors k USING gone g WHERE k.route = g.route;
END
$$;

REVOKE ALL ON FUNCTION webhooks.create_event_type, webhooks.list_event_types, webhooks.delete_event_type
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhooks.create_event_type, webhooks.list_event_types, webhooks.delete_event_type
TO webhooks_admin;
GRANT EXECUTE ON FUNCTION webhooks.list_event_types TO webhooks_viewer;

COMMENT ON TABLE webhooks.event_types IS
    'The event type catalogue (dotted lowercase names): what publish() accepts and table subscriptions may send as.';

COMMENT ON FUNCTION webhooks.create_event_type IS
    'Declare an event type (dotted lowercase, like order.completed) with an optional description and example payload.';

COMMENT ON FUNCTION webhooks.list_event_types IS
    'Every declared event type with the number of webhooks receiving it.';

COMMENT ON FUNCTION webhooks.delete_event_type IS
    'Delete an event type no subscription names (WH025 otherwise).';
