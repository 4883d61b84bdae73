"""A scriptable HTTP receiver on 127.0.0.1 for the runner's tests.

Each request gets the next scripted response for its path (the last one repeats), and is kept
with its exact body and headers so tests can check what arrived and verify signatures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: str = "ok"
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    path: str
    headers: CIMultiDict[str]  # header names are case-insensitive on the wire
    body: bytes
    at: float

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


class ScriptedReceiver:
    def __init__(self, script: list[Reply] | None = None) -> None:
        self.script = script or [Reply()]
        self.requests: list[Received] = []
        self._served = 0
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.max_concurrent: dict[str, int] = {}  # per path: the most requests open at once
        self._open: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        reply = self.script[min(self._served, len(self.script) - 1)]
        self._served += 1
        self.requests.append(Received(request.path, CIMultiDict(request.headers), body, time.monotonic()))
        async with self._arrived:
            self._arrived.notify_all()
        self._open[request.path] = self._open.get(request.path, 0) + 1
        self.max_concurrent[request.path] = max(self.max_concurrent.get(request.path, 0), self._open[request.path])
        try:
            if reply.delay:
                await asyncio.sleep(reply.delay)
        finally:
            self._open[request.path] -= 1
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    async def start(self) -> ScriptedReceiver:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, timeout: float) -> list[Received]:
        """The requests so far, once there are at least `count` (or the timeout passed)."""
        async with self._arrived:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.requests) >= count), timeout)
        return list(self.requests)

    def event_ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.requests]
