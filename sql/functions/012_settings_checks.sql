-- pgwebhooks: checks of a webhook's delivery settings (receiver profile, retry schedule,
-- pause_after, limits), shared by create_webhook and update_webhook.

CREATE OR REPLACE FUNCTION webhooks._check_profile(profile text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF profile IS NULL OR profile NOT IN ('standard', 'fluxbase', 'fluxbase_hex', 'truss', 'rowbase', 'flux',
                                          'supabase', 'hasura') THEN
        PERFORM webhooks._fail('WH022', 'profile', format('%s is not a receiver profile; expected standard, '
            'fluxbase, fluxbase_hex, truss, rowbase, flux, supabase or hasura', coalesce(quote_literal(profile), 'null')));
    END IF;
END
$$;

-- A fixed retry schedule: 1 to 50 delays, each from 1 second to 1 day, none NULL.
CREATE OR REPLACE FUNCTION webhooks._check_retry_schedule(schedule interval[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF schedule IS NULL THEN
        RETURN;
    END IF;
    IF cardinality(schedule) NOT BETWEEN 1 AND 50 OR array_ndims(schedule) <> 1 THEN
        PERFORM webhooks._fail('WH023', 'retry_schedule',
            format('%s must list 1 to 50 delays, like {1 minute,5 minutes,30 minutes}', schedule));
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(schedule) d WHERE d IS NULL OR d < interval '1 second' OR d > interval '1 day') THEN
        PERFORM webhooks._fail('WH023', 'retry_schedule',
            format('%s: every delay must be from 1 second to 1 day', schedule));
    END IF;
END
$$;

-- The auto-pause window, from one minute to a year; NULL means never.
CREATE OR REPLACE FUNCTION webhooks._check_pause_after(pause_after interval)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pause_after IS NOT NULL AND (pause_after < interval '1 minute' OR pause_after > interval '365 days') THEN
        PERFORM webhooks._fail('WH015', 'pause_after',
            format('%s is out of range; expected 1 minute to 365 days, or null for never', pause_after));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION webhooks._check_pause_after_text(pause_after text)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parsed interval;
BEGIN
    IF pause_after IS NULL THEN
        RETURN;
    END IF;
    BEGIN
        parsed := pause_after::interval;
    EXCEPTION WHEN OTHERS THEN
        PERFORM webhooks._fail('WH015', 'pause_after', format('%L is not an interval (like "3 days")', left(pause_after, 100)));
    END;
    PERFORM webhooks._check_pause_after(parsed);
END
$$;

CREATE OR REPLACE FUNCTION webhooks._check_settings(
    name text, url text, max_retries integer, timeout_seconds integer,
    retry_backoff_seconds integer, headers jsonb, description text, except_id uuid)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webhooks._check_name(name, except_id);
    PERFORM webhooks._check_url(url);
    IF url ~* '^http://' AND (SELECT i.https_only FROM webhooks._installation i) THEN
        PERFORM webhooks._fail('WH024', 'url', format('%L is not an https:// URL; this installation refuses '
            'http:// (see webhooks.require_https)', url));
    END IF;
    PERFORM webhooks._check_range('max_retries', max_retries, 0, 50);
    PERFORM webhooks._check_range('timeout_seconds', timeout_seconds, 1, 300);
    PERFORM webhooks._check_range('retry_backoff_seconds', retry_backoff_seconds, 1, 86400);
    PERFORM webhooks._check_headers(headers);
    IF length(description) > 2000 THEN
        PERFORM webhooks._fail('WH013', 'description',
            format('is %s characters long; at most 2000 are allowed', length(description)));
    END IF;
END
$$;

-- max_concurrency (1-10000) and rate_limit_per_second (1-100000); NULL: no limit of its own.
CREATE OR REPLACE FUNCTION webhooks._check_limits(max_concurrency integer, rate_limit_per_second integer)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF max_concurrency IS NOT NULL THEN
        PERFORM webhooks._check_range('max_concurrency', max_concurrency, 1, 10000);
    END IF;
    IF rate_limit_per_second IS NOT NULL THEN
        PERFORM webhooks._check_range('rate_limit_per_second', rate_limit_per_second, 1, 100000);
    END IF;
END
$$;

-- The installation's retention: how long finished work is kept, from 0 to 100 years.
CREATE OR REPLACE FUNCTION webhooks._check_retention(retention interval)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Checked before any arithmetic: now() - '100000000 years' overflows.
    IF retention IS NULL OR retention < interval '0' OR retention > interval '100 years' THEN
        PERFORM webhooks._fail('WH055', 'retention', format('%s is out of range; expected an interval from '
            '0 to 100 years, like ''7 days''', coalesce(quote_literal(retention::text), 'null')));
    END IF;
END
$$;
