"""The runner's Prometheus metrics and its periodic progress line.

The send path only bumps plain counters (a dict increment and a bisect per attempt); the
Prometheus families are built when /metrics is scraped, so a runner nobody scrapes pays almost
nothing and one that is scraped pays per scrape, not per delivery.

Backlog figures (pending, oldest pending age, circuit state per webhook) come from the database
(`webhooks.runner_backlog()`), at most once per `BACKLOG_INTERVAL`. Every runner sees the same
backlog, so only one reports it: the one holding a session advisory lock (`BACKLOG_LOCK_KEY`) on
its metrics connection. When that runner stops or loses its connection the lock is released and
the next poll of another runner takes it over; `pgwebhooks_backlog_reporter` says which one it is.
Summing the backlog series over all runners therefore counts each webhook once.

Labels: `webhook_id` everywhere (bounded by the number of webhooks); the name appears only on
`pgwebhooks_webhook_info`, to join on; URLs never.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from pgwebhooks import __version__

if TYPE_CHECKING:
    from pgwebhooks.worker import Runner

log = logging.getLogger("pgwebhooks.runner")

BACKLOG_INTERVAL = 10.0  # seconds between two reads of runner_backlog()
BACKLOG_LOCK_KEY = 0x7067_7768_6D65_7472  # "pgwhmetr": held by the one runner that reports the backlog
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
OUTCOMES = ("success", "client_error", "server_error", "no_response")
CIRCUIT_STATES = ("closed", "open", "half_open")
# The functions the runner calls: a schema without them cannot be served (see readiness).
REQUIRED_FUNCTIONS = ("webhooks.claim(integer,integer,integer,uuid[])", "webhooks.complete(jsonb)",
                      "webhooks.release(jsonb)")


def outcome(status_code: int | None) -> str:
    if status_code is None:
        return "no_response"
    if 200 <= status_code < 300:
        return "success"
    return "server_error" if status_code >= 500 else "client_error"


class Buckets:
    """A histogram kept as plain counts; turned into a Prometheus family on scrape."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.total)


@dataclass
class BacklogRow:
    webhook_id: str
    name: str
    state: str
    pending: int
    oldest_pending_at: datetime | None
    circuit: str


@dataclass
class OutboxSize:
    """The outbox's blocks (webhooks.runner_outbox()): its size, and the blocks past the retention
    that unsent work keeps, in all and per webhook."""
    bytes: int = 0
    blocks: int = 0
    kept_blocks: int = 0
    kept_by: dict[str, int] | None = None


class RunnerMetrics(Collector):
    """Counters the runner bumps as it goes, and the database's view of readiness and backlog."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.attempts: Counter[tuple[UUID, str]] = Counter()
        self.duration = Buckets(DURATION_BUCKETS)
        self.claims = Buckets(CLAIM_BUCKETS)
        self.backlog: list[BacklogRow] = []
        self.outbox: OutboxSize | None = None
        self.backlog_reporter = False
        self.ready_reason: str | None = "not checked yet"
        self.ready_checked_at = 0.0
        self.schema_version: str | None = None
        self.heartbeat = time.monotonic()  # the claim loop's last round (see health_server)

    # -- the send path: keep these cheap --------------------------------------------------

    def attempt(self, webhook_id: UUID, status_code: int | None, latency_ms: int | None) -> None:
        self.attempts[(webhook_id, outcome(status_code))] += 1
        if latency_ms is not None:
            self.duration.observe(latency_ms / 1000)

    def claimed(self, seconds: float) -> None:
        self.claims.observe(seconds)

    # -- scraping ---------------------------------------------------------------------------

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry

    def collect(self) -> Iterator[Metric]:
        stats = self.runner.stats
        attempts = CounterMetricFamily(
            "pgwebhooks_delivery_attempts", "Delivery attempts this runner made, by webhook and outcome "
            "(success: 2xx; client_error: other answers below 500; server_error: 5xx; no_response).",
            labels=["webhook_id", "outcome"])
        for (webhook, result), n in sorted(self.attempts.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
            attempts.add_metric([str(webhook), result], n)
        yield attempts
        yield self.duration.family("pgwebhooks_delivery_duration_seconds",
                                   "Time from sending a request to its answer (or failure).")
        yield self.claims.family("pgwebhooks_claim_duration_seconds", "Time a call of webhooks.claim() took.")
        yield GaugeMetricFamily("pgwebhooks_requests_in_flight", "Requests being sent now.",
                                value=self.runner.in_flight)
        for name, doc, value in (
            ("pgwebhooks_claimed", "Deliveries leased by this runner.", stats.claimed),
            ("pgwebhooks_released", "Leased deliveries handed back unsent.", stats.released),
            ("pgwebhooks_results_refused", "Results the database refused (their lease had expired).", stats.refused),
            ("pgwebhooks_results_unreported", "Results that could not be reported (retried later).",
             stats.unreported),
            ("pgwebhooks_db_reconnects", "Lost database connections (claim, complete, listen).", stats.reconnects),
            ("pgwebhooks_maintain_removed_deliveries", "Finished deliveries webhooks.maintain() removed for "
             "this runner's timer.", self.runner.maintainer.removed_deliveries),
            ("pgwebhooks_maintain_failures", "Rounds of webhooks.maintain() that failed (logged; delivery "
             "goes on).", self.runner.maintainer.failures),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily("pgwebhooks_ready", "1 when the database is reachable and its schema compatible.",
                                value=0 if self.ready_reason else 1)
        yield GaugeMetricFamily("pgwebhooks_backlog_reporter",
                                "1 on the one runner that reports the pgwebhooks_webhook_* backlog series.",
                                value=1 if self.backlog_reporter else 0)
        if not self.backlog_reporter:
            return
        now = datetime.now(UTC)
        info = GaugeMetricFamily("pgwebhooks_webhook_info", "A webhook's name and state (value 1).",
                                 labels=["webhook_id", "name", "state"])
        pending = GaugeMetricFamily("pgwebhooks_webhook_pending", "Deliveries still owed, per webhook.",
                                    labels=["webhook_id"])
        oldest = GaugeMetricFamily("pgwebhooks_webhook_oldest_pending_age_seconds",
                                   "Age of the oldest delivery still owed (0 when none).", labels=["webhook_id"])
        circuit = GaugeMetricFamily("pgwebhooks_webhook_circuit_state",
                                    "The circuit breaker's state per webhook (1 for the current one).",
                                    labels=["webhook_id", "state"])
        kept = GaugeMetricFamily("pgwebhooks_webhook_kept_outbox_blocks",
                                 "Outbox blocks past the retention that this webhook's unsent work keeps "
                                 "(alert on > 0: paused or failing for longer than the retention).",
                                 labels=["webhook_id"])
        kept_by = (self.outbox.kept_by if self.outbox else None) or {}
        for row in self.backlog:
            kept.add_metric([row.webhook_id], kept_by.get(row.webhook_id, 0))
            info.add_metric([row.webhook_id, row.name, row.state], 1)
            pending.add_metric([row.webhook_id], row.pending)
            age = (now - row.oldest_pending_at).total_seconds() if row.oldest_pending_at else 0.0
            oldest.add_metric([row.webhook_id], max(age, 0.0))
            for state in CIRCUIT_STATES:
                circuit.add_metric([row.webhook_id, state], 1 if row.circuit == state else 0)
        yield from (info, pending, oldest, circuit, kept)
        if self.outbox is not None:
            for name, doc, value in (
                ("pgwebhooks_outbox_bytes", "Size of the outbox's tables (captures, events, deliveries, attempts).",
                 self.outbox.bytes),
                ("pgwebhooks_outbox_blocks", "The outbox's blocks (webhooks.outbox_blocks).", self.outbox.blocks),
                ("pgwebhooks_outbox_kept_blocks", "Closed blocks past the retention kept by unsent work.",
                 self.outbox.kept_blocks),
            ):
                yield GaugeMetricFamily(name, doc, value=value)


class Monitor:
    """The metrics connection: readiness, the backlog (when elected) and the progress line."""

    def __init__(self, runner: Runner, metrics: RunnerMetrics) -> None:
        self.runner = runner
        self.metrics = metrics
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.loop_lag = 0.0

    def start(self, progress_interval: float, poll: bool = True) -> None:
        if poll:
            self._tasks.append(asyncio.create_task(self._poll_loop(), name="metrics-poll"))
        self._tasks.append(asyncio.create_task(self._ticker(), name="loop-ticker"))
        if progress_interval > 0:
            self._tasks.append(asyncio.create_task(self._progress_loop(progress_interval), name="progress"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()

    async def check_ready(self, max_age: float = 1.0) -> str | None:
        """None when ready, else a one-line reason. Cached for `max_age` seconds so that a storm
        of probes costs the database one query a second."""
        async with self._lock:
            if time.monotonic() - self.metrics.ready_checked_at < max_age:
                return self.metrics.ready_reason
            reason = await self._check()
            self.metrics.ready_reason = reason
            self.metrics.ready_checked_at = time.monotonic()
            return reason

    async def _check(self) -> str | None:
        try:
            conn = await self._connection()
            cur = await conn.execute(
                "SELECT to_regprocedure('webhooks.version()') IS NOT NULL,"
                " array(SELECT f FROM unnest(%s::text[]) f WHERE to_regprocedure(f) IS NULL)",
                (list(REQUIRED_FUNCTIONS),))
            found = await cur.fetchone()
            assert found is not None
            row: tuple[str | None, list[str]] = (None, found[1])
            if found[0]:
                cur = await conn.execute("SELECT webhooks.version()")
                got = await cur.fetchone()
                row = (got[0] if got else None, found[1])
        except psycopg.Error as exc:
            await self._drop()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"database unreachable: {first}"
        version, missing = row
        self.metrics.schema_version = version
        if version is None:
            return "schema not installed: webhooks.version() not found (run pgwebhooks migrate)"
        if missing:
            return f"schema {version} lacks {', '.join(missing)} (run pgwebhooks migrate)"
        if version.split(".")[0] != __version__.split(".")[0]:
            return f"schema version {version} is not compatible with runner {__version__}"
        return None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(
                self.runner.config.dsn, autocommit=True, connect_timeout=5,
                application_name="pgwebhooks-metrics")
            self.metrics.backlog_reporter = False
        return self._conn

    async def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = None
        self.metrics.backlog_reporter = False

    async def _poll_loop(self) -> None:
        while True:
            reason = await self.check_ready(max_age=0)
            if reason is None:
                async with self._lock:
                    await self._read_backlog()
            await asyncio.sleep(BACKLOG_INTERVAL)  # read each time: tests shorten it

    async def _read_backlog(self) -> None:
        try:
            conn = await self._connection()
            if not self.metrics.backlog_reporter:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (BACKLOG_LOCK_KEY,))
                got = await cur.fetchone()
                self.metrics.backlog_reporter = bool(got and got[0])
            if not self.metrics.backlog_reporter:
                return
            cur = await conn.execute("SELECT webhook_id::text, name, state, pending, oldest_pending_at, circuit"
                                     " FROM webhooks.runner_backlog()")
            self.metrics.backlog = [BacklogRow(*row) for row in await cur.fetchall()]
            self.metrics.outbox = await self._read_outbox(conn)
        except psycopg.Error as exc:
            log.debug("backlog read failed", extra={"error": str(exc).strip()})
            await self._drop()

    @staticmethod
    async def _read_outbox(conn: psycopg.AsyncConnection[Any]) -> OutboxSize | None:
        """The outbox's size and who keeps its blocks; None from a schema older than 0.8.0 (a runner
        upgraded before `migrate`), whose backlog is still reported."""
        try:
            cur = await conn.execute("SELECT webhook_id::text, bytes, blocks, kept_blocks"
                                     " FROM webhooks.runner_outbox()")
        except psycopg.errors.UndefinedFunction:
            return None
        rows = await cur.fetchall()
        whole = next((r for r in rows if r[0] is None), (None, 0, 0, 0))
        return OutboxSize(bytes=whole[1] or 0, blocks=whole[2] or 0, kept_blocks=whole[3] or 0,
                          kept_by={r[0]: r[3] for r in rows if r[0] is not None})

    async def _ticker(self) -> None:
        """How late the event loop wakes up: /healthz fails while it is stuck."""
        while True:
            start = time.monotonic()
            await asyncio.sleep(1.0)
            self.loop_lag = max(0.0, time.monotonic() - start - 1.0)

    async def _progress_loop(self, interval: float) -> None:
        stats = self.runner.stats
        last = (stats.delivered, stats.failed_attempts, stats.claimed)
        while True:
            await asyncio.sleep(interval)
            now = (stats.delivered, stats.failed_attempts, stats.claimed)
            extra: dict[str, Any] = {
                "delivered": now[0] - last[0], "failed_attempts": now[1] - last[1], "claimed": now[2] - last[2],
                "in_flight": self.runner.in_flight, "interval_s": interval,
            }
            if self.metrics.backlog_reporter:
                extra["pending"] = sum(r.pending for r in self.metrics.backlog)
            log.info("progress", extra=extra)
            last = now
