"""Crashes during a backlog: runners killed with SIGKILL, PostgreSQL restarted fast and crashed
(immediate stop), every connection terminated over and over. Nothing committed may be lost;
repeats are allowed (at least once) and reported.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest
from hostile import HostileReceiver
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb
from scenario import RUNNER_ROLE, Chaos, Writer

# 3,000 events to an endpoint taking 10 ms, 5 at a time per runner: a backlog of seconds, so the
# havoc strikes while deliveries are leased and in flight (checked at its first strike).
BACKLOG = 3000
DRAIN_TIMEOUT = 90.0


@pytest.fixture
async def chaos(db: str, tmp_path: Path) -> AsyncIterator[Chaos]:
    c = Chaos(db, make_conninfo(db, user=RUNNER_ROLE), tmp_path)
    try:
        yield c
    finally:
        c.stop_runners()


@pytest.fixture
async def receiver() -> AsyncIterator[HostileReceiver]:
    rx = await HostileReceiver("ok", delay=0.01).start()
    try:
        yield rx
    finally:
        await rx.stop()


Havoc = Callable[[Callable[[], None]], None]


async def run_scenario(name: str, chaos: Chaos, rx: HostileReceiver, havoc: Havoc, runners: int = 2,
                       published: bool = False) -> None:
    """A backlog, live writes and `havoc` (run in a thread) at once; then drain and tally.

    `havoc` calls the function it is given just before its first blow, which notes how much of the
    backlog was still owed then. `published`: the webhook receives each row as a published event
    (through the cursors, 041_cursors.sql) instead of as a row change.
    """
    if published:
        chaos.publish_items()
        chaos.add_webhook(rx.url, events=Jsonb([{"event_type": "item.created"}]))
    else:
        chaos.add_webhook(rx.url)
    chaos.insert(BACKLOG)
    for _ in range(runners):
        chaos.start_runner()
    received_at_first_strike: list[int] = []

    def strike() -> None:
        if not received_at_first_strike:
            received_at_first_strike.append(len(rx.accepted))

    writer = Writer(chaos.dsn)
    writer.start()
    try:
        await asyncio.to_thread(havoc, strike)
    finally:
        writer.stop.set()
        await asyncio.to_thread(writer.join, 30)
    if not chaos.live_runners():
        chaos.start_runner()
    drained = await chaos.drained([rx], DRAIN_TIMEOUT)
    report = chaos.report(name, {"ok": rx})[0]
    assert report.committed > BACKLOG, "the live writer committed nothing: the scenario did not run"
    assert received_at_first_strike and received_at_first_strike[0] < BACKLOG * 0.9, (
        f"the havoc struck an idle outbox ({received_at_first_strike} of {BACKLOG} already received)")
    assert report.lost == 0, f"{report.line()}\n{chaos.runner_logs()}"
    assert drained and report.undelivered == 0, f"{report.line()}\n{chaos.runner_logs()}"


async def test_no_havoc_control(chaos: Chaos, receiver: HostileReceiver) -> None:
    """The same backlog and writes with nothing broken: the yardstick for the rows below."""

    def havoc(strike: Callable[[], None]) -> None:
        time.sleep(0.5)
        strike()
        time.sleep(4.5)

    await run_scenario("control (no havoc)", chaos, receiver, havoc)


async def test_runners_killed_with_sigkill_during_a_backlog(chaos: Chaos, receiver: HostileReceiver) -> None:
    kills = 0

    def havoc(strike: Callable[[], None]) -> None:
        nonlocal kills
        rng = random.Random(7)
        for _ in range(8):
            time.sleep(rng.uniform(0.5, 1.2))
            live = chaos.live_runners()
            strike()
            if live:
                rng.choice(live).kill()  # SIGKILL: no release, no report, leases left behind
                kills += 1
            chaos.start_runner()

    await run_scenario("kill -9 runners x8", chaos, receiver, havoc)
    assert kills == 8
    assert len(chaos.runners) == 10


async def test_published_events_through_sigkilled_runners_and_a_postgres_crash(
        chaos: Chaos, receiver: HostileReceiver, server: object) -> None:
    """Published events, each writer's in its own transaction, while runners are killed with
    SIGKILL (leases and cursor moves left behind) and PostgreSQL crashes once."""
    local = server.local  # type: ignore[attr-defined]

    def havoc(strike: Callable[[], None]) -> None:
        rng = random.Random(11)
        for blow in range(5):
            time.sleep(rng.uniform(0.5, 1.2))
            strike()
            if blow == 2:
                local.stop("immediate")
                time.sleep(0.5)
                local.start()
            elif live := chaos.live_runners():
                rng.choice(live).kill()
            chaos.start_runner()

    await run_scenario("published, kill -9 x4 + crash", chaos, receiver, havoc, published=True)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_restarts_during_a_backlog(chaos: Chaos, receiver: HostileReceiver, server: object,
                                                  mode: str) -> None:
    local = server.local  # type: ignore[attr-defined]

    def havoc(strike: Callable[[], None]) -> None:
        for _ in range(2):
            time.sleep(1.5)
            strike()
            local.stop(mode)  # immediate: no checkpoint, crash recovery on start
            time.sleep(0.5)
            local.start()

    await run_scenario(f"postgres {mode} restart x2", chaos, receiver, havoc)


async def test_pg_terminate_backend_storm(chaos: Chaos, receiver: HostileReceiver, server: object) -> None:
    terminated = 0

    def havoc(strike: Callable[[], None]) -> None:
        nonlocal terminated
        time.sleep(0.5)
        strike()
        with psycopg.connect(server.admin_dsn, autocommit=True) as admin:  # type: ignore[attr-defined]
            deadline = time.monotonic() + 6
            for _ in range(60):
                if time.monotonic() > deadline:
                    break
                row = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                    (conninfo_to_dict(chaos.dsn)["dbname"],),
                ).fetchone()
                terminated += row[0] if row else 0
                time.sleep(0.1)

    await run_scenario("pg_terminate_backend storm", chaos, receiver, havoc)
    assert terminated > 20, "the storm hit almost nothing"
