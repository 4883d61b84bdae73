"""Connections for the runner's loops: connecting, reconnect backoff, and waiting on events.

Each loop holds a connection of its own. Any of them may lose it (a database restart, a killed
backend); it reconnects with backoff and nothing is lost, because every lease the runner cannot
report on simply expires and the work is claimed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

import psycopg

from pgwebhooks.state import RunnerStats

log = logging.getLogger("pgwebhooks.runner")

Conn = psycopg.AsyncConnection[Any]


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


async def first_of(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Return when any event is set or the timeout passes."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def connect(dsn: str) -> Conn:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=10)
    # claim(), complete() and maintain() check again, in a statement of their own, what other
    # sessions committed meanwhile: that needs READ COMMITTED, whatever the database's default
    # (maintain() refuses anything else, WH057).
    await conn.execute("SET default_transaction_isolation = 'read committed'")
    return conn


async def close(conn: Conn | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()


def lost_connection(role: str, exc: Exception, backoff: Backoff, stats: RunnerStats) -> float:
    """Log a lost connection; returns how long to wait before reconnecting."""
    delay = backoff.next()
    stats.reconnects += 1
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    log.warning("database connection lost, reconnecting",
                extra={"connection": role, "error": reason, "retry_in_s": round(delay, 2)})
    return delay
