"""The runner: carries signed requests from `webhooks.claim()` to the network and reports back.

Three connections, each with one job: the claim loop leases work, the reporter hands results to
`webhooks.complete()` in batches, and the listener turns NOTIFY into a wake-up. Any of them may
lose its connection (a database restart, a killed backend); it reconnects with backoff and
nothing is lost, because every lease the runner cannot report on simply expires and the work is
claimed again. The runner holds no secret and no retry policy: both live in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pgwebhooks.health_server import HealthServer
from pgwebhooks.metrics import RunnerMetrics
from pgwebhooks.redact import clean_result, origin, scrub
from pgwebhooks.reporting import Backoff, ReportingMixin, first_of
from pgwebhooks.sender import Sender, SendResult

log = logging.getLogger("pgwebhooks.runner")

NOTIFY_CHANNEL = "webhooks"
CIRCUIT_FAILURE_THRESHOLD = 5  # as webhooks._circuit_failure_threshold()
# Slow start: a webhook's sends in flight begin at this many and grow by one per answer up to its
# limit (--per-webhook-concurrency, or its max_concurrency); a failure (no answer, a 5xx) takes it
# back here. A healthy fast endpoint gets the concurrency that throughput needs (20 in flight
# capped a single webhook well below what the runner can send); a dead one's first wave, each
# send of which costs its delivery an attempt before the circuit opens, stays this small.
SLOW_START = 20


@dataclass(frozen=True)
class RunnerConfig:
    dsn: str
    concurrency: int = 200
    per_webhook_concurrency: int = 100
    batch_size: int = 200
    poll_interval: float = 5.0
    shutdown_grace: float = 10.0
    lease_margin_seconds: int = 30
    report_batch_size: int = 500
    allow_private_networks: bool = False
    allowed_cidrs: tuple[str, ...] = ()
    # Reconnect backoff: from `reconnect_min` doubling up to `reconnect_max` seconds.
    reconnect_min: float = 0.2
    reconnect_max: float = 10.0
    # /metrics, /healthz, /readyz (health_server.py); None: not served. A progress line every
    # `progress_interval` seconds (0: none).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    progress_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class Job:
    delivery_id: int
    attempt: int
    webhook_id: UUID
    url: str
    body: str
    headers: dict[str, str]
    timeout_seconds: int
    # The webhook's max_concurrency, which claim() counts across all runners; None: this
    # runner's --per-webhook-concurrency, which it counts against its own sends.
    max_concurrency: int | None
    # Local clock: past this, a send could not finish within the lease claim() granted
    # (2 x timeout + margin from the claim), so the job is handed back instead of sent.
    start_by: float = 0.0


@dataclass
class RunnerStats:
    claimed: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    refused: int = 0
    refused_by_policy: int = 0  # sends this runner would not make (private destinations)
    unreported: int = 0  # results the database would not take; retried after their leases expire
    released: int = 0
    reconnects: int = 0
    started_at: float = field(default_factory=time.monotonic)


class Runner(ReportingMixin):
    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.stats = RunnerStats()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()  # a send finished: there may be room to claim again
        self._in_flight: dict[UUID, int] = {}
        self._limits: dict[UUID, int] = {}  # each webhook's concurrency limit, as claim() last said
        self._window: dict[UUID, int] = {}  # each webhook's slow-start window (see SLOW_START)
        self._tasks: dict[asyncio.Task[None], Job] = {}
        # Claimed but not yet started: a slot that frees up starts the next job at once instead
        # of waiting a claim's round trip (which left a third of the slots idle against 50 ms
        # endpoints). Bounded by `prefetch`, and per webhook by its concurrency limit.
        self._ready: deque[Job] = deque()
        self._expired: list[Job] = []  # waited too long in `_ready`; released by the claim loop
        self._waiting: Counter[UUID] = Counter()  # jobs in `_ready`, per webhook
        # A webhook that was saturated (see _saturated) has room again, or a report freed room
        # under a max_concurrency that claim() counts: worth claiming again.
        self._unsaturated = asyncio.Event()
        self._sql_limited_sent = False  # a send of a webhook with max_concurrency ended since the last report
        # Failures in a row per webhook since the last report (no response, or a 5xx). At the
        # circuit breaker's threshold the runner stops sending that webhook's waiting jobs and
        # hands them back unsent: the report about to open its circuit would come too late for
        # them, and a dead endpoint would take one attempt from each. Cleared by every report,
        # after which the circuit in the database decides.
        self._failing: Counter[UUID] = Counter()
        self._sender: Sender | None = None
        self.prefetch = max(1, min(config.batch_size, config.concurrency // 2))
        # The most of this runner's slots one webhook may hold, whatever its max_concurrency or
        # --per-webhook-concurrency say: a slow endpoint with max_concurrency 10000 otherwise took
        # every slot, and every other webhook waited for its timeouts.
        self._share = max(1, config.concurrency * 4 // 5)
        # How many of one webhook a claim may take: a limit's worth in flight and another waiting
        # to start as they end (see _saturated).
        self._per_claim = 2 * min(SLOW_START, config.per_webhook_concurrency, self._share)  # grows with the windows
        self._results: list[dict[str, Any]] = []
        self._results_ready = asyncio.Event()
        self._reporter_idle = asyncio.Event()
        self._reporter_idle.set()
        self.metrics = RunnerMetrics(self)

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop claiming; in-flight sends get `shutdown_grace` seconds to finish."""
        if not self._stopping.is_set():
            log.info("shutdown requested: no new claims, finishing in-flight deliveries",
                     extra={"in_flight": len(self._tasks)})
            self._stopping.set()

    async def run(self) -> RunnerStats:
        cfg = self.config
        log.info("runner started", extra={
            "concurrency": cfg.concurrency, "per_webhook": cfg.per_webhook_concurrency,
            "private_networks": "allowed" if cfg.allow_private_networks else "refused",
        })
        health = HealthServer(self, cfg.metrics_host, cfg.metrics_port, cfg.progress_interval)
        await health.start()
        async with Sender(
            allow_private_networks=cfg.allow_private_networks,
            allowed_cidrs=cfg.allowed_cidrs,
            max_connections=cfg.concurrency,
        ) as sender:
            listener = asyncio.create_task(self._listen(), name="listener")
            reporter = asyncio.create_task(self._report_loop(), name="reporter")
            try:
                await self._claim_loop(sender)
                await self._drain_in_flight()
            finally:
                listener.cancel()
                self._results_ready.set()
                await reporter
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
                await health.stop()
        elapsed = time.monotonic() - self.stats.started_at
        log.info("runner stopped", extra={
            "delivered": self.stats.delivered, "failed_attempts": self.stats.failed_attempts,
            "released": self.stats.released, "uptime_s": round(elapsed, 1),
        })
        return self.stats

    # -- claiming --------------------------------------------------------------------------

    async def _claim_loop(self, sender: Sender) -> None:
        cfg = self.config
        backoff = Backoff(cfg.reconnect_min, cfg.reconnect_max)
        conn: psycopg.AsyncConnection[Any] | None = None
        self._sender = sender
        try:
            while not self._stopping.is_set():
                self.metrics.heartbeat = time.monotonic()  # /healthz: the claim loop goes round
                room = cfg.concurrency + self.prefetch - len(self._tasks) - len(self._ready)
                idle_slots = len(self._tasks) + len(self._ready) < cfg.concurrency
                # With slots busy and jobs waiting, top up only once half the prefetch is used:
                # one claim per finished send would be a round trip per delivery.
                if room <= 0 or (room < self.prefetch // 2 and not idle_slots):
                    self._room.clear()
                    await first_of(self._room, self._stopping)
                    continue
                try:
                    if conn is None or conn.closed:
                        conn = await self._connect()
                    if self._expired:
                        expired, self._expired = self._expired, []
                        await self._release(expired, conn)
                    self._wake.clear()
                    self._room.clear()
                    saturated = self._saturated()
                    wanted = min(room, cfg.batch_size)
                    jobs = await self._claim(conn, wanted, saturated)
                    backoff.reset()
                except psycopg.OperationalError as exc:
                    await self._close(conn)
                    conn = None
                    await first_of(self._stopping, timeout=self._lost_connection("claim", exc, backoff))
                    continue
                except psycopg.Error as exc:
                    # Not a lost connection: the schema may be missing or mid-upgrade, or the role
                    # lack a grant. Say so plainly and keep trying; there is nothing to lose.
                    delay = backoff.next()
                    log.error("claim failed", extra={"error": str(exc).strip(), "sqlstate": exc.sqlstate,
                                                     "retry_in_s": round(delay, 2)})
                    await first_of(self._stopping, timeout=delay)
                    continue
                self._ready.extend(jobs)
                self._waiting.update(job.webhook_id for job in jobs)
                self._dispatch()
                if len(jobs) < wanted:
                    # Caught up, or held back by a limit (a claim takes at most
                    # --per-webhook-concurrency of a webhook). Ask the database what is due for
                    # the webhooks this runner has room for: more now, then claim again at once;
                    # otherwise sleep until a commit notifies us, the next retry, lease end, probe
                    # or rate-limit token is due, the poll interval passes (in case a
                    # notification was lost), or a saturated webhook has room again.
                    self._unsaturated.clear()
                    saturated = self._saturated()
                    per_webhook = Counter(job.webhook_id for job in jobs if job.max_concurrency is None)
                    if any(n >= self._per_claim and w not in saturated for w, n in per_webhook.items()):
                        continue  # a webhook gave all one claim may take of it: there is likely more
                    due_in = await self._next_due_in(conn, saturated)
                    if due_in == 0 and jobs:
                        continue
                    timeout = cfg.poll_interval * random.uniform(0.8, 1.2)
                    if due_in is not None:
                        # A little past the due time, so the claim's now() has reached it; and
                        # never a busy loop when the database says "now" but had nothing for us.
                        timeout = min(timeout, max(due_in + 0.002, 0.02))
                    await first_of(self._wake, self._stopping, self._unsaturated, timeout=timeout)
        finally:
            await self._close(conn)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self.config.dsn, autocommit=True, connect_timeout=10)

    def _lost_connection(self, role: str, exc: Exception, backoff: Backoff) -> float:
        """Log a lost connection; returns how long to wait before reconnecting."""
        delay = backoff.next()
        self.stats.reconnects += 1
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("database connection lost, reconnecting",
                    extra={"connection": role, "error": reason, "retry_in_s": round(delay, 2)})
        return delay

    @staticmethod
    async def _close(conn: psycopg.AsyncConnection[Any] | None) -> None:
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _claim(self, conn: psycopg.AsyncConnection[Any], wanted: int, saturated: list[UUID]) -> list[Job]:
        cfg = self.config
        started = time.monotonic()
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT delivery_id, attempt, webhook_id, url, body, headers, timeout_seconds, max_concurrency"
                " FROM webhooks.claim(%s, %s, %s, %s::uuid[])",
                (wanted, cfg.lease_margin_seconds, self._per_claim, saturated),
            )
            rows = await cur.fetchall()
        self.metrics.claimed(time.monotonic() - started)
        self.stats.claimed += len(rows)
        for row in rows:
            self._limits[row["webhook_id"]] = min(row["max_concurrency"] or cfg.per_webhook_concurrency, self._share)
        if len(self._limits) > 10_000:  # webhooks come and go; keep it bounded
            self._limits = {k: v for k, v in self._limits.items() if k in self._in_flight}
            self._window = {k: v for k, v in self._window.items() if k in self._in_flight}
        now = time.monotonic()
        # Half the margin is left for reporting the result before the lease runs out.
        return [Job(**row, start_by=now + row["timeout_seconds"] + cfg.lease_margin_seconds / 2) for row in rows]

    async def _next_due_in(self, conn: psycopg.AsyncConnection[Any], saturated: list[UUID]) -> float | None:
        try:
            cur = await conn.execute("SELECT webhooks.next_due_in(%s, %s::uuid[])",
                                     (self.config.per_webhook_concurrency, saturated))
            row = await cur.fetchone()
        except psycopg.Error as exc:  # an older schema, a lost connection: poll as before
            log.debug("next_due_in failed", extra={"error": str(exc).strip()})
            return None
        return float(row[0]) if row and row[0] is not None else None

    def _saturated(self) -> list[UUID]:
        """Webhooks with a full limit's worth of sends in flight and another waiting. The waiting
        ones start the moment a send ends, not a claim's round trip later: with one busy webhook
        at the default limit of 20, that round trip per 20 sends halved the runner's rate."""
        hooks = set(self._in_flight) | set(self._waiting)
        failing = {w for w, n in self._failing.items() if n >= CIRCUIT_FAILURE_THRESHOLD}
        # Waiting jobs count too, but not so many that they fill what the runner may claim.
        full = {w for w in hooks if self._load(w) >= min(2 * self._limit(w), self._share + max(1, self.prefetch // 2))}
        return list(full | failing)

    def _load(self, webhook: UUID) -> int:
        return self._in_flight.get(webhook, 0) + self._waiting[webhook]

    def _limit(self, webhook: UUID) -> int:
        """Sends of `webhook` this runner may have in flight now: its limit, within its window."""
        limit = self._limits.get(webhook, min(self.config.per_webhook_concurrency, self._share))
        return min(limit, self._window.get(webhook, SLOW_START))

    def _grow(self, webhook: UUID, answered: bool) -> None:
        limit = self._limits.get(webhook, min(self.config.per_webhook_concurrency, self._share))
        window = min(self._window.get(webhook, SLOW_START) + 1, limit) if answered else SLOW_START
        self._window[webhook] = window
        # One claim takes at most two windows' worth of a webhook: one in flight, one waiting.
        self._per_claim = max(self._per_claim, 2 * min(window, self.config.per_webhook_concurrency))

    def _dispatch(self) -> None:
        """Start waiting jobs while there are free slots, in claim order, skipping webhooks at
        their limit; hand back any that waited past the point where their lease would run out."""
        if self._stopping.is_set() or self._sender is None:
            return
        cfg = self.config
        now = time.monotonic()
        held: deque[Job] = deque()
        while self._ready and len(self._tasks) < cfg.concurrency:
            job = self._ready.popleft()
            if now > job.start_by or self._failing[job.webhook_id] >= CIRCUIT_FAILURE_THRESHOLD:
                self._unwait(job)
                self._expired.append(job)
                self._room.set()  # the claim loop releases them
            elif self._in_flight.get(job.webhook_id, 0) >= self._limit(job.webhook_id):
                held.append(job)
            else:
                self._unwait(job)
                self._start(self._sender, job)
        held.extend(self._ready)
        self._ready = held

    def _unwait(self, job: Job) -> None:
        left = self._waiting[job.webhook_id] - 1
        if left > 0:
            self._waiting[job.webhook_id] = left
        else:
            del self._waiting[job.webhook_id]

    # -- sending ---------------------------------------------------------------------------

    def _start(self, sender: Sender, job: Job) -> None:
        self._in_flight[job.webhook_id] = self._in_flight.get(job.webhook_id, 0) + 1
        task = asyncio.create_task(self._send(sender, job))
        self._tasks[task] = job
        task.add_done_callback(self._finished)

    async def _send(self, sender: Sender, job: Job) -> None:
        result = await sender.send(job.url, job.body, job.headers, float(job.timeout_seconds))
        self._record(job, result)

    def _finished(self, task: asyncio.Task[None]) -> None:
        job = self._tasks.pop(task)
        left = self._in_flight[job.webhook_id] - 1
        if left:
            self._in_flight[job.webhook_id] = left
        else:
            del self._in_flight[job.webhook_id]
        self._dispatch()
        self._room.set()
        if self._load(job.webhook_id) < 2 * self._limit(job.webhook_id):
            self._unsaturated.set()
        if job.max_concurrency is not None:
            self._sql_limited_sent = True
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Sender.send never raises for network trouble; this is a bug worth a loud line.
            log.error("send crashed", extra={"delivery_id": job.delivery_id, "error": repr(exc)})

    def _record(self, job: Job, result: SendResult) -> None:
        if result.refused_by_policy:
            # The endpoint was never asked: hand the delivery back with its attempt and pause
            # the webhook until an operator allows the destination (see hold_refused()).
            self.stats.refused_by_policy += 1
            log.warning("destination refused by this runner's network policy; pausing the webhook", extra={
                "delivery_id": job.delivery_id, "url": origin(job.url), "error": scrub(result.error, job.url),
            })
            self._results.append(clean_result({
                "delivery_id": job.delivery_id, "attempt": job.attempt,
                "refused_by_policy": scrub(result.error, job.url),
            }))
            self._results_ready.set()
            return
        ok = result.status_code is not None and 200 <= result.status_code < 300
        self.metrics.attempt(job.webhook_id, result.status_code, result.latency_ms)
        if result.status_code is None or result.status_code >= 500:
            self._failing[job.webhook_id] += 1
            self._grow(job.webhook_id, False)
        else:
            self._failing.pop(job.webhook_id, None)
            self._grow(job.webhook_id, True)
        if ok:
            self.stats.delivered += 1
        else:
            self.stats.failed_attempts += 1
            log.warning("delivery attempt failed", extra={
                "delivery_id": job.delivery_id, "attempt": job.attempt, "url": origin(job.url),
                "status": result.status_code, "error": scrub(result.error, job.url),
                "latency_ms": result.latency_ms,
            })
        self._results.append(clean_result({
            "delivery_id": job.delivery_id,
            "attempt": job.attempt,
            "status_code": result.status_code,
            "response_excerpt": result.response_excerpt,
            "error": result.error,
            "latency_ms": result.latency_ms,
            "retry_after_seconds": result.retry_after_seconds,
        }))
        self._results_ready.set()

    async def _drain_in_flight(self) -> None:
        """Hand back what was claimed but never started, give in-flight sends the grace
        period, then hand back the ones that did not finish."""
        waiting = [*self._ready, *self._expired]
        self._ready.clear()
        self._waiting.clear()
        self._expired.clear()
        if waiting:
            await self._release(waiting)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.config.shutdown_grace)
        unsent = list(self._tasks.items())
        for task, _ in unsent:
            task.cancel()
        if unsent:
            await asyncio.gather(*(t for t, _ in unsent), return_exceptions=True)
            await self._release([job for _, job in unsent])

    async def _release(self, jobs: list[Job], conn: psycopg.AsyncConnection[Any] | None = None) -> None:
        leases = Jsonb([{"delivery_id": j.delivery_id, "attempt": j.attempt} for j in jobs])
        try:
            if conn is None:
                async with await self._connect() as own:
                    cur = await own.execute("SELECT webhooks.release(%s)", (leases,))
                    row = await cur.fetchone()
            else:
                cur = await conn.execute("SELECT webhooks.release(%s)", (leases,))
                row = await cur.fetchone()
            self.stats.released += row[0] if row else 0
            log.info("released unsent deliveries", extra={"count": len(jobs)})
        except psycopg.Error as exc:
            # Their leases will expire and they will be claimed again: late, never lost.
            log.warning("could not release unsent deliveries; their leases will expire",
                        extra={"count": len(jobs), "error": str(exc).strip()})

    # -- waking ----------------------------------------------------------------------------

    async def _listen(self) -> None:
        backoff = Backoff(self.config.reconnect_min, self.config.reconnect_max)
        while True:
            conn = None
            try:
                conn = await self._connect()
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                backoff.reset()
                self._wake.set()  # anything committed while we were not listening
                async for _ in conn.notifies():
                    self._wake.set()
            except psycopg.OperationalError as exc:
                await self._close(conn)
                conn = None
                await asyncio.sleep(self._lost_connection("listen", exc, backoff))
            finally:
                await self._close(conn)

