"""Writers NOTIFY only while a runner waits (sql/functions/028_wakeups.sql).

A runner registers by asking next_due_in() before it sleeps and says runner_busy() while its
claims come back full; writers read a sequence holding how many runners wait. These tests hold
every part to it with real sessions: no notification without a waiting runner, one with, none
while the runner is busy; stale registrations of dead runners cleared; no application role can
silence a waiting runner; and a real runner still delivers a change made while it was busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from outbox_helpers import collect_notifies, create_webhook, scalar
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb
from receivers import ScriptedReceiver

from pgwebhooks.worker import Runner, RunnerConfig

WRITES = {
    "one-row insert": "INSERT INTO bulk VALUES ({k}, 1)",
    "several rows": "INSERT INTO bulk VALUES ({k} + 1000, 1), ({k} + 2000, 2)",
    "one-row update": "UPDATE bulk SET v = v + 1 WHERE id = {k} + 100",
    "one-row delete": "DELETE FROM bulk WHERE id = {k} + 100",
}


def waiting(conn: psycopg.Connection) -> int:
    return scalar(conn, "SELECT pg_sequence_last_value('webhooks._runners_waiting')") or 0


@pytest.mark.parametrize("write", list(WRITES))
def test_a_write_notifies_only_while_a_runner_waits(db, conn, table, write) -> None:
    create_webhook(conn, operations=["INSERT", "UPDATE", "DELETE"])
    conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(101, 103) g")
    with psycopg.connect(db, autocommit=True) as runner:
        runner.execute("LISTEN webhooks")
        collect_notifies(runner, 0.2)  # nothing of the setup counts
        conn.execute(WRITES[write].format(k=1))
        assert collect_notifies(runner, 0.5) == [], "nobody waits: the commit must skip the NOTIFY"

        runner.execute("SELECT webhooks.next_due_in()")  # about to sleep: registered
        assert waiting(conn) == 1
        conn.execute(WRITES[write].format(k=2))
        assert len(collect_notifies(runner, 2.0)) == 1

        runner.execute("SELECT webhooks.runner_busy()")  # claiming full batches
        assert waiting(conn) == 0
        conn.execute(WRITES[write].format(k=3))
        assert collect_notifies(runner, 0.5) == []


def test_publish_and_filtered_captures_notify_a_waiting_runner(db, conn, table) -> None:
    conn.execute("SELECT webhooks.create_event_type('order.completed')")
    conn.execute("SELECT webhooks.create_webhook('events', 'https://e.example', '[{\"event_type\": \"order.*\"}]')")
    conn.execute("SELECT webhooks.create_webhook('filtered', 'https://f.example', %s)",
                 (Jsonb([{"table": "bulk", "where": "v > 10"}]),))
    with psycopg.connect(db, autocommit=True) as runner:
        runner.execute("LISTEN webhooks")
        runner.execute("SELECT webhooks.next_due_in()")
        collect_notifies(runner, 0.2)
        conn.execute("SELECT webhooks.publish('order.completed', '{\"id\": 1}')")
        assert len(collect_notifies(runner, 2.0)) == 1
        conn.execute("INSERT INTO bulk VALUES (1, 11)")
        assert len(collect_notifies(runner, 2.0)) == 1


def test_dead_runners_registrations_are_cleared(db, conn) -> None:
    a = psycopg.connect(db, autocommit=True)
    with psycopg.connect(db, autocommit=True) as b:
        a.execute("SELECT webhooks.next_due_in()")
        b.execute("SELECT webhooks.next_due_in()")
        assert waiting(conn) == 2
        b.execute("SELECT webhooks.next_due_in()")  # asking again registers nothing more
        assert waiting(conn) == 2
        a_pid = scalar(a, "SELECT pg_backend_pid()")
        conn.execute("SELECT pg_terminate_backend(%s)", (a_pid,))
        a.close()
        b.execute("SELECT webhooks.runner_busy()")
        assert waiting(conn) == 1  # only the dead one is left: writers keep notifying, harmlessly
        b.execute("SELECT webhooks.next_due_in()")  # the next registration clears it
        assert waiting(conn) == 1
        assert scalar(conn, "SELECT count(*) FROM webhooks._waiting_runners WHERE pid = %s", a_pid) == 0


def test_no_application_role_can_silence_a_waiting_runner(db, conn, table) -> None:
    """An application that could say "busy" for the runner, or zero the count, would delay every
    webhook's deliveries by a poll interval."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {role} LOGIN")
    conn.execute(f"GRANT INSERT, SELECT ON bulk TO {role}")
    create_webhook(conn)
    try:
        with psycopg.connect(db, autocommit=True) as runner, \
                psycopg.connect(make_conninfo(db, user=role), autocommit=True) as app:
            runner.execute("LISTEN webhooks")
            runner.execute("SELECT webhooks.next_due_in()")
            collect_notifies(runner, 0.2)
            for attack in ("SELECT webhooks.runner_busy()",
                           "SELECT setval('webhooks._runners_waiting', 0)",
                           "DELETE FROM webhooks._waiting_runners",
                           "SELECT webhooks._count_waiting()"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    app.execute(attack)
            app.execute("INSERT INTO bulk VALUES (7, 7)")
            assert len(collect_notifies(runner, 2.0)) == 1  # the neighbour is still woken
            assert waiting(conn) == 1
    finally:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


@contextlib.asynccontextmanager
async def runner_of_its_own_role(db: str, table: str) -> AsyncIterator[tuple[str, ScriptedReceiver]]:
    """A real runner (30 s poll interval: only a NOTIFY or its settling polls wake it) logged in as
    a fresh webhooks_runner role, a receiver, and `table` to watch; yields (role, receiver)."""
    role = f"runner_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE webhooks_runner")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id serial PRIMARY KEY, label text)")
    rx = await ScriptedReceiver().start()
    config = RunnerConfig(dsn=make_conninfo(db, user=role), poll_interval=30.0, batch_size=10,
                          allowed_cidrs=("127.0.0.1/32",), reconnect_min=0.05, reconnect_max=0.5,
                          shutdown_grace=5.0)
    runner = Runner(config)
    task = asyncio.create_task(runner.run())
    try:
        yield role, rx
    finally:
        runner.request_stop()
        await asyncio.wait_for(task, timeout=30)
        await rx.stop()
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


async def test_a_busy_runner_still_delivers_what_arrives_as_it_goes_idle(db: str) -> None:
    """The runner says busy while its claims are full, registers again once they are short, and a
    change committed around that moment is delivered without a NOTIFY (its settling polls)."""
    async with runner_of_its_own_role(db, "items") as (_, rx):
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("SELECT webhooks.create_webhook(name => 'items', url => %s, events => %s)",
                         (rx.url, Jsonb([{"table": "items"}])))
            # A backlog that makes the first claims full: the runner says it is busy...
            conn.execute("INSERT INTO items (label) SELECT 'x' FROM generate_series(1, 200)")
            await rx.wait_for(200, timeout=60)
            # ...and once drained it waits again, registered: one runner.
            for _ in range(100):
                if waiting(conn) == 1:
                    break
                await asyncio.sleep(0.05)
            assert waiting(conn) == 1
            await asyncio.sleep(1.0)  # let it fall asleep (well inside its 10 s of settling polls)
            # A writer that decided while nobody waited (the count forced to 0 behind the
            # runner's back) commits no NOTIFY; the 30 s poll interval would leave it waiting,
            # the settling polls after registering do not.
            conn.execute("SELECT setval('webhooks._runners_waiting', 0)")
            conn.execute("INSERT INTO items (label) VALUES ('late')")
            received = await rx.wait_for(201, timeout=20)
        assert len(received) >= 201


async def test_a_runner_settles_again_after_its_connection_is_lost(db: str, monkeypatch) -> None:
    """Terminated sessions (a failover, a restart) leave the runner registering from a new
    session; a change committed by a writer that skipped its NOTIFY just then is still picked up
    by the settling polls, not left for the poll interval."""
    monkeypatch.setattr("pgwebhooks.claimer.SETTLE_SECONDS", 1.0)
    registered = ("SELECT max(pid) FROM webhooks._waiting_runners w JOIN pg_stat_activity a USING (pid)"
                  " WHERE a.usename = %s")
    async with runner_of_its_own_role(db, "relisted") as (role, rx):
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("SELECT webhooks.create_webhook(name => 'relisted', url => %s, events => %s)",
                         (rx.url, Jsonb([{"table": "relisted"}])))
            conn.execute("INSERT INTO relisted (label) VALUES ('first')")
            await rx.wait_for(1, timeout=30)
            first_pid = None
            for _ in range(200):  # bounded: the runner registers as it goes idle
                first_pid = scalar(conn, f"SELECT ({registered})", role)
                if first_pid:
                    break
                await asyncio.sleep(0.05)
            assert first_pid
            await asyncio.sleep(1.5)  # its first settling window is over
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            # The stale row keeps writers notifying; the runner wakes, finds its session gone,
            # reconnects, claims, and registers the new session.
            conn.execute("INSERT INTO relisted (label) VALUES ('wakes it')")
            await rx.wait_for(2, timeout=30)
            second_pid = None
            for _ in range(200):
                second_pid = scalar(conn, f"SELECT ({registered})", role)
                if second_pid and second_pid != first_pid:
                    break
                await asyncio.sleep(0.05)
            assert second_pid and second_pid != first_pid
            await asyncio.sleep(0.3)  # asleep, inside the new settling window
            conn.execute("SELECT setval('webhooks._runners_waiting', 0)")  # a writer that saw nobody waiting
            conn.execute("INSERT INTO relisted (label) VALUES ('late')")
            received = await rx.wait_for(3, timeout=10)  # well inside the 30 s poll interval
        assert len(received) >= 3
