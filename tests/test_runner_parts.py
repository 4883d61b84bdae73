"""The runner's parts through their public views: admission's failure rule, and the circuit
breaker's threshold taken from the database rather than a copy."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb
from receivers import ScriptedReceiver

from pgwebhooks.admission import DEFAULT_CIRCUIT_FAILURE_THRESHOLD
from pgwebhooks.state import Job
from pgwebhooks.worker import Runner, RunnerConfig


def _config(dsn: str) -> RunnerConfig:
    return RunnerConfig(dsn=dsn, poll_interval=0.2, allowed_cidrs=("127.0.0.1/32",), reconnect_min=0.05,
                        reconnect_max=0.5, shutdown_grace=5.0)


def _job(webhook: uuid.UUID, start_by: float) -> Job:
    return Job(delivery_id=1, attempt=1, webhook_id=webhook, url="http://127.0.0.1:9/", body="{}", headers={},
               timeout_seconds=5, max_concurrency=None, start_by=start_by)


async def _until(check: Any, limit: int = 300) -> bool:
    for _ in range(limit):  # bounded: at most limit x 0.05 s
        if check():
            return True
        await asyncio.sleep(0.05)
    return bool(check())


def test_a_webhook_failing_as_often_as_the_threshold_is_left_out_and_handed_back() -> None:
    runner = Runner(RunnerConfig(dsn="postgresql://unused"))
    admission, hook = runner.admission, uuid.uuid4()
    admission.set_failure_threshold(2)
    later = time.monotonic() + 60
    admission.answered(hook, 503)
    assert not admission.is_failing(hook) and hook not in admission.saturated()
    admission.answered(hook, None)  # no answer counts as a failure too
    assert admission.is_failing(hook) and hook in admission.saturated()
    assert admission.must_hand_back(_job(hook, later))
    admission.reported()  # the database's circuit decides from here
    assert not admission.is_failing(hook) and not admission.must_hand_back(_job(hook, later))
    admission.answered(hook, 500)
    admission.answered(hook, 404)  # an answer, even a refusal, ends a run of failures
    assert not admission.is_failing(hook)
    admission.set_failure_threshold(0)  # nonsense from a database is not taken
    assert admission.failure_threshold == 2


async def test_the_circuit_threshold_is_read_from_the_database(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE OR REPLACE FUNCTION webhooks._circuit_failure_threshold() RETURNS integer"
                     " LANGUAGE sql IMMUTABLE AS $$ SELECT 2 $$")
    runner = Runner(_config(db))
    assert runner.admission.failure_threshold == DEFAULT_CIRCUIT_FAILURE_THRESHOLD
    task = asyncio.create_task(runner.run())
    try:
        assert await _until(lambda: runner.admission.failure_threshold == 2)
    finally:
        runner.request_stop()
        await asyncio.wait_for(task, timeout=30)


async def test_the_runner_role_reads_the_threshold_through_its_public_function(db: str) -> None:
    role = f"runner_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE webhooks_runner")
        conn.execute("CREATE TABLE items (id serial PRIMARY KEY, label text)")
        conn.execute("CREATE OR REPLACE FUNCTION webhooks._circuit_failure_threshold() RETURNS integer"
                     " LANGUAGE sql IMMUTABLE AS $$ SELECT 3 $$")
    rx = await ScriptedReceiver().start()
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("SELECT webhooks.create_webhook(name => 'items', url => %s, events => %s)",
                         (rx.url, Jsonb([{"table": "items"}])))
            conn.execute("INSERT INTO items (label) VALUES ('a'), ('b')")
        runner = Runner(_config(make_conninfo(db, user=role)))
        task = asyncio.create_task(runner.run())
        try:
            received = await rx.wait_for(2, timeout=60)
        finally:
            runner.request_stop()
            await asyncio.wait_for(task, timeout=30)
    finally:
        await rx.stop()
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
    assert len(received) == 2
    assert runner.admission.failure_threshold == 3  # webhooks_runner, not a superuser, read it
    assert runner.stats.reconnects == 0 and runner.stats.unreported == 0


class _HangingSender:
    """Sends that never end (cancelled at the test's end): what is in flight stays in flight."""

    async def send(self, url: str, body: str | bytes, headers: Any, timeout: float) -> Any:
        await asyncio.Event().wait()


async def test_dispatch_skips_full_webhooks_but_still_starts_others_and_hands_back_late_jobs() -> None:
    runner = Runner(RunnerConfig(dsn="postgresql://unused", concurrency=10, per_webhook_concurrency=2))
    state, dispatcher = runner._state, runner.dispatcher
    dispatcher.attach(_HangingSender())  # type: ignore[arg-type]
    full, other, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    later = time.monotonic() + 60
    try:
        state.add_ready([_job(full, later) for _ in range(4)] + [_job(other, later)])
        dispatcher.dispatch()
        assert state.in_flight == {full: 2, other: 1}
        assert [j.webhook_id for j in state.ready] == [full, full]
        # Within the scan interval: a late job behind the full webhook may wait for the next scan,
        # but another webhook's job behind it starts at once.
        late = _job(full, time.monotonic() - 1)
        state.add_ready([late, _job(third, later)])
        dispatcher.dispatch()
        assert state.in_flight == {full: 2, other: 1, third: 1}
        dispatcher._next_scan = 0.0  # the scan interval has passed
        dispatcher.dispatch()
        assert state.expired == [late]
        assert [j.webhook_id for j in state.ready] == [full, full] and state.waiting[full] == 2
    finally:
        for task in list(state.tasks):
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)



def _fake_claims(runner: Runner, full: bool, log: dict[str, Any]) -> None:
    """Both claim loops' rounds replaced by slow fakes that record how many run at once and how
    much is held and asked for when each starts."""
    state, hook, later = runner._state, uuid.uuid4(), time.monotonic() + 60

    def fake(name: str) -> Any:
        async def claim_round(wanted: int, backoff: Any) -> list[Job]:
            log[name] += 1
            log["running"] += 1
            log["peak"] = max(log["peak"], log["running"])
            log["most_held"] = max(log["most_held"], state.claiming + len(state.ready) + len(state.tasks))
            try:
                await asyncio.sleep(0.02)
            finally:
                log["running"] -= 1
            if log["first"] + log["beside"] >= 30:
                runner.request_stop()
            return [_job(hook, later) for _ in range(wanted if full else max(0, wanted // 2))]
        return claim_round

    log.update(first=0, beside=0, running=0, peak=0, most_held=0)
    runner.claimer._claim_round = fake("first")  # type: ignore[method-assign]
    runner.beside._claim_round = fake("beside")  # type: ignore[method-assign]


async def _claim_loops(runner: Runner) -> None:
    """Run both claim loops while sends "end" a few jobs at a time (the ready jobs go)."""
    state = runner._state

    async def sends() -> None:
        while not state.signals.stopping.is_set():
            await asyncio.sleep(0.005)
            for _ in range(min(5, len(state.ready))):
                state.unwait(state.ready.popleft())
            state.signals.room.set()

    ending = asyncio.create_task(sends())
    try:
        await asyncio.wait_for(asyncio.gather(runner.claimer.run(), runner.beside.run()), timeout=20)
    finally:
        ending.cancel()


async def test_a_second_claim_goes_out_beside_a_slow_one_during_a_backlog_within_the_room() -> None:
    runner = Runner(RunnerConfig(dsn="postgresql://unused", concurrency=20, per_webhook_concurrency=20,
                                 batch_size=40))
    log: dict[str, Any] = {}
    _fake_claims(runner, True, log)
    await _claim_loops(runner)
    # claim() renders and signs what it leases: while one claim is rendered the next is asked for.
    assert log["beside"] > 0 and log["peak"] == 2
    # Together they never ask for more than the room admission gives.
    assert log["most_held"] <= runner.config.concurrency + runner.admission.prefetch
    assert runner._state.claiming == 0


async def test_without_a_backlog_only_one_claim_loop_claims() -> None:
    runner = Runner(RunnerConfig(dsn="postgresql://unused", concurrency=20, per_webhook_concurrency=20,
                                 batch_size=40))
    log: dict[str, Any] = {}
    _fake_claims(runner, False, log)  # every claim comes back short: caught up
    await _claim_loops(runner)
    assert log["first"] >= 30 and log["beside"] == 0 and log["peak"] == 1


async def test_results_trickling_in_are_reported_together_not_a_complete_call_each(
        monkeypatch: pytest.MonkeyPatch) -> None:
    runner = Runner(RunnerConfig(dsn="postgresql://unused"))
    reporter, batches = runner.reporter, []

    async def complete(conn: Any, batch: list[dict[str, Any]]) -> None:
        batches.append(len(batch))

    async def connect(dsn: str) -> Any:
        return type("Conn", (), {"closed": False, "close": staticmethod(lambda: asyncio.sleep(0))})()

    monkeypatch.setattr(reporter, "_complete", complete)
    monkeypatch.setattr("pgwebhooks.reporter.connect", connect)
    task = asyncio.create_task(reporter.run())
    try:
        for i in range(10):  # results as sends end, the reporter free to run between each
            reporter.submit({"delivery_id": i, "attempt": 1, "status_code": 200})
            await asyncio.sleep(0)
        assert await _until(lambda: sum(batches) == 10)
        # complete() costs a fixed part per call: ten results that came in one by one are one call.
        assert batches == [10]
    finally:
        runner.request_stop()
        reporter.nudge()
        await asyncio.wait_for(task, timeout=10)
