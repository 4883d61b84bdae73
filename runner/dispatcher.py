"""The dispatcher: starts claimed jobs as slots free up, sends them, and queues their results.

Jobs start in claim order, skipping webhooks at their limit (see admission.py); a job that waited
past the point where its lease would run out, or whose webhook is failing, is handed back to the
claimer to release instead of being sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING
from uuid import UUID

from pgwebhooks.admission import Admission
from pgwebhooks.redact import clean_result, origin, scrub
from pgwebhooks.reporter import Reporter
from pgwebhooks.sender import Sender, SendResult
from pgwebhooks.state import Job, RunnerState

if TYPE_CHECKING:
    from pgwebhooks.metrics import RunnerMetrics

log = logging.getLogger("pgwebhooks.runner")
# How often, at most, dispatch looks at every waiting job for one to hand back (its lease too
# short to send now, or its webhook failing) while the webhooks ahead of it are full.
HAND_BACK_SCAN = 0.05


class Dispatcher:
    """The only writer of the state's tasks, in-flight counts and expired jobs."""

    def __init__(self, concurrency: int, state: RunnerState, admission: Admission, reporter: Reporter,
                 metrics: RunnerMetrics) -> None:
        self._concurrency = concurrency
        self._state = state
        self._admission = admission
        self._reporter = reporter
        self._metrics = metrics
        self._sender: Sender | None = None
        self._next_scan = 0.0  # monotonic time of dispatch's next look at every waiting job

    def attach(self, sender: Sender) -> None:
        """Sends go through `sender` from now on; until then nothing starts."""
        self._sender = sender

    def dispatch(self) -> None:
        """Start waiting jobs while there are free slots."""
        state = self._state
        if state.signals.stopping.is_set() or self._sender is None:
            return
        now = time.monotonic()
        held: deque[Job] = deque()
        # Webhooks found at their limit in this pass stay there (starting jobs only adds to the
        # in-flight counts): every send that ends walks the waiting jobs, and asking admission
        # again for each job of a full webhook was a fifth of the runner's CPU. Once every webhook
        # with jobs waiting is full, the rest of the queue is left as it is, except every
        # HAND_BACK_SCAN seconds, when each waiting job is checked for being too late to send.
        full: set[UUID] = set()
        admission = self._admission
        scan_all = now >= self._next_scan
        if scan_all:
            self._next_scan = now + HAND_BACK_SCAN
        while state.ready and len(state.tasks) < self._concurrency:
            if full and not scan_all and len(full) >= len(state.waiting):
                break
            job = state.ready.popleft()
            if admission.must_hand_back(job, now):
                state.unwait(job)
                state.expired.append(job)
                state.signals.room.set()  # the claimer releases them
            elif job.webhook_id in full:
                held.append(job)
            elif not admission.may_start(job):
                full.add(job.webhook_id)
                held.append(job)
            else:
                state.unwait(job)
                self._start(self._sender, job)
        held.extend(state.ready)
        state.ready = held

    def _start(self, sender: Sender, job: Job) -> None:
        in_flight = self._state.in_flight
        in_flight[job.webhook_id] = in_flight.get(job.webhook_id, 0) + 1
        task = asyncio.create_task(self._send(sender, job))
        self._state.tasks[task] = job
        task.add_done_callback(self._finished)

    async def _send(self, sender: Sender, job: Job) -> None:
        result = await sender.send(job.url, job.body, job.headers, float(job.timeout_seconds))
        self._record(job, result)

    def _finished(self, task: asyncio.Task[None]) -> None:
        state = self._state
        job = state.tasks.pop(task)
        left = state.in_flight[job.webhook_id] - 1
        if left:
            state.in_flight[job.webhook_id] = left
        else:
            del state.in_flight[job.webhook_id]
        self.dispatch()
        state.signals.room.set()
        if self._admission.has_room_again(job.webhook_id):
            state.signals.unsaturated.set()
        if job.max_concurrency is not None:
            state.sql_limited_sent = True
            self._reporter.nudge()  # its report frees room that claim() counts: no lingering
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Sender.send never raises for network trouble; this is a bug worth a loud line.
            log.error("send crashed", extra={"delivery_id": job.delivery_id, "error": repr(exc)})

    def _record(self, job: Job, result: SendResult) -> None:
        if result.refused_by_policy:
            self._refused_by_policy(job, result)
            return
        self._metrics.attempt(job.webhook_id, result.status_code, result.latency_ms)
        self._admission.answered(job.webhook_id, result.status_code)
        stats = self._state.stats
        if result.status_code is not None and 200 <= result.status_code < 300:
            stats.delivered += 1
        else:
            stats.failed_attempts += 1
            log.warning("delivery attempt failed", extra={
                "delivery_id": job.delivery_id, "attempt": job.attempt, "url": origin(job.url),
                "status": result.status_code, "error": scrub(result.error, job.url),
                "latency_ms": result.latency_ms,
            })
        self._reporter.submit(clean_result({
            "delivery_id": job.delivery_id,
            "attempt": job.attempt,
            "status_code": result.status_code,
            "response_excerpt": result.response_excerpt,
            "error": result.error,
            "latency_ms": result.latency_ms,
            "retry_after_seconds": result.retry_after_seconds,
        }))

    def _refused_by_policy(self, job: Job, result: SendResult) -> None:
        """The endpoint was never asked: hand the delivery back with its attempt and pause the
        webhook until an operator allows the destination (see hold_refused())."""
        self._state.stats.refused_by_policy += 1
        log.warning("destination refused by this runner's network policy; pausing the webhook", extra={
            "delivery_id": job.delivery_id, "url": origin(job.url), "error": scrub(result.error, job.url),
        })
        self._reporter.submit(clean_result({
            "delivery_id": job.delivery_id, "attempt": job.attempt,
            "refused_by_policy": scrub(result.error, job.url),
        }))
