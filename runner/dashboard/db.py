"""Database access for the dashboard: a few pooled connections, each request in one transaction
acting as the role its token maps to (SET LOCAL ROLE), so PostgreSQL decides what it may do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

# The roles a token may act as (webhooks.authenticate_api_token); anything else is refused.
ROLES = {"admin": "webhooks_admin", "read": "webhooks_viewer"}


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: `role` None means the dashboard's own connection role (no tokens)."""

    access: str  # "admin" or "read"
    role: str | None

    @property
    def can_write(self) -> bool:
        return self.access == "admin"


class Database:
    def __init__(self, dsn: str, size: int = 4) -> None:
        self.dsn = dsn
        self.size = size
        self._idle: asyncio.Queue[psycopg.AsyncConnection[dict[str, Any]]] = asyncio.Queue()
        self._slots = asyncio.Semaphore(size)

    async def _take(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if not conn.closed and not conn.broken:
                return conn
        return await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, row_factory=dict_row, connect_timeout=10,
            application_name="pgwebhooks-dashboard")

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        async with self._slots:
            conn = await self._take()
            try:
                yield conn
            finally:
                if conn.closed or conn.broken or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    with contextlib.suppress(Exception):
                        await conn.close()
                else:
                    self._idle.put_nowait(conn)

    @contextlib.asynccontextmanager
    async def acting_as(self, principal: Principal) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        """A transaction with the rights of `principal`; its role is reset when it ends."""
        async with self.connection() as conn, conn.transaction():
            if principal.role is not None:
                await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(principal.role)))
            yield conn

    async def authenticate(self, token: str) -> Principal | None:
        async with self.connection() as conn:
            cur = await conn.execute("SELECT webhooks.authenticate_api_token(%s) AS role", (token,))
            row = await cur.fetchone()
        role = row["role"] if row else None
        for access, name in ROLES.items():
            if role == name:
                return Principal(access, name)
        return None

    async def tokens_configured(self) -> bool:
        async with self.connection() as conn:
            cur = await conn.execute("SELECT webhooks.api_tokens_configured() AS yes")
            row = await cur.fetchone()
        return bool(row and row["yes"])

    async def close(self) -> None:
        while not self._idle.empty():
            with contextlib.suppress(Exception):
                await self._idle.get_nowait().close()
