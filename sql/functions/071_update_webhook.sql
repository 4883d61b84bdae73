-- pgwebhooks: update_webhook(), a webhook's settings changed as a JSON object of fields.

-- A field of update_webhook's `changes`, checked for its JSON type.
CREATE OR REPLACE FUNCTION webhooks._change(changes jsonb, field text, expected text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    value jsonb := changes -> field;
BEGIN
    IF jsonb_typeof(value) <> expected AND NOT (jsonb_typeof(value) = 'null' AND field = 'description') THEN
        PERFORM webhooks._fail('WH012', field, format('expected a JSON %s, got %s', expected, value));
    END IF;
    -- Every number field is an integer column: say so rather than fail the cast later.
    IF expected = 'number' AND (value::text::numeric % 1 <> 0
                                OR value::text::numeric NOT BETWEEN -2147483648 AND 2147483647) THEN
        PERFORM webhooks._fail('WH012', field, format('expected an integer, got %s', value));
    ELSIF expected = 'number' THEN
        RETURN to_jsonb(value::text::numeric::integer);  -- 2.0 -> 2
    END IF;
    RETURN value;
END
$$;

-- update_webhook's retry_schedule: a JSON array of interval strings, or null (back to backoff).
CREATE OR REPLACE FUNCTION webhooks._schedule_from_json(value jsonb)
RETURNS interval[]
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF value IS NULL OR jsonb_typeof(value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(value) <> 'array' OR EXISTS (SELECT 1 FROM jsonb_array_elements(value) v
                                                 WHERE jsonb_typeof(v) <> 'string') THEN
        PERFORM webhooks._fail('WH023', 'retry_schedule',
            format('must be a JSON array of intervals like ["1 minute", "5 minutes"], got %s', value));
    END IF;
    BEGIN
        RETURN ARRAY(SELECT (v #>> '{}')::interval FROM jsonb_array_elements(value) WITH ORDINALITY AS a(v, o)
                     ORDER BY o);
    EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR interval_field_overflow THEN
        PERFORM webhooks._fail('WH023', 'retry_schedule', format('%s contains something that is not an interval', value));
    END;
END
$$;

-- update_webhook's `changes`: a JSON object naming only fields of a webhook.
CREATE OR REPLACE FUNCTION webhooks._check_change_fields(changes jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    unknown text;
BEGIN
    IF changes IS NULL OR jsonb_typeof(changes) <> 'object' THEN
        PERFORM webhooks._fail('WH012', 'changes',
            format('must be a JSON object of fields to change, got %s', coalesce(changes::text, 'null')));
    END IF;
    SELECT k INTO unknown FROM jsonb_object_keys(changes) k
    WHERE k NOT IN ('name', 'url', 'events', 'secret', 'description', 'enabled', 'max_retries',
                    'timeout_seconds', 'retry_backoff_seconds', 'headers',
                    'profile', 'retry_schedule',
                    'pause_after', 'secret_headers',
                    'max_concurrency', 'rate_limit_per_second')
    LIMIT 1;
    IF unknown IS NOT NULL THEN
        PERFORM webhooks._fail('WH012', unknown, 'is not a field of a webhook',
            'fields: name, url, events, secret, description, enabled, max_retries, timeout_seconds, retry_backoff_seconds, headers, profile, retry_schedule, pause_after, secret_headers, max_concurrency, rate_limit_per_second');
    END IF;
END
$$;

-- The webhook row with the column fields of `changes` applied, each checked for its JSON type
-- and its own rules in the order update_webhook has always checked them (the first bad field
-- is the one reported); rules across fields are update_webhook's.
CREATE OR REPLACE FUNCTION webhooks._apply_changes(current webhooks.webhooks, changes jsonb)
RETURNS webhooks.webhooks
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_enabled boolean;
BEGIN
    IF changes ? 'name' THEN current.name := webhooks._change(changes, 'name', 'string') #>> '{}'; END IF;
    IF changes ? 'url' THEN current.url := webhooks._change(changes, 'url', 'string') #>> '{}'; END IF;
    IF changes ? 'description' THEN
        current.description := webhooks._change(changes, 'description', 'string') #>> '{}';
    END IF;
    IF changes ? 'max_retries' THEN
        current.max_retries := webhooks._change(changes, 'max_retries', 'number') #>> '{}';
    END IF;
    IF changes ? 'timeout_seconds' THEN
        current.timeout_seconds := webhooks._change(changes, 'timeout_seconds', 'number') #>> '{}';
    END IF;
    IF changes ? 'retry_backoff_seconds' THEN
        current.retry_backoff_seconds := webhooks._change(changes, 'retry_backoff_seconds', 'number') #>> '{}';
    END IF;
    IF changes ? 'headers' THEN current.headers := changes -> 'headers'; END IF;
    -- profile, and retry_schedule as a JSON array of intervals ("5 minutes") or null.
    IF changes ? 'profile' THEN
        current.profile := webhooks._change(changes, 'profile', 'string') #>> '{}';
        PERFORM webhooks._check_profile(current.profile);
    END IF;
    IF changes ? 'retry_schedule' THEN
        current.retry_schedule := webhooks._schedule_from_json(changes -> 'retry_schedule');
        PERFORM webhooks._check_retry_schedule(current.retry_schedule);
        current.max_retries := coalesce(cardinality(current.retry_schedule), current.max_retries);
    END IF;
    -- max_concurrency and rate_limit_per_second: an integer, or null for no limit of its own.
    IF changes ? 'max_concurrency' THEN
        current.max_concurrency := CASE WHEN jsonb_typeof(changes -> 'max_concurrency') <> 'null'
            THEN (webhooks._change(changes, 'max_concurrency', 'number') #>> '{}')::integer END;
    END IF;
    IF changes ? 'rate_limit_per_second' THEN
        current.rate_limit_per_second := CASE WHEN jsonb_typeof(changes -> 'rate_limit_per_second') <> 'null'
            THEN (webhooks._change(changes, 'rate_limit_per_second', 'number') #>> '{}')::integer END;
    END IF;
    PERFORM webhooks._check_limits(current.max_concurrency, current.rate_limit_per_second);
    IF changes ? 'enabled' THEN
        new_enabled := (webhooks._change(changes, 'enabled', 'boolean') #>> '{}')::boolean;
        IF new_enabled THEN
            current.disabled_reason := NULL;
        ELSIF current.enabled THEN
            current.disabled_reason := 'disabled by update_webhook';
        END IF;
        current.enabled := new_enabled;
    END IF;
    RETURN current;
END
$$;

-- The secret headers a webhook keeps after update_webhook. They are credentials for the
-- endpoint they were given for: a new URL drops them unless this same call restates them, so
-- that nobody can redirect them to an address of theirs.
CREATE OR REPLACE FUNCTION webhooks._kept_secret_headers(id uuid, changes jsonb, url_changed boolean)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kept jsonb;
BEGIN
    IF changes ? 'secret_headers' THEN
        PERFORM webhooks._check_secret_headers(changes -> 'secret_headers');
        RETURN changes -> 'secret_headers';
    ELSIF url_changed THEN
        RETURN '{}';
    END IF;
    SELECT h.headers INTO kept FROM webhooks.secret_headers h WHERE h.webhook_id = _kept_secret_headers.id;
    RETURN kept;
END
$$;

-- update_webhook's pause_after: an interval as a JSON string, or null (never).
CREATE OR REPLACE FUNCTION webhooks._change_pause_after(id uuid, pause_after jsonb)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF jsonb_typeof(pause_after) NOT IN ('string', 'null') THEN
        PERFORM webhooks._fail('WH012', 'pause_after',
            format('expected an interval as a JSON string (like "3 days") or null, got %s', pause_after));
    END IF;
    PERFORM webhooks._check_pause_after_text(pause_after #>> '{}');
    UPDATE webhooks.webhooks w SET pause_after = (_change_pause_after.pause_after #>> '{}')::interval
    WHERE w.id = _change_pause_after.id;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.update_webhook(id uuid, changes jsonb)
RETURNS SETOF webhooks._webhook_view
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    current webhooks.webhooks;
    old_url text;
    kept_secret_headers jsonb;
BEGIN
    PERFORM webhooks._webhook_exists(id);
    PERFORM webhooks._check_change_fields(changes);

    SELECT * INTO current FROM webhooks.webhooks w WHERE w.id = update_webhook.id FOR UPDATE;
    old_url := current.url;
    -- Whoever could redirect a webhook could read what it carries: only a caller who may read
    -- every table it watches may change it (the new `events` are checked the same way).
    PERFORM webhooks._check_reach(id);
    current := webhooks._apply_changes(current, changes);

    PERFORM webhooks._check_settings(current.name, current.url, current.max_retries, current.timeout_seconds,
                                     current.retry_backoff_seconds, current.headers, current.description, id);
    IF changes ? 'secret' THEN
        PERFORM webhooks._check_secret(webhooks._change(changes, 'secret', 'string') #>> '{}');
    END IF;
    kept_secret_headers := webhooks._kept_secret_headers(id, changes, current.url IS DISTINCT FROM old_url);
    PERFORM webhooks._check_url_credentials(current.url, current.headers, kept_secret_headers);

    UPDATE webhooks.webhooks w SET
        name = current.name, url = current.url, description = current.description,
        enabled = current.enabled, disabled_reason = current.disabled_reason,
        max_retries = current.max_retries, timeout_seconds = current.timeout_seconds,
        retry_backoff_seconds = current.retry_backoff_seconds, headers = current.headers,
        profile = current.profile, retry_schedule = current.retry_schedule,
        max_concurrency = current.max_concurrency, rate_limit_per_second = current.rate_limit_per_second,
        updated_at = now()
    WHERE w.id = update_webhook.id;
    IF changes ? 'events' THEN
        PERFORM webhooks._replace_subscriptions(id, changes -> 'events');
    END IF;
    IF changes ? 'pause_after' THEN
        PERFORM webhooks._change_pause_after(id, changes -> 'pause_after');
    END IF;
    -- secret_headers replaces them all ({} removes them).
    IF changes ? 'secret_headers' OR current.url IS DISTINCT FROM old_url THEN
        INSERT INTO webhooks.secret_headers AS h (webhook_id, headers) VALUES (id, kept_secret_headers)
        ON CONFLICT (webhook_id) DO UPDATE SET headers = EXCLUDED.headers;
    END IF;
    IF changes ? 'secret' THEN
        -- A replaced secret stops signing at once; rotate_secret() is the gentle way.
        DELETE FROM webhooks.secrets s WHERE s.webhook_id = update_webhook.id;
        INSERT INTO webhooks.secrets (webhook_id, secret) VALUES (id, changes ->> 'secret');
    END IF;

    RETURN QUERY SELECT * FROM webhooks._webhook_view v WHERE v.id = update_webhook.id;
END
$$;

GRANT EXECUTE ON FUNCTION webhooks.update_webhook TO webhooks_admin;

COMMENT ON FUNCTION webhooks.update_webhook IS
    'Change a webhook: changes is a JSON object of the fields to set (name, url, events, secret, description, enabled, max_retries, timeout_seconds, retry_backoff_seconds, headers, profile, retry_schedule).';

COMMENT ON FUNCTION webhooks._check_change_fields IS
    'update_webhook: changes must be a JSON object naming only fields of a webhook (WH012).';

COMMENT ON FUNCTION webhooks._apply_changes IS
    'update_webhook: the webhook row with the column fields of changes applied, each field checked.';

COMMENT ON FUNCTION webhooks._kept_secret_headers IS
    'update_webhook: the secret headers a webhook keeps (restated, dropped by a new URL, or unchanged).';

COMMENT ON FUNCTION webhooks._change_pause_after IS
    'update_webhook: check and store a new pause_after (an interval string or null).';
