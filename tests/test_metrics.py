"""`pgwebhooks run --metrics-port`: /metrics scraped during a real drain, /healthz, /readyz."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import aiohttp
import psycopg
import pytest
from helpers import create_table, create_webhook, eventually, insert, query, receiver, runner_config, running
from prometheus_client.parser import text_string_to_metric_families
from receivers import Reply

from conftest import Server
from pgwebhooks import metrics as metrics_module
from pgwebhooks.localpg import free_port


async def _get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}",
                                                          timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return resp.status, await resp.text()


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _attempts_by_outcome(text: str) -> Counter[tuple[str, str]]:
    return Counter({(dict(k)["webhook_id"], dict(k)["outcome"]): int(v)
                    for k, v in _samples(text, "pgwebhooks_delivery_attempts_total").items()})


def _logged_outcomes(db: str) -> Counter[tuple[str, str]]:
    rows = query(db, "SELECT webhook_id::text AS w, CASE WHEN status_code BETWEEN 200 AND 299 THEN 'success'"
                     " WHEN status_code >= 500 THEN 'server_error' WHEN status_code IS NULL THEN 'no_response'"
                     " ELSE 'client_error' END AS outcome, count(*) AS n FROM webhooks.delivery_attempts"
                     " GROUP BY 1, 2")
    return Counter({(r["w"], r["outcome"]): r["n"] for r in rows})


async def test_metrics_during_a_drain_match_the_attempt_log(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "BACKLOG_INTERVAL", 0.3)
    create_table(db)
    create_table(db, "few")  # the failing endpoint's circuit opens: keep its retries few
    port = free_port()
    async with receiver([Reply(200, delay=0.01)]) as ok, receiver([Reply(500, "down")]) as bad, \
            receiver([Reply(422, "no")]) as rejected:
        hooks = {
            "ok": create_webhook(db, ok.url),
            "bad": create_webhook(db, bad.url, table="few", max_retries=1, retry_backoff_seconds=1),
            "rejected": create_webhook(db, rejected.url, max_retries=0),
        }
        ids = {name: str(h["id"]) for name, h in hooks.items()}
        async with running(runner_config(db, metrics_port=port)) as runner:
            insert(db, 60)
            insert(db, 3, "few")
            assert await _wait_status(port, "/healthz", 200)
            scraped: list[Counter[tuple[str, str]]] = []
            await ok.wait_for(20, timeout=20)
            _, text = await _get(port, "/metrics")  # mid-drain
            scraped.append(_attempts_by_outcome(text))

            def drained() -> bool:
                rows = query(db, "SELECT count(*) AS n FROM webhooks.deliveries WHERE status IN ('pending', 'leased')"
                                 " AND webhook_id <> %s", hooks["bad"]["id"])
                failed = query(db, "SELECT count(*) AS n FROM webhooks.delivery_attempts WHERE webhook_id = %s",
                               hooks["bad"]["id"])
                return len(ok.requests) >= 60 and rows[0]["n"] == 0 and failed[0]["n"] >= 3

            assert await eventually(drained, timeout=60, interval=0.2)
            # The failing endpoint's retries wait on its circuit: pause it so the counts settle.
            query(db, "SELECT webhooks.pause_webhook(%s)", hooks["bad"]["id"])
            assert await eventually(lambda: not runner.in_flight and query(
                db, "SELECT count(*) AS n FROM webhooks.deliveries WHERE status = 'leased'")[0]["n"] == 0, timeout=30)
            assert await eventually(lambda: sum(_logged_outcomes(db).values()) == runner.stats.delivered
                                    + runner.stats.failed_attempts, timeout=10)
            _, text = await _get(port, "/metrics")
            final = _attempts_by_outcome(text)
            # Backlog from the elected runner (this one, alone): every webhook reported, none pending.
            await asyncio.sleep(0.5)
            _, text = await _get(port, "/metrics")
            pending = _samples(text, "pgwebhooks_webhook_pending")
            assert {dict(k)["webhook_id"] for k in pending} == set(ids.values())
            still = query(db, "SELECT count(*) AS n FROM webhooks.deliveries WHERE status = 'pending'")[0]["n"]
            assert {dict(k)["webhook_id"]: v for k, v in pending.items()} == {
                ids["ok"]: 0.0, ids["rejected"]: 0.0, ids["bad"]: float(still)}
            assert _samples(text, "pgwebhooks_backlog_reporter") == {(): 1.0}
            info = _samples(text, "pgwebhooks_webhook_info")
            assert {dict(k)["name"] for k in info} == {h["name"] for h in hooks.values()}
            assert "http://" not in text  # never a URL in a label
            circuits = {dict(k)["webhook_id"]: dict(k)["state"]
                        for k, v in _samples(text, "pgwebhooks_webhook_circuit_state").items() if v == 1}
            assert circuits[ids["ok"]] == "closed"
    logged = _logged_outcomes(db)
    assert final == logged
    assert logged[(ids["ok"], "success")] == 60
    assert logged[(ids["rejected"], "client_error")] == 60
    assert logged[(ids["bad"], "server_error")] > 0
    assert all(mid[key] <= final[key] for mid in scraped for key in mid)  # counters only grow
    durations = _samples(text, "pgwebhooks_delivery_duration_seconds_count")
    assert durations[()] == sum(logged.values())
    assert _samples(text, "pgwebhooks_claim_duration_seconds_count")[()] > 0


async def test_metrics_name_the_webhook_that_keeps_the_outbox(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A webhook paused for longer than the retention keeps its changes' block: the elected runner's
    /metrics count it against that webhook (what an alert is built on), not against its neighbour."""
    monkeypatch.setattr(metrics_module, "BACKLOG_INTERVAL", 0.3)
    create_table(db)
    port = free_port()
    async with receiver([Reply(200)]) as ok:
        healthy = str(create_webhook(db, ok.url)["id"])
        paused = str(create_webhook(db, "http://127.0.0.1:9/paused")["id"])
        query(db, "SELECT webhooks.pause_webhook(%s)", paused)
        insert(db, 3)
        query(db, "UPDATE webhooks.captures SET occurred_at = occurred_at - interval '30 days'")
        query(db, "SELECT * FROM webhooks.maintain()")  # closes the block the three are in
        async with running(runner_config(db, metrics_port=port)):
            await ok.wait_for(3, timeout=20)

            async def kept() -> dict[str, float]:
                _, text = await _get(port, "/metrics")
                return {dict(k)["webhook_id"]: v for k, v in
                        _samples(text, "pgwebhooks_webhook_kept_outbox_blocks").items()}

            expected = {paused: 1.0, healthy: 0.0}
            for _ in range(50):
                if await kept() == expected:
                    break
                await asyncio.sleep(0.2)
            assert await kept() == expected
            _, text = await _get(port, "/metrics")
            assert _samples(text, "pgwebhooks_outbox_kept_blocks") == {(): 1.0}
            assert _samples(text, "pgwebhooks_outbox_blocks")[()] >= 6
            assert _samples(text, "pgwebhooks_outbox_bytes")[()] > 0


async def test_the_backlog_is_reported_by_a_schema_without_runner_outbox(db: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner upgraded before `migrate` (a schema older than 0.8.0, without runner_outbox) still
    reports every webhook's backlog; only the outbox's own series are missing."""
    monkeypatch.setattr(metrics_module, "BACKLOG_INTERVAL", 0.3)
    create_table(db)
    hook = str(create_webhook(db, "http://127.0.0.1:9/paused")["id"])
    query(db, "SELECT webhooks.pause_webhook(%s)", hook)
    insert(db, 2)
    query(db, "DROP FUNCTION webhooks.runner_outbox()")
    port = free_port()
    async with running(runner_config(db, metrics_port=port)):
        assert await _wait_status(port, "/healthz", 200)
        for _ in range(50):
            _, text = await _get(port, "/metrics")
            if _samples(text, "pgwebhooks_webhook_pending"):
                break
            await asyncio.sleep(0.2)
        # And it stays reported, poll after poll (a failing read would drop the reporter's lock each time).
        for _ in range(6):
            _, text = await _get(port, "/metrics")
            assert _samples(text, "pgwebhooks_backlog_reporter") == {(): 1.0}
            assert {dict(k)["webhook_id"]: v for k, v in _samples(text, "pgwebhooks_webhook_pending").items()} == {
                hook: 2.0}
            assert _samples(text, "pgwebhooks_outbox_bytes") == {}
            assert _samples(text, "pgwebhooks_webhook_kept_outbox_blocks") == {(("webhook_id", hook),): 0.0}
            await asyncio.sleep(0.25)


async def test_one_runner_reports_the_backlog(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "BACKLOG_INTERVAL", 0.2)
    ports = [free_port(), free_port()]
    async with running(runner_config(db, metrics_port=ports[0])), running(runner_config(db, metrics_port=ports[1])):

        async def reporters() -> list[float]:
            return [_samples((await _get(p, "/metrics"))[1], "pgwebhooks_backlog_reporter")[()] for p in ports]

        for p in ports:
            assert await _wait_status(p, "/healthz", 200)
        deadline = asyncio.get_running_loop().time() + 10
        while sum(await reporters()) < 1 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.6)  # several polls of both: still exactly one
        assert sorted(await reporters()) == [0.0, 1.0]


async def test_readyz_follows_the_database_and_the_schema(db: str, server: Server) -> None:
    if server.local is None:
        pytest.skip("the test server is not ours to stop (PGWEBHOOKS_TEST_DSN)")
    port = free_port()
    async with running(runner_config(db, metrics_port=port)):
        assert await _wait_status(port, "/readyz", 200)
        assert await _get(port, "/healthz") == (200, "ok\n")
        server.local.stop()
        try:
            assert await _wait_status(port, "/readyz", 503)
            status, reason = await _get(port, "/readyz")
            assert status == 503 and reason.startswith("database unreachable") and reason.count("\n") == 1
            assert (await _get(port, "/healthz"))[0] == 200  # alive, just not ready
        finally:
            server.local.start()
        assert await _wait_status(port, "/readyz", 200)
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("ALTER FUNCTION webhooks.complete(jsonb) RENAME TO complete_gone")
        assert await _wait_status(port, "/readyz", 503)
        status, reason = await _get(port, "/readyz")
        assert "webhooks.complete(jsonb)" in reason


async def _wait_status(port: int, path: str, expected: int) -> bool:
    async def check() -> int:
        try:
            return (await _get(port, path))[0]
        except aiohttp.ClientError:
            return 0

    for _ in range(100):  # bounded: 100 x (one probe + 0.1 s)
        if await check() == expected:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_progress_line(db: str, caplog: pytest.LogCaptureFixture) -> None:
    create_table(db)
    caplog.set_level(logging.INFO, logger="pgwebhooks.runner")
    async with receiver() as rx:
        create_webhook(db, rx.url)
        async with running(runner_config(db, progress_interval=0.2)):
            insert(db, 5)
            await rx.wait_for(5, timeout=20)

            def logged() -> list[Any]:
                return [r for r in caplog.records if r.getMessage() == "progress"]

            assert await eventually(lambda: sum(getattr(r, "delivered", 0) for r in logged()) == 5, timeout=10)
    assert all(hasattr(r, "failed_attempts") and hasattr(r, "in_flight") for r in logged())


async def test_healthz_fails_when_the_claim_loop_stops_going_round(db: str) -> None:
    port = free_port()
    async with running(runner_config(db, metrics_port=port, poll_interval=100.0)) as runner:
        assert await _wait_status(port, "/healthz", 200)
        await asyncio.sleep(0.3)  # the claim loop is now asleep until a NOTIFY (or 100 s)
        runner.metrics.heartbeat -= 5000
        status, reason = await _get(port, "/healthz")
        assert status == 503 and reason.startswith("claim loop stalled")
        query(db, "SELECT pg_notify('webhooks', '')")  # wakes it: it goes round again
        assert await _wait_status(port, "/healthz", 200)
