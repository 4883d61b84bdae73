-- pgwebhooks: retry policy. When a failed delivery is tried again.

-- _retry_delay takes the webhook's retry_schedule since 0.2.
DROP FUNCTION IF EXISTS webhooks._retry_delay(integer, integer, integer, integer);

-- How long to wait before attempt `attempts` + 1: the webhook's retry_schedule when it has one
-- (its attempts-th delay; the last one repeats should a delivery get more attempts), else
-- exponential from the webhook's backoff, with ±25% jitter so that a burst of failures does not
-- retry in lockstep, capped at a day. A Retry-After from a 429 or 503 is honoured instead of the
-- backoff (capped at a day as well), and wins over a schedule's delay when it is longer.
CREATE OR REPLACE FUNCTION webhooks._retry_delay(
    backoff_seconds integer, attempts integer, status_code integer, retry_after_seconds integer,
    schedule interval[] DEFAULT NULL)
RETURNS interval
LANGUAGE sql VOLATILE
AS $$
    SELECT CASE
        WHEN schedule IS NOT NULL AND cardinality(schedule) > 0 THEN greatest(
            schedule[least(greatest(attempts, 1), cardinality(schedule))],
            CASE WHEN status_code IN (429, 503) AND retry_after_seconds IS NOT NULL
                 THEN make_interval(secs => least(greatest(retry_after_seconds, 0), 86400)) END)
        ELSE make_interval(secs => CASE
            WHEN status_code IN (429, 503) AND retry_after_seconds IS NOT NULL
                THEN least(greatest(retry_after_seconds, 0), 86400)
            -- The jitter goes inside the cap: applied after it, a day's cap became up to 30 hours.
            ELSE least(backoff_seconds * power(2, least(attempts - 1, 30)) * (0.75 + random() * 0.5), 86400)
        END)
    END
$$;

-- The retry schedule of a webhook created without retry settings: Svix's, eight attempts over
-- about 27 hours (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), so a receiver's deploy or a night's
-- outage ends in deliveries, not in manual replays. Existing webhooks keep what they have.
CREATE OR REPLACE FUNCTION webhooks._default_retry_schedule()
RETURNS interval[]
LANGUAGE sql IMMUTABLE
AS $$
    SELECT ARRAY['5 seconds', '5 minutes', '30 minutes', '2 hours', '5 hours', '10 hours', '10 hours']::interval[]
$$;

COMMENT ON FUNCTION webhooks._default_retry_schedule IS
    'The retry schedule of a webhook created without retry settings (about 27 hours).';
