"""Starting the dashboard in-process on 127.0.0.1 for the API and browser tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import psycopg
from aiohttp import web

from pgwebhooks.dashboard.app import Settings, create_app
from pgwebhooks.localpg import free_port


@asynccontextmanager
async def dashboard(dsn: str, require_tokens: bool = False) -> AsyncIterator[str]:
    port = free_port()
    settings = Settings(host="127.0.0.1", port=port, require_tokens=require_tokens, csrf_key=b"k" * 32)
    runner = web.AppRunner(create_app(dsn, settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def make_token(dsn: str, access: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT token FROM webhooks.create_api_token(%s, %s)", (f"t-{access}", access)).fetchone()
    assert row is not None
    return str(row[0])


def grant_tables(dsn: str, *tables: str) -> None:
    """Tokens act as webhooks_admin / webhooks_viewer, which may watch (and show) only what they may read."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in tables:
            conn.execute(f"GRANT SELECT ON {table} TO webhooks_admin, webhooks_viewer")


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str | None = None,
               json: Any = None, **kwargs: Any) -> tuple[int, Any]:
    headers = dict(kwargs.pop("headers", {}))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.request(method, url, json=json, headers=headers, allow_redirects=False, **kwargs) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()
