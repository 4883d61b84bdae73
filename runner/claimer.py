"""The claimer: leases work with `webhooks.claim()`, hands back what will not be sent, and sleeps
until more is due.

After a claim that came back short (caught up, or held back by a limit) it asks the database
what is due for the webhooks this runner has room for: if something is due now it claims again
at once; otherwise it sleeps until a commit notifies it, the next retry, lease end, probe or
rate-limit token is due, the poll interval passes (in case a notification was lost), or a
saturated webhook has room again. Asking registers it as a waiting runner, which writers then
NOTIFY; while its claims come back full it says so (`webhooks.runner_busy()`), and writers skip
the NOTIFY, which costs every notifying commit a database-wide lock.

A runner has two claim loops, each on a connection of its own. claim() renders and signs every
delivery it leases, so one claim of a deep backlog keeps the database busy for tens of
milliseconds while the runner's sends may finish sooner: with one loop the sends waited for
claims. The second loop claims only while the last claim came back full (a backlog), beside
the first; it never waits on next_due_in() nor registers as a waiting runner, so an idle runner
costs what it did with one loop. Both count what they ask for as held (`claiming`), so the two
together never claim beyond the room admission gives.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pgwebhooks.admission import Admission
from pgwebhooks.connection import Backoff, Conn, close, connect, first_of, lost_connection
from pgwebhooks.dispatcher import Dispatcher
from pgwebhooks.state import Job, RunnerState

if TYPE_CHECKING:
    from pgwebhooks.metrics import RunnerMetrics
    from pgwebhooks.worker import RunnerConfig

log = logging.getLogger("pgwebhooks.runner")
THRESHOLD_FUNCTION = "webhooks.circuit_failure_threshold()"
# After registering as a waiting runner, sleep at most SETTLE_POLL seconds for SETTLE_SECONDS.
SETTLE_SECONDS = 10.0
SETTLE_POLL = 0.25
CLAIM_COLUMNS = "delivery_id, attempt, webhook_id, url, body, headers, timeout_seconds, max_concurrency"


class Claimer:
    """Owns a claim connection; the two claim loops are the only ones that add to the state's
    ready jobs."""

    def __init__(self, config: RunnerConfig, state: RunnerState, admission: Admission, dispatcher: Dispatcher,
                 metrics: RunnerMetrics, beside: Claimer | None = None) -> None:
        self._config = config
        self._state = state
        self._admission = admission
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._conn: Conn | None = None
        # Given the first loop, this one claims only beside it, during a backlog.
        self._beside = beside is not None
        self._webhook_ids: dict[UUID, UUID] = beside._webhook_ids if beside is not None else {}
        self._registered = False  # as a waiting runner, by next_due_in()
        self._settle_until = 0.0  # short sleeps until then: see _wait_for_more

    async def run(self) -> None:
        """Claim until stopped."""
        signals = self._state.signals
        backoff = Backoff(self._config.reconnect_min, self._config.reconnect_max)
        try:
            while not signals.stopping.is_set():
                if self._beside and not signals.backlog.is_set():
                    await first_of(signals.backlog, signals.stopping)
                    continue
                if not self._beside:
                    self._metrics.heartbeat = time.monotonic()  # /healthz: the claim loop goes round
                room = self._admission.claim_room()
                if room == 0:
                    signals.room.clear()
                    await first_of(signals.room, signals.stopping)
                    continue
                wanted = min(room, self._config.batch_size)
                self._state.claiming += wanted
                try:
                    jobs = await self._claim_round(wanted, backoff)
                finally:
                    self._state.claiming -= wanted
                if jobs is None:
                    continue
                self._state.add_ready(jobs)
                self._dispatcher.dispatch()
                if len(jobs) < wanted:
                    signals.backlog.clear()
                    if not self._beside:
                        await self._wait_for_more(jobs)
                    continue
                signals.backlog.set()
                if self._registered:
                    await self._busy()
        finally:
            await close(self._conn)
            self._conn = None

    async def _claim_round(self, wanted: int, backoff: Backoff) -> list[Job] | None:
        """Claim up to `wanted` jobs; None after a failure (already waited for)."""
        stopping = self._state.signals.stopping
        try:
            conn = await self._connection()
            if self._state.expired:
                expired, self._state.expired = self._state.expired, []
                await self.release(expired, conn)
            self._state.signals.wake.clear()
            self._state.signals.room.clear()
            jobs = await self._claim(conn, wanted, self._admission.saturated())
            backoff.reset()
            return jobs
        except psycopg.OperationalError as exc:
            await close(self._conn)
            self._conn = None
            await first_of(stopping, timeout=lost_connection("claim", exc, backoff, self._state.stats))
        except psycopg.Error as exc:
            # Not a lost connection: the schema may be missing or mid-upgrade, or the role lack a
            # grant. Say so plainly and keep trying; there is nothing to lose.
            delay = backoff.next()
            log.error("claim failed", extra={"error": str(exc).strip(), "sqlstate": exc.sqlstate,
                                             "retry_in_s": round(delay, 2)})
            await first_of(stopping, timeout=delay)
        return None

    async def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            # A new session is not registered as waiting, whatever the old one was: its first
            # next_due_in() registers afresh and re-arms the settling polls.
            self._registered = False
            self._conn = await connect(self._config.dsn)
            await self._read_policy(self._conn)
        return self._conn

    async def _read_policy(self, conn: Conn) -> None:
        """The circuit breaker's threshold, from the database rather than a copy of it. Asked only
        when this role may call it, so a role without the grant leaves no error in the server log."""
        try:
            cur = await conn.execute(
                "SELECT CASE WHEN has_function_privilege(to_regprocedure(%s), 'EXECUTE')"
                " THEN 1 END", (THRESHOLD_FUNCTION,))
            allowed = await cur.fetchone()
            if not allowed or allowed[0] is None:
                log.debug("circuit threshold not readable by this role; using the default",
                          extra={"threshold": self._admission.failure_threshold})
                return
            cur = await conn.execute(f"SELECT {THRESHOLD_FUNCTION}")
            row = await cur.fetchone()
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:  # an older schema: keep the default
            log.debug("circuit threshold not readable; using the default", extra={"error": str(exc).strip()})
            return
        if row and row[0] is not None:
            self._admission.set_failure_threshold(int(row[0]))

    async def _claim(self, conn: Conn, wanted: int, saturated: list[UUID]) -> list[Job]:
        cfg = self._config
        started = time.monotonic()
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {CLAIM_COLUMNS} FROM webhooks.claim(%s, %s, %s, %s::uuid[])",
                              (wanted, cfg.lease_margin_seconds, self._admission.per_claim, saturated))
            rows = await cur.fetchall()
        self._metrics.claimed(time.monotonic() - started)
        self._state.stats.claimed += len(rows)
        ids = self._webhook_ids
        if len(ids) > 10_000:  # webhooks come and go; keep it bounded
            ids.clear()
        for row in rows:
            # One UUID object per webhook: the runner's per-webhook dicts then find it by
            # identity instead of comparing equal UUIDs (a Python-level __eq__ per look-up).
            row["webhook_id"] = ids.setdefault(row["webhook_id"], row["webhook_id"])
            self._admission.claimed(row["webhook_id"], row["max_concurrency"])
        now = time.monotonic()
        # Half the margin is left for reporting the result before the lease runs out.
        return [Job(**row, start_by=now + row["timeout_seconds"] + cfg.lease_margin_seconds / 2) for row in rows]

    async def _wait_for_more(self, jobs: list[Job]) -> None:
        """After a short claim: return at once if more is likely due, else sleep until it may be."""
        signals = self._state.signals
        signals.unsaturated.clear()
        saturated = self._admission.saturated()
        if self._admission.gave_all_it_may(jobs, saturated) or self._conn is None:
            return
        fresh = not self._registered
        due_in = await self._next_due_in(self._conn, saturated)
        if fresh and self._registered:
            # A writer that skipped its NOTIFY while no runner waited may commit just after this:
            # poll briefly for a while rather than make its change wait a whole poll interval.
            self._settle_until = time.monotonic() + SETTLE_SECONDS
        if due_in == 0 and jobs:
            return
        timeout = self._config.poll_interval * random.uniform(0.8, 1.2)
        if time.monotonic() < self._settle_until:
            timeout = min(timeout, SETTLE_POLL)
        if due_in is not None:
            # A little past the due time, so the claim's now() has reached it; and never a busy
            # loop when the database says "now" but had nothing for us.
            timeout = min(timeout, max(due_in + 0.002, 0.02))
        await first_of(signals.wake, signals.stopping, signals.unsaturated, timeout=timeout)

    async def _next_due_in(self, conn: Conn, saturated: list[UUID]) -> float | None:
        try:
            cur = await conn.execute("SELECT webhooks.next_due_in(%s, %s::uuid[])",
                                     (self._config.per_webhook_concurrency, saturated))
            row = await cur.fetchone()
        except psycopg.Error as exc:  # an older schema, a lost connection: poll as before
            log.debug("next_due_in failed", extra={"error": str(exc).strip()})
            return None
        self._registered = True
        return float(row[0]) if row and row[0] is not None else None

    async def _busy(self) -> None:
        """A full claim: writers need not wake this runner until it next asks next_due_in()."""
        self._registered = False
        if self._conn is None:
            return
        try:
            await self._conn.execute("SELECT webhooks.runner_busy()")
        except psycopg.Error as exc:  # an older schema: writers keep notifying, as before
            log.debug("runner_busy failed", extra={"error": str(exc).strip()})

    async def release(self, jobs: list[Job], conn: Conn | None = None) -> None:
        """Hand leased jobs back unsent, on `conn` or a connection of its own."""
        leases = Jsonb([{"delivery_id": j.delivery_id, "attempt": j.attempt} for j in jobs])
        try:
            if conn is None:
                async with await connect(self._config.dsn) as own:
                    cur = await own.execute("SELECT webhooks.release(%s)", (leases,))
                    row = await cur.fetchone()
            else:
                cur = await conn.execute("SELECT webhooks.release(%s)", (leases,))
                row = await cur.fetchone()
            self._state.stats.released += row[0] if row else 0
            log.info("released unsent deliveries", extra={"count": len(jobs)})
        except psycopg.Error as exc:
            # Their leases will expire and they will be claimed again: late, never lost.
            log.warning("could not release unsent deliveries; their leases will expire",
                        extra={"count": len(jobs), "error": str(exc).strip()})
