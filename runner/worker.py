"""The runner: carries signed requests from `webhooks.claim()` to the network and reports back.

Its parts, each with one job, share one small state object (state.py) that the runner owns:
- the claimer (claimer.py) leases work and hands back what will not be sent; a second claim
  loop claims beside it while there is a backlog;
- admission (admission.py) decides which claimed job may start: slow start, limits, saturation;
- the dispatcher (dispatcher.py) sends the jobs admitted;
- the reporter (reporter.py) hands results to `webhooks.complete()` in batches;
- the listener (listener.py) turns NOTIFY into a wake-up for the claimer;
- the maintainer (maintainer.py) calls `webhooks.maintain()` on a timer, off the hot path.
The claimer, reporter, listener and maintainer each hold a connection of their own and reconnect with
backoff; a lease the runner cannot report on expires and its work is claimed again. The runner
holds no secret and no retry policy: both live in the database. This module wires the parts
together and shuts them down in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from pgwebhooks.admission import DEFAULT_CIRCUIT_FAILURE_THRESHOLD, SLOW_START, Admission
from pgwebhooks.claimer import Claimer
from pgwebhooks.dispatcher import Dispatcher
from pgwebhooks.health_server import HealthServer
from pgwebhooks.listener import NOTIFY_CHANNEL, Listener
from pgwebhooks.maintainer import Maintainer
from pgwebhooks.metrics import RunnerMetrics
from pgwebhooks.reporter import Reporter
from pgwebhooks.sender import Sender
from pgwebhooks.state import Job, RunnerState, RunnerStats

# Kept importable from here for the CLI, the benchmarks and the tests. The threshold is only the
# default: the runner reads the database's own at start-up (see Claimer).
CIRCUIT_FAILURE_THRESHOLD = DEFAULT_CIRCUIT_FAILURE_THRESHOLD
__all__ = ["CIRCUIT_FAILURE_THRESHOLD", "NOTIFY_CHANNEL", "SLOW_START", "Job", "Runner", "RunnerConfig",
           "RunnerStats"]

log = logging.getLogger("pgwebhooks.runner")


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
    # Seconds between rounds of webhooks.maintain() (maintainer.py); 0: never.
    maintain_interval: float = 60.0


class Runner:
    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self._state = RunnerState()
        self.admission = Admission(config.concurrency, config.per_webhook_concurrency, config.batch_size,
                                   self._state)
        self.metrics = RunnerMetrics(self)
        self.reporter = Reporter(config, self._state, self.admission)
        self.dispatcher = Dispatcher(config.concurrency, self._state, self.admission, self.reporter, self.metrics)
        self.claimer = Claimer(config, self._state, self.admission, self.dispatcher, self.metrics)
        self.beside = Claimer(config, self._state, self.admission, self.dispatcher, self.metrics, self.claimer)
        self.listener = Listener(config, self._state)
        self.maintainer = Maintainer(config, self._state)

    # -- read-only views ---------------------------------------------------------------------

    @property
    def stats(self) -> RunnerStats:
        return self._state.stats

    @property
    def in_flight(self) -> int:
        """Sends running now."""
        return len(self._state.tasks)

    @property
    def stopping(self) -> bool:
        return self._state.signals.stopping.is_set()

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop claiming; in-flight sends get `shutdown_grace` seconds to finish."""
        if not self.stopping:
            log.info("shutdown requested: no new claims, finishing in-flight deliveries",
                     extra={"in_flight": self.in_flight})
            self._state.signals.stopping.set()

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
            self.dispatcher.attach(sender)
            listener = asyncio.create_task(self.listener.run(), name="listener")
            reporter = asyncio.create_task(self.reporter.run(), name="reporter")
            maintainer = asyncio.create_task(self.maintainer.run(), name="maintainer")
            beside = asyncio.create_task(self.beside.run(), name="claimer-beside")
            try:
                await self.claimer.run()
                # Its claim in progress lands in the ready jobs, which are released next.
                await beside
                await self._drain_in_flight()
            finally:
                beside.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beside
                listener.cancel()
                maintainer.cancel()
                self.reporter.nudge()
                await reporter
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
                with contextlib.suppress(asyncio.CancelledError):
                    await maintainer
                await health.stop()
        elapsed = time.monotonic() - self.stats.started_at
        log.info("runner stopped", extra={
            "delivered": self.stats.delivered, "failed_attempts": self.stats.failed_attempts,
            "released": self.stats.released, "uptime_s": round(elapsed, 1),
        })
        return self.stats

    async def _drain_in_flight(self) -> None:
        """Hand back what was claimed but never started, give in-flight sends the grace
        period, then hand back the ones that did not finish."""
        waiting = self._state.take_unsent()
        if waiting:
            await self.claimer.release(waiting)
        tasks = self._state.tasks
        if tasks:
            await asyncio.wait(list(tasks), timeout=self.config.shutdown_grace)
        unsent = list(tasks.items())
        for task, _ in unsent:
            task.cancel()
        if unsent:
            await asyncio.gather(*(t for t, _ in unsent), return_exceptions=True)
            await self.claimer.release([job for _, job in unsent])
