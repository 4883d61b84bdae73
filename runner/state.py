"""What the runner's parts share, and who may change it.

`RunnerState` is owned by the `Runner` (worker.py), which creates it and hands it to its parts;
each field names the one part that writes it, and the others only read it. Keeping the writer
single is what lets three loops and the send callbacks share it without locks on one event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from uuid import UUID


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


@dataclass
class Signals:
    """Wake-ups between the loops. Any part may set one; only the waiting loop clears it."""

    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # set by Runner.request_stop
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # new or retried work may be due
    room: asyncio.Event = field(default_factory=asyncio.Event)  # a send ended: room to claim again
    # A saturated webhook has room again, or a report freed room under a max_concurrency that
    # claim() counts: worth claiming again.
    unsaturated: asyncio.Event = field(default_factory=asyncio.Event)
    # The last claim came back full: more is due than one claim at a time can lease, so the
    # second claim loop may claim beside the first (see Claimer).
    backlog: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class RunnerState:
    """The jobs this runner holds, from claim to report."""

    stats: RunnerStats = field(default_factory=RunnerStats)
    signals: Signals = field(default_factory=Signals)
    # Written by the dispatcher: sends running now, and how many per webhook.
    tasks: dict[asyncio.Task[None], Job] = field(default_factory=dict)
    in_flight: dict[UUID, int] = field(default_factory=dict)
    # Written by the claimer (appends) and the dispatcher (takes): claimed but not yet started.
    # A slot that frees up starts the next job at once instead of waiting a claim's round trip
    # (which left a third of the slots idle against 50 ms endpoints).
    ready: deque[Job] = field(default_factory=deque)
    waiting: Counter[UUID] = field(default_factory=Counter)  # jobs in `ready`, per webhook
    # Written by the claim loops: jobs asked for by claims in progress, counted as held so that
    # two claims at once never ask for more than there is room for.
    claiming: int = 0
    # Written by the dispatcher, emptied by the claimer, which releases them: jobs that waited
    # past their lease's usable part, or whose webhook is failing.
    expired: list[Job] = field(default_factory=list)
    # Set by the dispatcher, cleared by the reporter: a send of a webhook with max_concurrency
    # ended since the last report, so a report frees room that claim() counts.
    sql_limited_sent: bool = False

    def load(self, webhook: UUID) -> int:
        """Jobs of `webhook` this runner holds: in flight and waiting to start."""
        return self.in_flight.get(webhook, 0) + self.waiting[webhook]

    def add_ready(self, jobs: list[Job]) -> None:
        self.ready.extend(jobs)
        self.waiting.update(job.webhook_id for job in jobs)

    def unwait(self, job: Job) -> None:
        left = self.waiting[job.webhook_id] - 1
        if left > 0:
            self.waiting[job.webhook_id] = left
        else:
            del self.waiting[job.webhook_id]

    def take_unsent(self) -> list[Job]:
        """Everything claimed but not started (for the shutdown's release)."""
        unsent = [*self.ready, *self.expired]
        self.ready.clear()
        self.waiting.clear()
        self.expired.clear()
        return unsent
