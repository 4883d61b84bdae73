"""What every chaos scenario shares: a watched table, real `pgwebhooks run` processes, the tally.

Everything is bounded: each loop has a count, each wait a deadline, and all traffic stays on
127.0.0.1. The truth about what was committed is the watched table itself (each row is one
INSERT event), read after the chaos, so a commit whose acknowledgement was lost still counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg
from hostile import HostileReceiver
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

RUNNER_ROLE = "chaos_runner"
PGWEBHOOKS = str(Path(sys.executable).with_name("pgwebhooks"))


@dataclass(frozen=True)
class Report:
    scenario: str
    receiver: str
    committed: int
    received: int  # distinct events answered 2xx
    duplicates: int  # 2xx answers beyond the first per event
    requests: int
    undelivered: int  # deliveries the outbox does not hold as delivered
    seconds: float

    @property
    def lost(self) -> int:
        return self.committed - self.received

    def line(self) -> str:
        return (f"{self.scenario:<28} {self.receiver:<10} committed={self.committed:<5} received={self.received:<5} "
                f"lost={self.lost:<3} duplicates={self.duplicates:<4} requests={self.requests:<5} "
                f"undelivered_in_outbox={self.undelivered:<4} {self.seconds:5.1f}s")


REPORTS: list[Report] = []


class Chaos:
    """One scenario: its database, its webhooks, its runner processes."""

    def __init__(self, dsn: str, runner_dsn: str, logdir: Path) -> None:
        self.dsn = dsn
        self.runner_dsn = runner_dsn
        self.logdir = logdir
        self.runners: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self.started = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, label text)")

    def add_webhook(self, url: str, **options: Any) -> str:
        args = {"name": f"chaos-{os.urandom(4).hex()}", "url": url, "events": Jsonb([{"table": "items"}]),
                "timeout_seconds": 1, "max_retries": 10, "retry_backoff_seconds": 1, **options}
        named = ", ".join(f"{k} => %({k})s" for k in args)
        with psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row) as conn:
            row = conn.execute(f"SELECT id FROM webhooks.create_webhook({named})", args).fetchone()
        assert row is not None
        return str(row["id"])

    def publish_items(self) -> None:
        """From now on each row of `items` is also published as an `item.created` event (a row
        trigger calling webhooks.publish() in the writer's transaction), carrying its id."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SELECT webhooks.create_event_type('item.created')")
            conn.execute("CREATE FUNCTION publish_item() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                         " PERFORM webhooks.publish('item.created', jsonb_build_object('id', NEW.id));"
                         " RETURN NULL; END $$")
            conn.execute("CREATE TRIGGER items_published AFTER INSERT ON items FOR EACH ROW"
                         " EXECUTE FUNCTION publish_item()")

    def insert(self, rows: int, per_statement: int = 100) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for start in range(0, rows, per_statement):
                conn.execute("INSERT INTO items (label) SELECT 'row' FROM generate_series(1, %s)",
                             (min(per_statement, rows - start),))

    # -- runners ----------------------------------------------------------------------------------

    def start_runner(self, lease_margin: int = 1, *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"runner-{len(self.runners)}.log", "wb")  # noqa: SIM115 - closed in stop_runners
        self._logs.append(log)
        proc = subprocess.Popen(
            [PGWEBHOOKS, "run", "--dsn", self.runner_dsn, "--allow-cidr", "127.0.0.1/32", "--poll-interval", "0.5",
             "--lease-margin", str(lease_margin), "--concurrency", "50", "--per-webhook-concurrency", "5",
             "--shutdown-grace", "3", *extra],
            stdout=log, stderr=subprocess.STDOUT,
        )
        self.runners.append(proc)
        return proc

    def live_runners(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.runners if p.poll() is None]

    def stop_runners(self) -> None:
        for proc in self.live_runners():
            proc.send_signal(signal.SIGTERM)
        for proc in self.runners:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for log in self._logs:
            log.close()

    def runner_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(self.logdir.glob("runner-*.log")))

    # -- the tally --------------------------------------------------------------------------------

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def committed_ids(self) -> set[int]:
        return {r[0] for r in self.query("SELECT id FROM items")}

    def undelivered(self) -> int:
        return self.query("SELECT count(*) FROM webhooks.deliveries WHERE status <> 'delivered'")[0][0]

    async def drained(self, receivers: Sequence[HostileReceiver], timeout: float) -> bool:
        """Whether every committed event reached every receiver and the outbox agrees, within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = await asyncio.to_thread(self.committed_ids)
            if all(ids <= set(r.accepted) for r in receivers) and await asyncio.to_thread(self.undelivered) == 0:
                return True
            await asyncio.sleep(0.25)
        return False

    def report(self, scenario: str, receivers: dict[str, HostileReceiver]) -> list[Report]:
        ids = self.committed_ids()
        undelivered = self.undelivered()
        reports = []
        for name, rx in receivers.items():
            got = {i for i in rx.accepted if i in ids}
            report = Report(scenario, name, len(ids), len(got), sum(rx.accepted.values()) - len(got),
                            sum(rx.requests.values()), undelivered, time.monotonic() - self.started)
            REPORTS.append(report)
            print(report.line())
            reports.append(report)
        return reports


class Writer(threading.Thread):
    """Commits one row at a time until stopped (at most `limit`), reconnecting through any outage."""

    def __init__(self, dsn: str, interval: float = 0.02, limit: int = 2000) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.interval = interval
        self.limit = limit
        self.stop = threading.Event()
        self.errors = 0

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        for _ in range(self.limit):
            if self.stop.is_set():
                break
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                conn.execute("INSERT INTO items (label) VALUES ('live')")
            except psycopg.Error:
                self.errors += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                time.sleep(0.1)
            time.sleep(self.interval)
        if conn is not None:
            conn.close()
