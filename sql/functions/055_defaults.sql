-- Defaults that survive an outage, and the runner's own refusals.

-- The retry schedule of a webhook created without retry settings: Svix's, eight attempts over
-- about 27 hours (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), so a receiver's deploy or a night's
-- outage ends in deliveries, not in manual replays. Existing webhooks keep what they have.
CREATE OR REPLACE FUNCTION webhooks._default_retry_schedule()
RETURNS interval[]
LANGUAGE sql IMMUTABLE
AS $$
    SELECT ARRAY['5 seconds', '5 minutes', '30 minutes', '2 hours', '5 hours', '10 hours', '10 hours']::interval[]
$$;

-- For the runner: deliveries it would not send because its own network policy refuses their
-- destination (a private address without --allow-cidr). Sending was never tried, so no attempt
-- is spent: each goes back to pending under its lease's terms, as in release(), and its webhook
-- is paused with the runner's reason (the `paused` alert says so; resume_webhook sends the queue
-- once the runner is allowed). `refusals` is [{"delivery_id", "attempt", "reason"}]; returns how
-- many deliveries were handed back.
CREATE OR REPLACE FUNCTION webhooks.hold_refused(refusals jsonb)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
DECLARE
    held integer;
BEGIN
    PERFORM webhooks._check_json_array(refusals, 'refusals', '{
        "delivery_id": ["integer", -9223372036854775808, 9223372036854775807, true],
        "attempt": ["integer", -2147483648, 2147483647, true],
        "reason": ["string", null, null, false]}');
    WITH back AS (
        UPDATE webhooks.deliveries d
        SET status = 'pending', attempts = d.attempts - 1, next_attempt_at = now()
        FROM jsonb_to_recordset(refusals) AS r(delivery_id bigint, attempt integer, reason text)
        WHERE d.id = r.delivery_id AND d.status = 'leased' AND d.attempts = r.attempt
        RETURNING d.webhook_id, r.reason
    ), paused AS (
        UPDATE webhooks.webhooks w
        SET paused = true, paused_at = now(), updated_at = now(),
            paused_reason = left(format('the runner refused to send: %s; then resume_webhook',
                                        coalesce(b.reason, 'its network policy refuses the destination; '
                                                 || 'allow it with --allow-private-networks or --allow-cidr')), 2000)
        FROM (SELECT DISTINCT ON (b.webhook_id) b.webhook_id, b.reason FROM back b ORDER BY b.webhook_id) b
        WHERE w.id = b.webhook_id AND NOT w.paused
    )
    SELECT count(*) INTO held FROM back;
    RETURN held;
END
$$;

-- Restoring a dump as the database's owner (no superuser) needs webhooks_capture to hold CREATE on
-- the `webhooks` schema while pg_restore hands it the capture functions (ALTER FUNCTION ... OWNER
-- TO checks it; the dump's grants come only at its end), so the README has the owner run
-- `ALTER DEFAULT PRIVILEGES GRANT CREATE ON SCHEMAS TO webhooks_capture` first. The `migrate`
-- that follows the restore takes that default back (and 031 the schema grant), so the window
-- lasts only as long as the restore.
ALTER DEFAULT PRIVILEGES REVOKE CREATE ON SCHEMAS FROM webhooks_capture;
