"""Admission: which claimed jobs may start now, and how much of a webhook to claim.

Three rules keep one webhook from hurting the others or itself:
- slow start: a webhook's sends in flight begin at SLOW_START and grow by one per answer up to
  its limit (--per-webhook-concurrency, or its max_concurrency); a failure (no answer, a 5xx)
  takes it back to SLOW_START. A healthy fast endpoint gets the concurrency its throughput
  needs; a dead one's first wave, each send of which costs its delivery an attempt before the
  circuit opens, stays this small.
- a share cap: one webhook holds at most 80% of the runner's slots, whatever its limit says (a
  slow endpoint with max_concurrency 10000 otherwise took every slot, and every other webhook
  waited for its timeouts).
- saturation and failing: a webhook with a full limit's worth in flight and another waiting, or
  with as many failures in a row as open its circuit, is left out of the next claim.
"""

from __future__ import annotations

import time
from collections import Counter
from uuid import UUID

from pgwebhooks.state import Job, RunnerState

SLOW_START = 20
# Used only until the database has said its own (webhooks._circuit_failure_threshold()), or
# when the runner's role may not ask it.
DEFAULT_CIRCUIT_FAILURE_THRESHOLD = 5
MAX_REMEMBERED_WEBHOOKS = 10_000  # webhooks come and go; their limits are forgotten past this


def is_endpoint_failure(status_code: int | None) -> bool:
    """What complete() counts towards opening a circuit: no answer at all, or a 5xx."""
    return status_code is None or status_code >= 500


class Admission:
    """Per-webhook limits, slow-start windows and failures; the only writer of these."""

    def __init__(self, concurrency: int, per_webhook_concurrency: int, batch_size: int,
                 state: RunnerState) -> None:
        self._state = state
        self._concurrency = concurrency
        self._per_webhook = per_webhook_concurrency
        self._prefetch = max(1, min(batch_size, concurrency // 2))
        self._share = max(1, concurrency * 4 // 5)
        # How many of one webhook a claim may take: a limit's worth in flight and another
        # waiting to start as they end (see saturated). Grows with the windows.
        self._per_claim = 2 * min(SLOW_START, per_webhook_concurrency, self._share)
        self._limits: dict[UUID, int] = {}  # each webhook's limit, as claim() last said
        self._window: dict[UUID, int] = {}  # each webhook's slow-start window
        # Failures in a row per webhook since the last report. At the circuit breaker's threshold
        # the runner stops sending that webhook's waiting jobs and hands them back unsent: the
        # report about to open its circuit would come too late for them, and a dead endpoint
        # would take one attempt from each. Cleared by every report, after which the circuit in
        # the database decides.
        self._failing: Counter[UUID] = Counter()
        self._failure_threshold = DEFAULT_CIRCUIT_FAILURE_THRESHOLD

    # -- read-only views ---------------------------------------------------------------------

    @property
    def prefetch(self) -> int:
        """Jobs claimed beyond the free slots, so a send that ends starts the next at once."""
        return self._prefetch

    @property
    def share(self) -> int:
        """The most of this runner's slots one webhook may hold."""
        return self._share

    @property
    def per_claim(self) -> int:
        """The most of one webhook a claim may take."""
        return self._per_claim

    @property
    def failure_threshold(self) -> int:
        return self._failure_threshold

    def limit(self, webhook: UUID) -> int:
        """Sends of `webhook` this runner may have in flight now: its limit, within its window."""
        return min(self._limit_of(webhook), self._window.get(webhook, SLOW_START))

    def is_failing(self, webhook: UUID) -> bool:
        # get(): a Counter's own lookup of a missing key goes through Python-level __missing__.
        return self._failing.get(webhook, 0) >= self._failure_threshold

    # -- decisions ---------------------------------------------------------------------------

    def claim_room(self) -> int:
        """How many jobs may be claimed now; 0: wait for a send to end first."""
        held = len(self._state.tasks) + len(self._state.ready) + self._state.claiming
        room = self._concurrency + self._prefetch - held
        # With slots busy and jobs waiting, top up only once half the prefetch is used: one
        # claim per finished send would be a round trip per delivery.
        if room <= 0 or (room < self._prefetch // 2 and held >= self._concurrency):
            return 0
        return room

    def saturated(self) -> list[UUID]:
        """Webhooks to leave out of a claim: those with a full limit's worth of sends in flight
        and another waiting, and failing ones. The waiting ones start the moment a send ends, not
        a claim's round trip later: with one busy webhook at a limit of 20, that round trip per
        20 sends halved the runner's rate."""
        hooks = set(self._state.in_flight) | set(self._state.waiting)
        failing = {w for w in self._failing if self.is_failing(w)}
        # Waiting jobs count too, but not so many that they fill what the runner may claim.
        cap = self._share + max(1, self._prefetch // 2)
        full = {w for w in hooks if self._state.load(w) >= min(2 * self.limit(w), cap)}
        return list(full | failing)

    def gave_all_it_may(self, jobs: list[Job], saturated: list[UUID]) -> bool:
        """A webhook gave all one claim may take of it: there is likely more to claim now."""
        per_webhook = Counter(job.webhook_id for job in jobs if job.max_concurrency is None)
        return any(n >= self._per_claim and w not in saturated for w, n in per_webhook.items())

    def may_start(self, job: Job) -> bool:
        return self._state.in_flight.get(job.webhook_id, 0) < self.limit(job.webhook_id)

    def must_hand_back(self, job: Job, now: float | None = None) -> bool:
        """Too late to send within its lease, or its webhook is failing."""
        return (time.monotonic() if now is None else now) > job.start_by or self.is_failing(job.webhook_id)

    def has_room_again(self, webhook: UUID) -> bool:
        return self._state.load(webhook) < 2 * self.limit(webhook)

    # -- what the other parts report -----------------------------------------------------------

    def set_failure_threshold(self, threshold: int) -> None:
        """The circuit breaker's threshold, as the database says."""
        if threshold >= 1:
            self._failure_threshold = threshold

    def claimed(self, webhook: UUID, max_concurrency: int | None) -> None:
        """claim() said this webhook's limit: its max_concurrency, or this runner's own."""
        self._limits[webhook] = min(max_concurrency or self._per_webhook, self._share)
        if len(self._limits) > MAX_REMEMBERED_WEBHOOKS:
            busy = self._state.in_flight
            self._limits = {k: v for k, v in self._limits.items() if k in busy}
            self._window = {k: v for k, v in self._window.items() if k in busy}

    def answered(self, webhook: UUID, status_code: int | None) -> None:
        """A send ended with this status (None: no answer)."""
        if is_endpoint_failure(status_code):
            self._failing[webhook] += 1
            self.grow(webhook, answered=False)
        else:
            self._failing.pop(webhook, None)
            self.grow(webhook, answered=True)

    def grow(self, webhook: UUID, answered: bool) -> None:
        """Widen the webhook's window by one after an answer; back to SLOW_START after a failure."""
        limit = self._limit_of(webhook)
        window = min(self._window.get(webhook, SLOW_START) + 1, limit) if answered else SLOW_START
        self._window[webhook] = window
        # One claim takes at most two windows' worth of a webhook: one in flight, one waiting.
        self._per_claim = max(self._per_claim, 2 * min(window, self._per_webhook))

    def reported(self) -> None:
        """Results went to complete(): the database's circuit decides from here."""
        self._failing.clear()

    def _limit_of(self, webhook: UUID) -> int:
        return self._limits.get(webhook, min(self._per_webhook, self._share))
