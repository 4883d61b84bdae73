"""The maintainer: calls `webhooks.maintain()` on a timer, so the outbox stays bounded by default.

It holds a connection of its own, off the claim and report paths: a slow or failing maintain()
delays no delivery, and its errors are logged, never raised into the runner. maintain() works
under a time budget per call and says whether more remains; the maintainer calls it again, a
bounded number of times with a pause between calls, so a large backlog of finished rows goes
in short transactions instead of one long one. Several runners may all do this: maintain()
lets one in at a time and the others return at once ("busy").
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import psycopg

from pgwebhooks.connection import close, connect, first_of
from pgwebhooks.state import RunnerState

if TYPE_CHECKING:
    from pgwebhooks.worker import RunnerConfig

log = logging.getLogger("pgwebhooks.runner")

# Calls per tick while maintain() says more remains, and the pause between them (room for
# autovacuum and for everyone else's transactions). 60 calls of 0.5 s remove several million
# rows a minute; what is left waits for the next tick.
CALLS_PER_TICK = 60
PAUSE_BETWEEN_CALLS = 0.2


class Maintainer:
    def __init__(self, config: RunnerConfig, state: RunnerState) -> None:
        self._config = config
        self._state = state
        self.removed_deliveries = 0
        self.removed_captures = 0
        self.runs = 0
        self.failures = 0

    async def run(self) -> None:
        """Call maintain() every `maintain_interval` seconds until the runner stops."""
        interval = self._config.maintain_interval
        if interval <= 0:
            return
        stopping = self._state.signals.stopping
        while not stopping.is_set():
            await self.tick()
            await first_of(stopping, timeout=interval)

    async def tick(self) -> None:
        """One round of maintain() calls; a failure is logged and waits for the next round."""
        conn = None
        try:
            conn = await connect(self._config.dsn)
            for _ in range(CALLS_PER_TICK):
                cur = await conn.execute(
                    "SELECT deliveries, attempts, captures, more, busy FROM webhooks.maintain()")
                row = await cur.fetchone()
                if row is None:
                    break
                deliveries, attempts, captures, more, busy = row
                self.removed_deliveries += deliveries
                self.removed_captures += captures
                if deliveries or captures:
                    log.info("maintain removed finished work", extra={
                        "deliveries": deliveries, "attempts": attempts, "captures": captures, "more": more})
                if busy or not more or self._state.signals.stopping.is_set():
                    break
                await asyncio.sleep(PAUSE_BETWEEN_CALLS)
            self.runs += 1
        except (psycopg.Error, OSError) as exc:
            self.failures += 1
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("maintain failed; delivery goes on, trying again at the next interval",
                        extra={"error": reason})
        finally:
            await close(conn)
