-- pgwebhooks: waking runners up.
--
-- A runner sleeps between claims until a NOTIFY on channel `webhooks` or its poll interval. A
-- NOTIFY is not free: at commit PostgreSQL appends it to one queue under a database-wide lock, so
-- notifying commits run one at a time. Writers therefore notify only while a runner is waiting
-- (webhooks._waiting_runners, counted in the sequence _runners_waiting): next_due_in(), which a
-- runner calls right before it sleeps, registers its session; runner_busy(), called when its
-- claims come back full, takes it out, as a runner draining full batches claims again at once
-- and needs no wake-up.
--
-- The gap this leaves: a writer that decided not to notify while every runner was busy, and
-- commits after the runner has gone to sleep. The runner therefore sleeps at most 0.25 s for
-- 10 s after it (re)registers (runner/claimer.py), so such a change waits a fraction of a
-- second; one whose transaction spans longer than that waits at most a poll interval.

-- Notify the runners if one is waiting. Identical notifications in one transaction are folded
-- into one, sent at commit. (_capture_statement has this inline.)
CREATE OR REPLACE FUNCTION webhooks._wake_runners()
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF pg_catalog.pg_sequence_last_value('webhooks._runners_waiting'::pg_catalog.regclass) OPERATOR(pg_catalog.>) 0 THEN
        PERFORM pg_catalog.pg_notify('webhooks', '');
    END IF;
END
$$;

-- Set the waiting runners' count writers read; under a lock, so two runners changing the table at
-- once each count after the other's change has committed.
CREATE OR REPLACE FUNCTION webhooks._count_waiting()
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock('webhooks._waiting_runners'::regclass::oid::integer, 0);
    PERFORM setval('webhooks._runners_waiting', (SELECT count(*) FROM webhooks._waiting_runners), true);
END
$$;

-- Register this session as a waiting runner (a no-op while it is).
CREATE OR REPLACE FUNCTION webhooks._register_waiting()
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM webhooks._waiting_runners w WHERE w.pid = pg_backend_pid()) THEN
        RETURN;
    END IF;
    -- Rows of runners that died while registered only cost writers a NOTIFY; clear them here.
    DELETE FROM webhooks._waiting_runners w WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = w.pid);
    INSERT INTO webhooks._waiting_runners (pid) VALUES (pg_backend_pid()) ON CONFLICT (pid) DO NOTHING;
    PERFORM webhooks._count_waiting();
END
$$;

CREATE OR REPLACE FUNCTION webhooks.runner_busy()
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM webhooks._waiting_runners WHERE pid = pg_backend_pid();
    IF FOUND THEN
        PERFORM webhooks._count_waiting();
    END IF;
END
$$;

REVOKE ALL ON FUNCTION webhooks._wake_runners, webhooks._count_waiting, webhooks._register_waiting,
    webhooks.runner_busy FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhooks.runner_busy TO webhooks_runner;

COMMENT ON FUNCTION webhooks.runner_busy IS
    'For the runner: this session is claiming full batches and needs no NOTIFY until its next next_due_in() call.';
