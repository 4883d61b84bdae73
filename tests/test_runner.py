"""The runner end to end: real PostgreSQL, real runner, real HTTP receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from helpers import (
    attempts_of,
    create_table,
    create_webhook,
    eventually,
    insert,
    query,
    receiver,
    runner_config,
    running,
)
from psycopg.conninfo import make_conninfo
from receivers import Reply
from standardwebhooks.webhooks import Webhook

from conftest import Server

PLAIN_SECRET = "a-plain-string-secret-for-tests"


def verify_legacy(secret: str, headers: dict[str, str], body: bytes) -> bool:
    parts = [p.split("=", 1) for p in headers["X-Webhook-Signature"].split(",")]
    timestamp = next(v for k, v in parts if k == "t")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(k == "v1" and hmac.compare_digest(v, expected) for k, v in parts)


# -- end to end ------------------------------------------------------------------------------


async def test_changes_arrive_signed_and_rollbacks_send_nothing(db: str) -> None:
    create_table(db)
    async with receiver() as rx:
        generated = create_webhook(db, rx.url, name="generated-secret")
        plain = create_webhook(db, rx.url, name="plain-secret", secret=PLAIN_SECRET)
        async with running(runner_config(db)):
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute("INSERT INTO items (label) VALUES ('apple')")
                conn.execute("UPDATE items SET qty = 5 WHERE label = 'apple'")
                conn.execute("DELETE FROM items WHERE label = 'apple'")
                with conn.transaction(force_rollback=True):
                    conn.execute("INSERT INTO items (label) VALUES ('never')")
            requests = await rx.wait_for(6, timeout=15)
            await asyncio.sleep(0.5)  # room for anything that should not come

    assert len(rx.requests) == 6
    secrets = {str(generated["id"]): generated["secret"], str(plain["id"]): PLAIN_SECRET}
    seen = Counter()
    for req in requests:
        payload = req.payload
        secret = secrets[payload["webhook_id"]]
        standard_secret = secret if secret.startswith("whsec_") else base64.b64encode(secret.encode()).decode()
        Webhook(standard_secret).verify(req.body, req.headers)  # raises if not verified
        assert verify_legacy(secret, req.headers, req.body)
        assert req.headers["webhook-id"] == payload["id"]
        assert req.headers["Content-Type"] == "application/json"
        assert req.headers["User-Agent"].startswith("pgwebhooks/")
        assert payload["table"] == "items" and payload["schema"] == "public"
        event = payload["event"]
        seen[event] += 1
        if event == "INSERT":
            assert payload["record"]["label"] == "apple" and payload["old_record"] is None
        elif event == "UPDATE":
            assert (payload["old_record"]["qty"], payload["record"]["qty"]) == (0, 5)
        else:
            assert payload["record"] == payload["old_record"] and payload["record"]["qty"] == 5
    assert seen == {"INSERT": 2, "UPDATE": 2, "DELETE": 2}
    assert all(r.payload["record"]["label"] != "never" for r in requests)


# -- retry policy ----------------------------------------------------------------------------


async def test_failing_twice_then_succeeding_takes_three_logged_attempts(db: str) -> None:
    create_table(db)
    async with receiver([Reply(500, "boom"), Reply(502, "bad gateway"), Reply(200)]) as rx:
        hook = create_webhook(db, rx.url, retry_backoff_seconds=1)
        async with running(runner_config(db)):
            insert(db, 1)
            await rx.wait_for(3, timeout=20)
            await eventually(lambda: len(attempts_of(db, hook["id"])) == 3, timeout=5)
    attempts = attempts_of(db, hook["id"])
    assert [a["status_code"] for a in attempts] == [500, 502, 200]
    assert attempts[0]["response_excerpt"] == "boom"
    assert all(a["latency_ms"] is not None and a["latency_ms"] >= 0 for a in attempts)
    assert len({r.headers["webhook-id"] for r in rx.requests}) == 1  # stable across retries
    delivery = query(db, "SELECT status, attempts FROM webhooks.get_deliveries(%s)", hook["id"])
    assert delivery == [{"status": "delivered", "attempts": 3}]


async def test_retry_after_is_honoured(db: str) -> None:
    create_table(db)
    async with receiver([Reply(429, "slow down", headers={"Retry-After": "3"}), Reply(200)]) as rx:
        create_webhook(db, rx.url, retry_backoff_seconds=1)
        async with running(runner_config(db)):
            insert(db, 1)
            requests = await rx.wait_for(2, timeout=20)
    assert len(requests) == 2
    # The webhook's own backoff would retry after at most 1.25 s.
    assert requests[1].at - requests[0].at >= 2.9


async def test_timeout_is_an_attempt_with_an_error_and_retries_end_dead(db: str) -> None:
    create_table(db)
    async with receiver([Reply(200, delay=3)]) as rx:
        hook = create_webhook(db, rx.url, timeout_seconds=1, max_retries=1, retry_backoff_seconds=1)
        async with running(runner_config(db)):
            insert(db, 1)
            await eventually(
                lambda: query(db, "SELECT status FROM webhooks.get_deliveries(%s)", hook["id"])
                == [{"status": "failed"}],
                timeout=20,
            )
    attempts = attempts_of(db, hook["id"])
    assert len(attempts) == 2  # the first try and max_retries = 1 retry
    assert all(a["status_code"] is None and "timeout" in a["error"] for a in attempts)


async def test_gone_pauses_the_webhook_and_keeps_its_queue(db: str) -> None:
    create_table(db)
    async with receiver([Reply(410, "gone")]) as rx:
        hook = create_webhook(db, rx.url)
        async with running(runner_config(db)):
            insert(db, 1)
            assert await eventually(
                lambda: query(db, "SELECT state FROM webhooks.webhook_status WHERE id = %s",
                              hook["id"])[0]["state"] == "paused",
                timeout=15,
            )
            insert(db, 3)  # three rows: a paused webhook keeps queueing, sends nothing
            await asyncio.sleep(0.5)
    info = query(db, "SELECT state, paused_reason, pending FROM webhooks.webhook_status WHERE id = %s", hook["id"])[0]
    assert info["state"] == "paused" and "410" in info["paused_reason"]
    assert len(rx.requests) == 1
    assert info["pending"] == 4  # the 410'd change and the three made while paused: nothing lost
    assert {r["status"] for r in query(db, "SELECT status FROM webhooks.get_deliveries(%s)", hook["id"])} <= {
        "pending", "queued"}


# -- many runners, crashes, restarts -----------------------------------------------------------


async def test_two_runners_share_the_outbox_without_sending_twice(db: str) -> None:
    create_table(db)
    async with receiver([Reply(200, delay=0.005)]) as rx:
        create_webhook(db, rx.url)
        async with running(runner_config(db, concurrency=20)), running(runner_config(db, concurrency=20)):
            insert(db, 400)
            await rx.wait_for(400, timeout=60)
            await asyncio.sleep(0.3)
    counts = Counter(rx.event_ids())
    assert len(counts) == 400
    assert max(counts.values()) == 1


def start_runner_process(dsn: str, *extra: str) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("pgwebhooks")
    return subprocess.Popen(
        [str(exe), "run", "--dsn", dsn, "--allow-cidr", "127.0.0.1/32", "--poll-interval", "0.2",
         "--lease-margin", "1", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


async def test_kill_9_loses_nothing(db: str) -> None:
    create_table(db)
    total = 300
    async with receiver([Reply(200, delay=0.05)]) as rx:
        create_webhook(db, rx.url, timeout_seconds=1)
        insert(db, total)
        first = start_runner_process(db, "--concurrency", "20")
        try:
            await rx.wait_for(40, timeout=30)
            assert first.poll() is None
            first.kill()  # SIGKILL: no chance to release or report anything
            first.wait(timeout=10)
            in_flight = query(db, "SELECT count(*) AS n FROM webhooks.deliveries WHERE status = 'leased'")[0]["n"]
            second = start_runner_process(db, "--concurrency", "50")
            try:
                done = await eventually(lambda: len(set(rx.event_ids())) >= total, timeout=60)
                assert done, f"only {len(set(rx.event_ids()))} of {total} delivered"
                await eventually(
                    lambda: query(db, "SELECT count(*) AS n FROM webhooks.deliveries"
                                      " WHERE status <> 'delivered'")[0]["n"] == 0, timeout=15)
            finally:
                second.send_signal(signal.SIGTERM)
                assert second.wait(timeout=30) == 0
        finally:
            if first.poll() is None:
                first.kill()
    assert in_flight > 0, "the kill should have caught deliveries in flight"
    assert len(set(rx.event_ids())) == total  # duplicates allowed, losses not
    assert query(db, "SELECT count(*) AS n FROM webhooks.deliveries WHERE status <> 'delivered'")[0]["n"] == 0


async def test_runner_survives_a_database_restart(db: str, server: Server) -> None:
    create_table(db)
    async with receiver() as rx:
        create_webhook(db, rx.url)
        async with running(runner_config(db)) as runner:
            insert(db, 100)
            await rx.wait_for(100, timeout=20)
            if server.local is not None:
                server.local.restart()
            else:  # a server we do not own: kill the runner's connections instead
                query(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND pid <> pg_backend_pid()")
            inserted = await eventually(lambda: _try_insert(db, 100), timeout=30, interval=0.5)
            assert inserted
            await rx.wait_for(200, timeout=30)
    assert len(set(rx.event_ids())) == 200
    assert runner.stats.reconnects >= 1


def _try_insert(dsn: str, count: int) -> bool:
    try:
        insert(dsn, count)
        return True
    except psycopg.OperationalError:
        return False


async def test_sigterm_finishes_in_flight_work_and_leaves_nothing_leased(db: str) -> None:
    create_table(db)
    async with receiver([Reply(200, delay=0.5)]) as rx:
        create_webhook(db, rx.url, timeout_seconds=5)
        insert(db, 100)
        proc = start_runner_process(db, "--concurrency", "10", "--shutdown-grace", "5")
        try:
            await rx.wait_for(5, timeout=20)
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0
    states = {r["status"]: r["n"] for r in query(
        db, "SELECT status, count(*) AS n FROM webhooks.deliveries GROUP BY status")}
    assert "leased" not in states
    assert states.get("delivered", 0) >= 5 and states.get("pending", 0) > 0


# -- destinations ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "[::1]", "localhost"])
async def test_private_destinations_are_refused_by_default(db: str, host: str) -> None:
    create_table(db)
    async with receiver() as rx:
        url = rx.url.replace("127.0.0.1", host)
        hook = create_webhook(db, url, max_retries=0)
        async with running(runner_config(db, allowed_cidrs=())):
            insert(db, 1)
            await eventually(lambda: query(db, "SELECT paused FROM webhooks.webhooks WHERE id = %s",
                                           hook["id"])[0]["paused"], timeout=15)
    # Refused by the runner itself: no attempt spent, the webhook paused with the way out.
    assert attempts_of(db, hook["id"]) == []
    status = query(db, "SELECT * FROM webhooks.get_webhook_status() WHERE id = %s", hook["id"])[0]
    assert status["state"] == "paused" and "allow it with" in status["paused_reason"]
    assert rx.requests == []


async def test_loopback_is_delivered_once_allowed(db: str) -> None:
    create_table(db)
    async with receiver() as rx:
        create_webhook(db, rx.url.replace("127.0.0.1", "localhost"))
        async with running(runner_config(db, allowed_cidrs=(), allow_private_networks=True)):
            insert(db, 2)
            requests = await rx.wait_for(2, timeout=15)
    assert len(requests) == 2


# -- the database refusing a report ------------------------------------------------------------


async def test_a_refused_report_is_retried_through_lease_expiry_not_lost(db: str) -> None:
    """complete() failing with a non-connection error (here: a revoked grant) must neither stop
    the runner nor block later results; the unreported deliveries go out again after their lease."""
    create_table(db)
    role = f"runner_{os.urandom(3).hex()}"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE webhooks_runner")
        conn.execute("REVOKE EXECUTE ON FUNCTION webhooks.complete(jsonb) FROM webhooks_runner")
    runner_dsn = make_conninfo(db, user=role)
    try:
        async with receiver() as rx:
            hook = create_webhook(db, rx.url, timeout_seconds=1)
            async with running(runner_config(runner_dsn, lease_margin_seconds=1)) as runner:
                insert(db, 3)
                await rx.wait_for(3, timeout=15)
                assert await eventually(lambda: runner.stats.unreported == 3, timeout=10)
                with psycopg.connect(db, autocommit=True) as conn:
                    conn.execute("GRANT EXECUTE ON FUNCTION webhooks.complete(jsonb) TO webhooks_runner")
                delivered = await eventually(
                    lambda: [r["status"] for r in query(db, "SELECT status FROM webhooks.get_deliveries(%s)",
                                                        hook["id"])] == ["delivered"] * 3,
                    timeout=30,
                )
            assert delivered
            assert len(set(rx.event_ids())) == 3 and len(rx.requests) >= 6  # sent again after the lease ran out
            assert runner.stats.delivered >= 6
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("GRANT EXECUTE ON FUNCTION webhooks.complete(jsonb) TO webhooks_runner")
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


# -- concurrency limits and claimed-but-waiting work ---------------------------------------------


async def test_per_webhook_limit_holds_with_work_claimed_ahead(db: str) -> None:
    create_table(db)
    async with receiver([Reply(200, delay=0.2)]) as slow, receiver() as fast:
        create_table(db, "other")
        create_webhook(db, slow.url, table="items")
        create_webhook(db, fast.url, table="other")
        async with running(runner_config(db, concurrency=10, per_webhook_concurrency=3)):
            insert(db, 15)
            insert(db, 30, table="other")
            await fast.wait_for(30, timeout=15)
            fast_done = time.monotonic()
            await slow.wait_for(15, timeout=20)
    assert slow.max_concurrent["/hook"] == 3  # the limit, reached and never passed
    # The slow endpoint's backlog (15 x 0.2 s / 3 = 1 s at best) did not hold the other one up.
    assert fast_done < slow.requests[-1].at
    assert len(set(slow.event_ids())) == 15 and len(set(fast.event_ids())) == 30


async def test_work_that_waited_past_its_lease_is_handed_back_not_sent_late(db: str) -> None:
    """A job claimed ahead waits for a slot; if the slots stay busy past the point where its send
    could still finish inside the lease, it is released and claimed again, never sent late."""
    create_table(db)
    create_table(db, "other")
    async with receiver([Reply(200, delay=4)]) as slow, receiver() as quick:
        # Two slow webhooks, one slot each: one webhook may hold at most 80% of the slots.
        create_webhook(db, slow.url, table="items", timeout_seconds=10)
        create_webhook(db, slow.url, table="items", timeout_seconds=10)
        quick_hook = create_webhook(db, quick.url, table="other", timeout_seconds=1)
        config = runner_config(db, concurrency=2, per_webhook_concurrency=2, lease_margin_seconds=1)
        async with running(config) as runner:
            insert(db, 1)  # both slots busy for 4 s
            await slow.wait_for(2, timeout=10)
            insert(db, 1, table="other")  # claimed ahead; may start until 1.5 s after its claim
            await quick.wait_for(1, timeout=20)
            await eventually(lambda: query(db, "SELECT status FROM webhooks.get_deliveries(%s)", quick_hook["id"])
                             == [{"status": "delivered"}], timeout=10)
        assert runner.stats.released >= 1
    attempts = attempts_of(db, quick_hook["id"])
    # One attempt logged, under a new number: the released lease's is never reused.
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(2, 200)]
    spent = query(db, "SELECT attempts - free_attempts AS n FROM webhooks.deliveries WHERE webhook_id = %s",
                  quick_hook["id"])
    assert spent == [{"n": 1}]  # the release did not count
    assert len(quick.requests) == 1
