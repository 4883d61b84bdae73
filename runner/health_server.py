"""`pgwebhooks run --metrics-port`: /metrics, /healthz and /readyz on a small aiohttp server.

/healthz: the process answers, neither its event loop nor its claim loop is stuck, it is not stopping.
/readyz:  the database answers and its schema is one this runner can serve (see metrics.Monitor).
Both answer 200 "ok" or 503 with a one-line reason, for orchestrators and humans alike.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pgwebhooks.metrics import Monitor, RunnerMetrics

if TYPE_CHECKING:
    from pgwebhooks.worker import Runner

log = logging.getLogger("pgwebhooks.runner")

STUCK_LOOP_SECONDS = 10.0  # an event loop this late waking up is not serving its sends
STUCK_CLAIM_SECONDS = 60.0


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


def build_app(runner: Runner, metrics: RunnerMetrics, monitor: Monitor) -> web.Application:
    registry = metrics.registry()

    async def scrape(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if runner.stopping:
            return _plain(503, "shutting down")
        if monitor.loop_lag > STUCK_LOOP_SECONDS:
            return _plain(503, f"event loop stalled {monitor.loop_lag:.1f} s")
        # The claim loop goes round at least every poll interval (or reconnect backoff), except
        # while every slot is busy, when it waits for a send to end.
        quiet = time.monotonic() - metrics.heartbeat
        busy = runner.in_flight >= runner.config.concurrency
        if quiet > max(STUCK_CLAIM_SECONDS, 10 * runner.config.poll_interval) and not busy:
            return _plain(503, f"claim loop stalled: no round for {quiet:.0f} s")
        return _plain(200, "ok")

    async def readyz(_: web.Request) -> web.Response:
        if runner.stopping:
            return _plain(503, "shutting down")
        reason = await monitor.check_ready()
        return _plain(503, reason) if reason else _plain(200, "ok")

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class HealthServer:
    def __init__(self, runner: Runner, host: str, port: int | None, progress_interval: float) -> None:
        self.runner, self.host, self.port = runner, host, port
        self.monitor = Monitor(runner, runner.metrics)
        self.progress_interval = progress_interval
        self._app_runner: web.AppRunner | None = None

    async def start(self) -> None:
        # Without a port nothing reads readiness or the backlog: no extra database connection.
        self.monitor.start(self.progress_interval, poll=self.port is not None)
        if self.port is None:
            return
        self._app_runner = web.AppRunner(build_app(self.runner, self.runner.metrics, self.monitor),
                                         access_log=None, handle_signals=False)
        await self._app_runner.setup()
        site = web.TCPSite(self._app_runner, self.host, self.port)
        await site.start()
        log.info("metrics and health endpoints listening",
                 extra={"address": f"http://{self.host}:{self.port}", "paths": "/metrics /healthz /readyz"})

    async def stop(self) -> None:
        if self._app_runner is not None:
            await self._app_runner.cleanup()
        await self.monitor.stop()
