-- pgwebhooks: when the runner should ask claim() (060) again.

-- Seconds until claim() may have something new to hand out, for a runner deciding how long to
-- sleep (NOTIFY aside): 0 while some webhook has due work and room, else the earliest of a
-- scheduled retry, a lease running out, a circuit's probe and a rate limit's next token. NULL
-- when nothing is scheduled; a webhook at its concurrency limit counts only once a send of it
-- ends, which the runner holding that send knows first. Asking registers the session as a
-- waiting runner, which writers then NOTIFY (028_wakeups.sql).
CREATE OR REPLACE FUNCTION webhooks.next_due_in(per_webhook_limit integer DEFAULT NULL,
                                                skip_webhooks uuid[] DEFAULT '{}')
RETURNS double precision
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    floors jsonb := webhooks._open_floors();
    routed double precision;
    queued double precision;
BEGIN
    -- PL/pgSQL rather than SQL for its cached plan: the runner asks after every short claim.
    PERFORM webhooks._register_waiting();
    PERFORM webhooks._rest_webhooks(floors);
    PERFORM webhooks._rest_routes();
    routed := webhooks._cursors_due_in();
    IF routed = 0 THEN
        -- Published events to give out (041_cursors.sql), unless the restore check is not settled
        -- (as for captures below: claim() gives nothing until it is).
        RETURN CASE WHEN current_setting('pgwebhooks.identity_checked', true) IS NOT DISTINCT FROM webhooks._identity_token()
                         OR EXISTS (SELECT 1 FROM webhooks._installation i WHERE i.identity = webhooks._database_identity())
                    THEN 0 ELSE 1 END;
    END IF;
    queued := (SELECT CASE
        -- Captures to fan out: now, unless this session's restore check is not settled (another
        -- transaction is recording a copy's new salt, see _ensure_identity): claim() fans out
        -- nothing until it commits, so asking at once would only spin.
        WHEN EXISTS (SELECT 1 FROM webhooks.captures c
                     WHERE c.fanned_out < c.row_count AND c.id >= coalesce((floors ->> 'captures')::bigint, 0)) THEN
            CASE WHEN current_setting('pgwebhooks.identity_checked', true) IS NOT DISTINCT FROM webhooks._identity_token()
                      OR EXISTS (SELECT 1 FROM webhooks._installation i WHERE i.identity = webhooks._database_identity())
                 THEN 0 ELSE 1 END
        -- (greatest() ignores NULLs: NULL, nothing scheduled, must not become 0, "now".)
        ELSE (SELECT CASE WHEN min(x.due) IS NOT NULL
                          THEN greatest(extract(epoch FROM min(x.due) - now())::float8, 0) END FROM (
            SELECT CASE
                WHEN e.circuit = 'open' AND e.retry_at > now() THEN e.retry_at
                WHEN n.first_due > now() THEN n.first_due
                WHEN webhooks._room(w.id, w.max_concurrency, per_webhook_limit, NULL, e.circuit, 0, now())
                     <= 0 THEN NULL
                WHEN w.rate_limit_per_second IS NOT NULL
                     AND webhooks._tokens(w.rate_limit_per_second, e.tokens, e.tokens_at) < 1
                    THEN now() + make_interval(secs => (1 - webhooks._tokens(w.rate_limit_per_second, e.tokens,
                                                        e.tokens_at)) / w.rate_limit_per_second)
                ELSE now()
            END AS due
            FROM webhooks._unrested() u  -- as in _due_webhooks
            CROSS JOIN LATERAL (SELECT e.* FROM webhooks.endpoints e WHERE e.webhook_id = u.webhook_id OFFSET 0) e
            CROSS JOIN LATERAL (SELECT w.* FROM webhooks.webhooks w WHERE w.id = e.webhook_id OFFSET 0) w
            CROSS JOIN LATERAL (
                SELECT d.next_attempt_at AS first_due FROM webhooks.deliveries d
                WHERE d.webhook_id = w.id AND d.status IN ('pending', 'leased')
                  AND (SELECT o.id FROM webhooks.deliveries o  -- first: see _due_webhooks
                       WHERE (o.webhook_id, o.id + 0) >= (w.id, coalesce((floors ->> w.id::text)::bigint, 0))
                         AND o.webhook_id = w.id AND o.status IN ('pending', 'leased')
                         AND o.id + 0 >= coalesce((floors ->> w.id::text)::bigint, 0)
                       ORDER BY o.webhook_id, o.id + 0 LIMIT 1) IS NOT NULL
                ORDER BY d.next_attempt_at LIMIT 1
            ) n
            WHERE w.enabled AND NOT w.paused AND w.id <> ALL (coalesce(skip_webhooks, '{}'))
        ) x)
    END);
    RETURN CASE WHEN queued IS NULL THEN routed WHEN routed IS NULL THEN queued ELSE least(queued, routed) END;
END
$$;

GRANT EXECUTE ON FUNCTION webhooks.next_due_in TO webhooks_runner;

COMMENT ON FUNCTION webhooks.next_due_in IS
    'For the runner: seconds until claim() may have more to hand out (0: now; NULL: nothing scheduled).';
