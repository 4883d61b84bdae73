"""Upgrade from release 0.6.0 (commit 6405664; its sql/ frozen in tests/fixtures/release-0.6.0.tar.gz)
to HEAD while writers write and a runner delivers: migration 0023 rebuilds every capture trigger,
so one-row changes move from the fan-out to their table's route in the middle of the traffic.
Every change and every published event must arrive once at each webhook that receives it: none
lost between the two paths, none given by both."""

from __future__ import annotations

import asyncio
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from helpers import empty_database, query, wait_until
from psycopg.types.json import Jsonb
from receivers import Reply, ScriptedReceiver

from conftest import Server
from pgwebhooks import __version__, migrations
from pgwebhooks.worker import Runner, RunnerConfig

# sql/ and plpython/ of 0.6.0, frozen: `git archive --format=tar 6405664 sql/migrations
# sql/functions plpython | gzip -9n` (a clone without history must still run this test).
RELEASE_0_6_0 = Path(__file__).resolve().parent / "fixtures" / "release-0.6.0.tar.gz"


def release_tree(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        # The extraction filters came in 3.11.4; without them this archive of ours is trusted.
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return into


def writer(dsn: str, stop: threading.Event, written: dict[str, list[int]], failures: list[BaseException]) -> None:
    """One-row changes, now and then a three-row statement or a published event, until `stop`
    (at most 3,000 rounds); what committed is recorded."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(1, 3001):
                if stop.is_set():
                    return
                if i % 10 == 0:
                    ids = [10_000 + 3 * i + k for k in range(3)]
                    conn.execute("INSERT INTO items SELECT unnest(%s::int[]), 'bulk'", (ids,))
                    written["rows"] += ids
                else:
                    conn.execute("INSERT INTO items VALUES (%s, 'one')", (i,))
                    written["rows"].append(i)
                if i % 5 == 0:
                    conn.execute("SELECT webhooks.publish('order.created', %s)", (Jsonb({"n": i}),))
                    written["events"].append(i)
                time.sleep(0.002)
    except BaseException as exc:
        failures.append(exc)


async def test_upgrade_from_0_6_0_under_writers_and_a_runner_sends_each_change_once(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = release_tree(RELEASE_0_6_0, tmp_path)
    rx = await ScriptedReceiver([Reply(200)]).start()
    written: dict[str, list[int]] = {"rows": [], "events": []}
    failures: list[BaseException] = []
    stop = threading.Event()
    try:
        with empty_database(server, "upgrade060") as dsn:
            with monkeypatch.context() as patched:
                patched.setattr(migrations, "ROOT", old)
                migrations.migrate(dsn)
            assert query(dsn, "SELECT webhooks.version() AS v")[0]["v"] == "0.6.0"
            query(dsn, "CREATE TABLE items (id int PRIMARY KEY, label text)")
            query(dsn, "SELECT webhooks.create_event_type('order.created')")
            for name, events in (("a", [{"table": "items"}]),
                                 ("b", [{"table": "items"}, {"event_type": "order.created"}])):
                query(dsn, "SELECT webhooks.create_webhook(%s, %s, %s)", name, f"http://127.0.0.1:{rx.port}/{name}",
                      Jsonb(events))
            runner = Runner(RunnerConfig(dsn=dsn, poll_interval=0.2, allowed_cidrs=("127.0.0.1/32",)))
            task = asyncio.create_task(runner.run())
            thread = threading.Thread(target=writer, args=(dsn, stop, written, failures))
            thread.start()
            try:
                await rx.wait_for(50, timeout=30)  # delivering under 0.6.0
                await asyncio.to_thread(migrations.migrate, dsn)
                assert query(dsn, "SELECT webhooks.version() AS v")[0]["v"] == __version__
                routed_before = query(dsn, "SELECT count(*) AS n FROM webhooks.captures"
                                           " WHERE route IS NOT NULL AND operation <> 'EVENT'")[0]["n"]
                await asyncio.sleep(1.0)  # changes written under 0.7.0's triggers
                stop.set()
                await asyncio.to_thread(thread.join, 30)
                assert not failures, failures
                routed = query(dsn, "SELECT count(*) FILTER (WHERE route IS NOT NULL) AS routed,"
                                    " count(*) FILTER (WHERE route IS NULL) AS fanned"
                                    " FROM webhooks.captures WHERE operation <> 'EVENT'")[0]
                assert routed["routed"] > routed_before and routed["fanned"] > 0, routed
                expected = 2 * len(written["rows"]) + len(written["events"])
                done = await asyncio.to_thread(wait_until, lambda: len(rx.requests) >= expected, 60)
                assert done, f"{len(rx.requests)} of {expected} arrived"
                await asyncio.sleep(1.5)  # anything given twice would arrive by now
            finally:
                stop.set()
                runner.request_stop()
                await asyncio.wait_for(task, timeout=30)
    finally:
        await rx.stop()
    got = Counter((r.path, r.payload.get("type") or r.payload.get("event"),
                   (r.payload.get("data") or {}).get("n") or (r.payload.get("record") or {}).get("id"))
                  for r in rx.requests)
    want = Counter([(f"/{h}", "INSERT", i) for h in "ab" for i in written["rows"]]
                   + [("/b", "order.created", n) for n in written["events"]])
    assert got == want  # each once: none lost, none sent twice
