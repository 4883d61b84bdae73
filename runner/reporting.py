"""Reporting results to `webhooks.complete()`, for the runner (see worker.py).

Results are reported in batches on a connection of their own. A lost connection keeps the batch
for later; a batch the database refuses for what one result contains (a data error) is reported
result by result, so one hostile response cannot send a whole batch again and again; a batch it
refuses for its own state (a missing grant, a schema mid-upgrade) is let go: those leases expire
and the deliveries are sent again, late but not lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

if TYPE_CHECKING:
    from pgwebhooks.worker import Job, RunnerConfig, RunnerStats

log = logging.getLogger("pgwebhooks.runner")


class Backoff:
    """Exponential reconnect delay with full jitter, reset after a success."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high, self.current = low, high, low

    def next(self) -> float:
        delay = random.uniform(self.low, self.current)
        self.current = min(self.current * 2, self.high)
        return delay

    def reset(self) -> None:
        self.current = self.low


# Stored instead of a response excerpt (or error) the database refused to store.
UNSTORABLE = "the response could not be stored (refused by the database)"


def is_data_error(exc: psycopg.Error) -> bool:
    """A refusal caused by what a result contains (class 22, data exception; 23, integrity), not by
    the database's state: retrying the results one by one can then get the others through."""
    return (exc.sqlstate or "")[:2] in ("22", "23")


async def first_of(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Return when any event is set or the timeout passes."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class ReportingMixin:
    """The runner's reporter task; the attributes below are the runner's."""

    config: RunnerConfig
    stats: RunnerStats
    _results: list[dict[str, Any]]
    _results_ready: asyncio.Event
    _stopping: asyncio.Event
    _wake: asyncio.Event
    _unsaturated: asyncio.Event
    _sql_limited_sent: bool
    _failing: Counter[UUID]
    _tasks: dict[asyncio.Task[None], Job]

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        raise NotImplementedError

    def _lost_connection(self, role: str, exc: Exception, backoff: Backoff) -> float:
        raise NotImplementedError

    @staticmethod
    async def _close(conn: psycopg.AsyncConnection[Any] | None) -> None:
        raise NotImplementedError

    async def _report_loop(self) -> None:
        """Send results to complete() in batches until stopped and everything is reported."""
        cfg = self.config
        backoff = Backoff(cfg.reconnect_min, cfg.reconnect_max)
        conn: psycopg.AsyncConnection[Any] | None = None
        give_up_at: float | None = None
        try:
            while True:
                if not self._results:
                    if self._stopping.is_set() and not self._tasks:
                        return
                    self._results_ready.clear()
                    await first_of(self._results_ready, timeout=0.5)
                    continue
                batch = self._results[: cfg.report_batch_size]
                try:
                    if conn is None or conn.closed:
                        conn = await self._connect()
                    await self._complete(conn, batch)
                    del self._results[: len(batch)]
                    backoff.reset()
                except psycopg.OperationalError as exc:
                    # Checked before psycopg.Error below: a lost connection keeps the batch for later.
                    if self._stopping.is_set():
                        give_up_at = give_up_at or time.monotonic() + cfg.shutdown_grace
                        if time.monotonic() > give_up_at:
                            log.error("could not report results before shutting down; "
                                      "those deliveries will be retried", extra={"count": len(self._results)})
                            return
                    await self._close(conn)
                    conn = None
                    await asyncio.sleep(self._lost_connection("complete", exc, backoff))
                except psycopg.Error as exc:
                    del self._results[: len(batch)]
                    if is_data_error(exc):
                        # Something in one result the database will not take: report the others one
                        # by one rather than let one hostile response resend the whole batch forever.
                        lost = await self._complete_one_by_one(conn, batch)
                        if lost is None:  # the connection went meanwhile: keep them all for later
                            self._results[:0] = batch
                            await self._close(conn)
                            conn = None
                        continue
                    # The database refused the batch itself (a schema mid-upgrade, a missing grant).
                    # Retrying it could block every later result, so let it go: those leases expire
                    # and the deliveries are sent again, late but not lost.
                    self.stats.unreported += len(batch)
                    delay = backoff.next()
                    log.error("could not report results; those deliveries will be retried when their leases expire",
                              extra={"count": len(batch), "error": str(exc).strip(), "sqlstate": exc.sqlstate,
                                     "retry_in_s": round(delay, 2)})
                    await asyncio.sleep(delay)
        finally:
            await self._close(conn)

    async def _complete_one_by_one(
        self, conn: psycopg.AsyncConnection[Any], batch: list[dict[str, Any]]
    ) -> int | None:
        """Report each result alone; one the database still refuses goes again without its
        response excerpt, then is given up on (its lease expires). Returns how many were given
        up on, or None if the connection was lost (nothing is dropped then)."""
        lost = 0
        for result in batch:
            for attempt in (result, {**result, "response_excerpt": None, "error": UNSTORABLE}):
                try:
                    await self._complete(conn, [attempt])
                    break
                except psycopg.OperationalError:
                    return None
                except psycopg.Error as exc:
                    log.warning("result refused by the database", extra={
                        "delivery_id": result.get("delivery_id"), "sqlstate": exc.sqlstate,
                        "error": str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    })
            else:
                lost += 1
        self.stats.unreported += lost
        return lost

    async def _complete(self, conn: psycopg.AsyncConnection[Any], batch: list[dict[str, Any]]) -> None:
        held = [{"delivery_id": r["delivery_id"], "attempt": r["attempt"], "reason": r["refused_by_policy"]}
                for r in batch if "refused_by_policy" in r]
        results = [r for r in batch if "refused_by_policy" not in r]
        rows: list[Any] = []
        if held:
            await conn.execute("SELECT webhooks.hold_refused(%s)", (Jsonb(held),))
        if results:
            cur = await conn.execute(
                "SELECT delivery_id, attempt, status FROM webhooks.complete(%s)"
                " WHERE status IN ('refused', 'pending')",
                (Jsonb(results),),
            )
            rows = await cur.fetchall()
        # Reported leases no longer count against their webhook's max_concurrency in claim(): a
        # claim loop held back by one may go on. A retry may have been scheduled sooner than the
        # claim loop means to wake: it looks again.
        self._failing.clear()  # reported: the database's circuit decides from here
        if self._sql_limited_sent:
            self._sql_limited_sent = False
            self._unsaturated.set()
        if any(r[2] == "pending" for r in rows):
            self._wake.set()
        refused = [r for r in rows if r[2] == "refused"]
        if refused:
            self.stats.refused += len(refused)
            log.warning("results refused: their leases had expired (the deliveries were or will be retried)",
                        extra={"count": len(refused), "delivery_ids": [r[0] for r in refused[:10]]})
