"""Defaults that survive an outage, refusals that cost nothing, replays that happen once.

Time is driven by SQL, never slept: "a minute passes" moves every pending delivery's due time
(and an open circuit's probe time) that much closer, and the runner does the rest.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from helpers import (
    attempts_of,
    create_table,
    create_webhook,
    empty_database,
    eventually,
    insert,
    install_0_1_0,
    query,
    receiver,
    runner_config,
    running,
)
from psycopg.types.json import Jsonb
from receivers import Reply

from conftest import Server
from pgwebhooks import migrations

SVIX = [timedelta(seconds=5), timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2),
        timedelta(hours=5), timedelta(hours=10), timedelta(hours=10)]


def statuses(dsn: str, webhook_id: Any) -> list[str]:
    return [r["status"] for r in query(dsn, "SELECT status FROM webhooks.deliveries WHERE webhook_id = %s"
                                            " ORDER BY id", webhook_id)]


def advance(dsn: str, seconds: float) -> None:
    """Let `seconds` pass for the queue: what was due that much later is due that much sooner."""
    query(dsn, "UPDATE webhooks.deliveries SET next_attempt_at = next_attempt_at - make_interval(secs => %s)"
               " WHERE status = 'pending' RETURNING id", seconds)
    query(dsn, "UPDATE webhooks.endpoints SET retry_at = retry_at - make_interval(secs => %s)"
               " WHERE retry_at IS NOT NULL RETURNING webhook_id", seconds)


def next_due_in(dsn: str, webhook_id: Any) -> float | None:
    row = query(dsn, "SELECT extract(epoch FROM min(next_attempt_at) - now())::float8 AS s"
                     " FROM webhooks.deliveries WHERE webhook_id = %s AND status = 'pending'", webhook_id)[0]
    return row["s"]


# -- the default schedule --------------------------------------------------------------------


def test_a_new_webhook_retries_for_more_than_a_day_by_default(db: str) -> None:
    create_table(db)
    hook = create_webhook(db, "https://example.com/hook")
    shown = query(db, "SELECT * FROM webhooks.get_webhook(%s)", hook["id"])[0]
    assert shown["retry_schedule"] == SVIX and shown["max_retries"] == len(SVIX)
    assert sum(SVIX, timedelta()) >= timedelta(days=1)
    # Each retry waits its step of the schedule.
    delays = [query(db, "SELECT webhooks._retry_delay(5, %s, 503, NULL, %s) AS d", n, SVIX)[0]["d"]
              for n in range(1, len(SVIX) + 1)]
    assert delays == SVIX


@pytest.mark.parametrize(("options", "retries", "backoff"), [
    ({"max_retries": 2}, 2, 5),
    ({"retry_backoff_seconds": 7}, 3, 7),
    ({"max_retries": 0, "retry_backoff_seconds": 1}, 0, 1),
])
def test_explicit_retry_settings_keep_the_exponential_backoff(db: str, options: dict, retries: int,
                                                              backoff: int) -> None:
    create_table(db)
    hook = create_webhook(db, "https://example.com/hook", **options)
    assert (hook["retry_schedule"], hook["max_retries"], hook["retry_backoff_seconds"]) == (None, retries, backoff)


def test_an_explicit_schedule_wins(db: str) -> None:
    create_table(db)
    hook = create_webhook(db, "https://example.com/hook", retry_schedule=["1 minute", "2 minutes"])
    assert hook["retry_schedule"] == [timedelta(minutes=1), timedelta(minutes=2)] and hook["max_retries"] == 2


def test_upgrading_keeps_the_retry_settings_of_existing_webhooks(server: Server) -> None:
    with empty_database(server, "keep") as dsn:
        install_0_1_0(dsn)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE items (id int PRIMARY KEY)")
        query(dsn, "SELECT * FROM webhooks.create_webhook(name => 'old', url => 'https://example.com/',"
                   " events => %s)", Jsonb([{"table": "items"}]))
        migrations.migrate(dsn)
        old = query(dsn, "SELECT max_retries, retry_backoff_seconds, retry_schedule FROM webhooks.webhooks")
        assert old == [{"max_retries": 3, "retry_backoff_seconds": 5, "retry_schedule": None}]
        new = query(dsn, "SELECT * FROM webhooks.create_webhook(name => 'new', url => 'https://example.com/',"
                         " events => %s)", Jsonb([{"table": "items"}]))[0]
        assert new["retry_schedule"] == SVIX


async def test_a_one_minute_outage_with_defaults_loses_nothing(db: str) -> None:
    create_table(db)
    outage = [Reply(503, "deploying")] * 1000
    async with receiver(outage) as rx:
        hook = create_webhook(db, rx.url)
        async with running(runner_config(db)):
            insert(db, 3)
            # First attempts during the outage.
            assert await eventually(lambda: len(attempts_of(db, hook["id"])) == 3, timeout=20)
            assert await eventually(lambda: statuses(db, hook["id"]) == ["pending"] * 3, timeout=10)
            # The outage lasts a minute: let time pass in steps to each next due time within it.
            elapsed = 0.0
            for _ in range(20):  # bounded; the schedule's second step is already past the minute
                due = next_due_in(db, hook["id"])
                assert due is not None
                if elapsed + due > 60:
                    break
                made = len(attempts_of(db, hook["id"]))
                advance(db, max(due, 0))
                elapsed += max(due, 0)
                assert await eventually(lambda m=made: len(attempts_of(db, hook["id"])) > m, timeout=20)
                assert await eventually(lambda: "leased" not in statuses(db, hook["id"]), timeout=10)
            assert "failed" not in statuses(db, hook["id"])
            failed_attempts = len(attempts_of(db, hook["id"]))
            assert failed_attempts >= 6  # +0 s and +5 s each, refused by the receiver
            # The endpoint is back: the next retry (at most 5 minutes on) delivers everything.
            rx.script = [Reply(200)]
            due = next_due_in(db, hook["id"])
            assert due is not None and elapsed + due <= 6 * 60
            advance(db, due + 1)
            assert await eventually(lambda: statuses(db, hook["id"]) == ["delivered"] * 3, timeout=30)
    delivered = {r.headers["webhook-id"] for r in rx.requests[failed_attempts:]}
    assert len(delivered) == 3 and all(r.path == "/hook" for r in rx.requests)


# -- the runner's own refusal ------------------------------------------------------------------


async def test_a_refused_destination_spends_no_attempt_and_pauses_the_webhook(db: str) -> None:
    create_table(db)
    async with receiver() as rx:
        hook = create_webhook(db, rx.url, max_retries=0)
        with psycopg.connect(db, autocommit=True) as listener:
            listener.execute("LISTEN webhooks_alerts")
            async with running(runner_config(db, allowed_cidrs=())) as runner:
                insert(db, 2)
                assert await eventually(lambda: query(db, "SELECT paused FROM webhooks.webhooks WHERE id = %s",
                                                      hook["id"])[0]["paused"], timeout=20)
                assert await eventually(lambda: "leased" not in statuses(db, hook["id"]), timeout=10)
                assert runner.stats.refused_by_policy >= 1 and runner.stats.failed_attempts == 0
            alerts = [n.payload for n in listener.notifies(timeout=1, stop_after=5)]
        assert rx.requests == []
        assert attempts_of(db, hook["id"]) == []
        rows = query(db, "SELECT status, attempts FROM webhooks.deliveries WHERE webhook_id = %s", hook["id"])
        assert rows == [{"status": "pending", "attempts": 0}] * 2
        shown = query(db, "SELECT * FROM webhooks.get_webhook_status() WHERE id = %s", hook["id"])[0]
        assert shown["state"] == "paused" and "--allow-cidr" in shown["paused_reason"]
        assert "127.0.0.1 is a loopback address" in shown["paused_reason"]
        assert any('"paused"' in a for a in alerts), alerts
        # Allowed, and resumed like any pause: both arrive, each on its first attempt.
        async with running(runner_config(db, allowed_cidrs=("127.0.0.0/8",))):
            query(db, "SELECT webhooks.resume_webhook(%s)", hook["id"])
            assert await eventually(lambda: statuses(db, hook["id"]) == ["delivered"] * 2, timeout=20)
    assert len(rx.requests) == 2
    assert [a["attempt"] for a in attempts_of(db, hook["id"])] == [1, 1]


def test_hold_refused_takes_only_live_leases(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE items (id serial PRIMARY KEY)")
    hook = conn.execute("SELECT id FROM webhooks.create_webhook(name => 'h', url => 'http://127.0.0.1:9/',"
                        " events => %s)", (Jsonb([{"table": "items"}]),)).fetchone()
    assert hook is not None
    conn.execute("INSERT INTO items DEFAULT VALUES")
    leased = conn.execute("SELECT delivery_id, attempt FROM webhooks.claim(10, 30)").fetchall()
    assert len(leased) == 1
    delivery, attempt = leased[0]
    stale = conn.execute("SELECT webhooks.hold_refused(%s)",
                         (Jsonb([{"delivery_id": delivery, "attempt": attempt + 1}]),)).fetchone()
    assert stale == (0,)
    assert conn.execute("SELECT paused FROM webhooks.webhooks").fetchone() == (False,)
    held = conn.execute("SELECT webhooks.hold_refused(%s)",
                        (Jsonb([{"delivery_id": delivery, "attempt": attempt, "reason": "x is private"}]),))
    assert held.fetchone() == (1,)
    row = conn.execute("SELECT d.status, d.attempts, w.paused, w.paused_reason FROM webhooks.deliveries d"
                       " JOIN webhooks.webhooks w ON w.id = d.webhook_id").fetchone()
    assert row is not None and row[:3] == ("pending", 0, True) and "x is private" in row[3]
    with pytest.raises(psycopg.Error, match="refusals"):
        conn.execute("SELECT webhooks.hold_refused(%s)", (Jsonb([{"delivery_id": "x", "attempt": 1}]),))


# -- replay_failed ---------------------------------------------------------------------------------


def _fail_all(conn: psycopg.Connection, count: int) -> Any:
    conn.execute("CREATE TABLE items (id serial PRIMARY KEY)")
    hook = conn.execute("SELECT id FROM webhooks.create_webhook(name => 'h', url => 'http://127.0.0.1:9/',"
                        " events => %s, max_retries => 0)", (Jsonb([{"table": "items"}]),)).fetchone()
    assert hook is not None
    conn.execute("INSERT INTO items SELECT FROM generate_series(1, %s)", (count,))
    leased = conn.execute("SELECT delivery_id, attempt FROM webhooks.claim(100, 30)").fetchall()
    results = [{"delivery_id": d, "attempt": a, "error": "connection refused"} for d, a in leased]
    conn.execute("SELECT * FROM webhooks.complete(%s)", (Jsonb(results),))
    assert conn.execute("SELECT count(*) FROM webhooks.deliveries WHERE status = 'failed'").fetchone() == (count,)
    return hook[0]


def test_replay_failed_replays_each_failure_once_and_dry_run_only_counts(conn: psycopg.Connection) -> None:
    hook = _fail_all(conn, 3)
    replay = "SELECT webhooks.replay_failed(%s, dry_run => %s)"
    assert conn.execute(replay, (hook, True)).fetchone() == (3,)
    assert conn.execute("SELECT count(*) FROM webhooks.deliveries").fetchone() == (3,)
    assert conn.execute(replay, (hook, False)).fetchone() == (3,)
    assert conn.execute(replay, (hook, False)).fetchone() == (0,)  # nothing new
    assert conn.execute(replay, (hook, True)).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM webhooks.deliveries").fetchone() == (6,)
    # One replay per failure, of the same events.
    pairs = conn.execute("SELECT count(DISTINCT (capture_id, n)), count(*) FROM webhooks.deliveries"
                         " WHERE status = 'pending'").fetchone()
    assert pairs == (3, 3)
    with pytest.raises(psycopg.Error, match=r"WH045|dry_run"):
        conn.execute(replay, (hook, None))


def test_concurrent_replay_failed_calls_queue_each_failure_once(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as c:
        hook = _fail_all(c, 5)
    with psycopg.connect(db) as a, psycopg.connect(db) as b:
        first = a.execute("SELECT webhooks.replay_failed(%s)", (hook,)).fetchone()
        b.execute("SET lock_timeout = '20s'")

        async def second() -> Any:
            return await asyncio.to_thread(lambda: b.execute("SELECT webhooks.replay_failed(%s)",
                                                             (hook,)).fetchone())

        async def both() -> Any:
            task = asyncio.create_task(second())
            await asyncio.sleep(0.3)  # b waits on a's row locks (or has not started; either is fine)
            a.commit()
            return await task

        other = asyncio.run(both())
        b.commit()
    assert first == (5,) and other == (0,)
    assert query(db, "SELECT count(*) AS n FROM webhooks.deliveries")[0]["n"] == 10


# -- events as strings, and event types still in use ----------------------------------------------


def test_string_array_events_are_event_types(conn: psycopg.Connection) -> None:
    conn.execute("SELECT webhooks.create_event_type('order.completed')")
    conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    row = conn.execute("SELECT events FROM webhooks.create_webhook(name => 'flux', url => 'https://e.com/',"
                       " events => %s)", (Jsonb(["order.completed", "user.*", {"table": "orders"}]),)).fetchone()
    assert row is not None
    assert row[0] == [{"table": "public.orders", "operations": ["INSERT", "UPDATE", "DELETE"]},
                      {"event_type": "order.completed"}, {"event_type": "user.*"}]
    conn.execute("SELECT webhooks.publish('order.completed', '{}')")
    assert len(conn.execute("SELECT * FROM webhooks.claim(10, 30)").fetchall()) == 1
    with pytest.raises(psycopg.Error, match=r'events\[0\]: "orders" is not an event type.*\{"table": "orders"\}'):
        conn.execute("SELECT webhooks.create_webhook('t', 'https://e.com/', '[\"orders\"]')")
    with pytest.raises(psycopg.Error, match=r"WH021|not declared"):
        conn.execute("SELECT webhooks.create_webhook('u', 'https://e.com/', '[\"order.unknown\"]')")
    with pytest.raises(psycopg.Error, match=r"events\[1\]"):
        conn.execute("SELECT webhooks.create_webhook('v', 'https://e.com/', '[\"order.completed\", 5]')")


def test_a_type_reached_by_a_pattern_cannot_be_deleted(conn: psycopg.Connection) -> None:
    conn.execute("SELECT webhooks.create_event_type('order.completed')")
    hook = conn.execute("SELECT id FROM webhooks.create_webhook('p', 'https://e.com/', '[\"order.*\"]')").fetchone()
    assert hook is not None
    with pytest.raises(psycopg.DatabaseError) as refused:
        conn.execute("SELECT webhooks.delete_event_type('order.completed')")
    assert refused.value.sqlstate == "WH025" and "'order.*'" in str(refused.value)
    conn.execute("SELECT webhooks.update_webhook(%s, '{\"events\": [\"user.*\"]}')", (hook[0],))
    conn.execute("SELECT webhooks.delete_event_type('order.completed')")
    assert conn.execute("SELECT count(*) FROM webhooks.event_types WHERE name = 'order.completed'").fetchone() == (0,)
