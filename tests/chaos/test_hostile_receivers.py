"""Receivers that misbehave: 500 storms, hangs, resets, truncated, huge and dripping answers, NUL and
invalid UTF-8 in bodies. Each hostile endpoint has a well-behaved neighbour watching the same table:
neither may lose an event, the outbox must end with everything delivered, and since no runner
crashes here, an event answered 2xx must not be sent again (no duplicates).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hostile import HostileReceiver
from psycopg.conninfo import make_conninfo
from scenario import RUNNER_ROLE, Chaos

EVENTS = 60

# mode, how long the storm lasts (None: every answer is hostile), drain deadline. The answers that
# are failures (5xx, no response) come as a storm that ends, as outages do; the odd answers that
# still carry a 2xx status (truncated, huge, dripping, NUL, bad UTF-8) come forever.
SCENARIOS = [
    pytest.param("500", 4.0, 45.0, id="500-storm"),
    pytest.param("hang", 3.0, 45.0, id="hang-past-timeout"),
    pytest.param("reset", 3.0, 45.0, id="connection-reset"),
    pytest.param("drip-head", 3.0, 45.0, id="slow-drip-status"),
    pytest.param("truncated", None, 30.0, id="truncated-body"),
    pytest.param("huge", None, 30.0, id="huge-body"),
    pytest.param("drip-body", None, 30.0, id="slow-drip-body"),
    pytest.param("nul", None, 20.0, id="nul-in-body"),
    pytest.param("bad-utf8", None, 20.0, id="invalid-utf8-body"),
]


@pytest.fixture
async def chaos(db: str, tmp_path: Path) -> AsyncIterator[Chaos]:
    c = Chaos(db, make_conninfo(db, user=RUNNER_ROLE), tmp_path)
    try:
        yield c
    finally:
        c.stop_runners()


@pytest.mark.parametrize(("mode", "storm_seconds", "deadline"), SCENARIOS)
async def test_hostile_receiver(chaos: Chaos, mode: str, storm_seconds: float | None, deadline: float) -> None:
    hostile = await HostileReceiver(mode, storm_seconds, hang_seconds=3.0).start()
    neighbour = await HostileReceiver("ok").start()
    try:
        chaos.add_webhook(hostile.url)
        chaos.add_webhook(neighbour.url)
        chaos.insert(EVENTS, per_statement=10)
        chaos.start_runner(10)  # a generous lease: nothing here should outlive it
        drained = await chaos.drained([hostile, neighbour], deadline)
        reports = chaos.report(f"receiver {mode}", {mode: hostile, "neighbour": neighbour})
    finally:
        chaos.stop_runners()
        await hostile.stop()
        await neighbour.stop()
    for report in reports:
        assert report.committed == EVENTS
        assert report.lost == 0, report.line()
        assert report.duplicates == 0, report.line()
    assert drained and reports[0].undelivered == 0, f"{reports[0].line()}\n{chaos.runner_logs()}"
    if storm_seconds is not None:
        assert sum(hostile.requests.values()) > EVENTS, "no request met the storm"
