"""The reporter: hands send results to `webhooks.complete()` in batches, on a connection of its own.

A lost connection keeps the batch for later; a batch the database refuses for what one result
contains (a data error) is reported result by result, so one hostile response cannot send a
whole batch again and again; a batch it refuses for its own state (a missing grant, a schema
mid-upgrade) is let go: those leases expire and the deliveries are sent again, late but not lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from pgwebhooks.admission import Admission
from pgwebhooks.connection import Backoff, Conn, close, connect, first_of, lost_connection
from pgwebhooks.state import RunnerState

if TYPE_CHECKING:
    from pgwebhooks.worker import RunnerConfig

log = logging.getLogger("pgwebhooks.runner")

# Stored instead of a response excerpt (or error) the database refused to store.
UNSTORABLE = "the response could not be stored (refused by the database)"
# A small batch waits up to this long for more results. complete() costs ~0.7 ms a call besides
# ~30 us a result: reporting results as they trickled in, a few dozen at a time, nearly doubled
# its cost per result. Leases last minutes; nothing else waits for these reports, except claims
# of webhooks whose max_concurrency the database counts (those are reported at once).
REPORT_LINGER = 0.05


def is_data_error(exc: psycopg.Error) -> bool:
    """A refusal caused by what a result contains (class 22, data exception; 23, integrity), not by
    the database's state: retrying the results one by one can then get the others through."""
    return (exc.sqlstate or "")[:2] in ("22", "23")


class Reporter:
    """Owns the queue of results not yet reported."""

    def __init__(self, config: RunnerConfig, state: RunnerState, admission: Admission) -> None:
        self._config = config
        self._state = state
        self._admission = admission
        self._results: list[dict[str, Any]] = []
        self._ready = asyncio.Event()
        self._enough = asyncio.Event()  # a batch worth reporting without waiting for more
        self._worth = max(1, config.report_batch_size // 4)
        self._give_up_at: float | None = None

    @property
    def pending(self) -> int:
        """Results waiting to be reported."""
        return len(self._results)

    def submit(self, result: dict[str, Any]) -> None:
        self._results.append(result)
        self._ready.set()
        if len(self._results) >= self._worth:
            self._enough.set()

    def nudge(self) -> None:
        """Look again now (shutting down: nothing more will be submitted once sends end)."""
        self._ready.set()
        self._enough.set()

    async def run(self) -> None:
        """Send results to complete() in batches until stopped and everything is reported."""
        backoff = Backoff(self._config.reconnect_min, self._config.reconnect_max)
        conn: Conn | None = None
        try:
            while True:
                if not self._results:
                    if self._state.signals.stopping.is_set() and not self._state.tasks:
                        return
                    self._ready.clear()
                    await first_of(self._ready, timeout=0.5)
                    continue
                if self._may_wait_for_more():
                    self._enough.clear()
                    await first_of(self._enough, self._state.signals.stopping, timeout=REPORT_LINGER)
                conn, go_on = await self._report_batch(conn, backoff)
                if not go_on:
                    return
        finally:
            await close(conn)

    def _may_wait_for_more(self) -> bool:
        state = self._state
        return (len(self._results) < self._worth and not state.signals.stopping.is_set()
                and not state.sql_limited_sent)

    async def _report_batch(self, conn: Conn | None, backoff: Backoff) -> tuple[Conn | None, bool]:
        """Report the next batch; returns the connection to go on with, and False to give up."""
        batch = self._results[: self._config.report_batch_size]
        try:
            if conn is None or conn.closed:
                conn = await connect(self._config.dsn)
            await self._complete(conn, batch)
            del self._results[: len(batch)]
            backoff.reset()
        except psycopg.OperationalError as exc:
            # Checked before psycopg.Error below: a lost connection keeps the batch for later.
            if self._past_grace():
                log.error("could not report results before shutting down; "
                          "those deliveries will be retried", extra={"count": len(self._results)})
                return conn, False
            await close(conn)
            await asyncio.sleep(lost_connection("complete", exc, backoff, self._state.stats))
            return None, True
        except psycopg.Error as exc:
            del self._results[: len(batch)]
            if is_data_error(exc) and conn is not None:
                return await self._one_by_one(conn, batch), True
            await self._let_go(batch, exc, backoff)
        return conn, True

    def _past_grace(self) -> bool:
        if not self._state.signals.stopping.is_set():
            return False
        self._give_up_at = self._give_up_at or time.monotonic() + self._config.shutdown_grace
        return time.monotonic() > self._give_up_at

    async def _one_by_one(self, conn: Conn, batch: list[dict[str, Any]]) -> Conn | None:
        """Something in one result the database will not take: report the others one by one
        rather than let one hostile response resend the whole batch forever."""
        lost = await self._complete_one_by_one(conn, batch)
        if lost is None:  # the connection went meanwhile: keep them all for later
            self._results[:0] = batch
            await close(conn)
            return None
        return conn

    async def _let_go(self, batch: list[dict[str, Any]], exc: psycopg.Error, backoff: Backoff) -> None:
        """The database refused the batch itself (a schema mid-upgrade, a missing grant).
        Retrying it could block every later result, so let it go: those leases expire and the
        deliveries are sent again, late but not lost."""
        self._state.stats.unreported += len(batch)
        delay = backoff.next()
        log.error("could not report results; those deliveries will be retried when their leases expire",
                  extra={"count": len(batch), "error": str(exc).strip(), "sqlstate": exc.sqlstate,
                         "retry_in_s": round(delay, 2)})
        await asyncio.sleep(delay)

    async def _complete_one_by_one(self, conn: Conn, batch: list[dict[str, Any]]) -> int | None:
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
        self._state.stats.unreported += lost
        return lost

    async def _complete(self, conn: Conn, batch: list[dict[str, Any]]) -> None:
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
        self._reported(rows)

    def _reported(self, rows: list[Any]) -> None:
        # Reported leases no longer count against their webhook's max_concurrency in claim(): a
        # claim loop held back by one may go on. A retry may have been scheduled sooner than the
        # claim loop means to wake: it looks again.
        state, signals = self._state, self._state.signals
        self._admission.reported()
        if state.sql_limited_sent:
            state.sql_limited_sent = False
            signals.unsaturated.set()
        if any(r[2] == "pending" for r in rows):
            signals.wake.set()
        refused = [r for r in rows if r[2] == "refused"]
        if refused:
            state.stats.refused += len(refused)
            log.warning("results refused: their leases had expired (the deliveries were or will be retried)",
                        extra={"count": len(refused), "delivery_ids": [r[0] for r in refused[:10]]})
