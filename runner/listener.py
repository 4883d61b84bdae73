"""The listener: turns NOTIFY on the `webhooks` channel into a wake-up of the claimer.

A wake-up is only a hint: the claimer also polls, so a notification lost while reconnecting
delays work by at most a poll interval, and every (re)connection wakes the claimer once for
whatever was committed while nobody listened.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import psycopg

from pgwebhooks.connection import Backoff, close, connect, lost_connection
from pgwebhooks.state import RunnerState

if TYPE_CHECKING:
    from pgwebhooks.worker import RunnerConfig

NOTIFY_CHANNEL = "webhooks"


class Listener:
    def __init__(self, config: RunnerConfig, state: RunnerState) -> None:
        self._config = config
        self._state = state

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        backoff = Backoff(self._config.reconnect_min, self._config.reconnect_max)
        wake = self._state.signals.wake
        while True:
            conn = None
            try:
                conn = await connect(self._config.dsn)
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                backoff.reset()
                wake.set()  # anything committed while we were not listening
                async for _ in conn.notifies():
                    wake.set()
            except psycopg.OperationalError as exc:
                await close(conn)
                conn = None
                await asyncio.sleep(lost_connection("listen", exc, backoff, self._state.stats))
            finally:
                await close(conn)
