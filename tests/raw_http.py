"""A raw HTTP/1.1 server on loopback for the sender tests: raw asyncio sockets rather than a
framework, so tests see the request bytes exactly as sent and can count accepted connections."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Received:
    head: bytes
    body: bytes

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        lines = self.head.split(b"\r\n")[1:]
        return [(name.lower(), value.lstrip()) for name, _, value in (line.partition(b":") for line in lines if line)]


Respond = Callable[[Received, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    """HTTP/1.1 with keep-alive that records raw requests and counts accepted connections."""

    respond: Respond
    host: str = "127.0.0.1"
    connections: int = 0
    requests: list[Received] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._on_connection, self.host, 0)
        return self

    def url(self, path: str = "/", host: str | None = None) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        host = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{host}:{port}{path}"

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            for _ in range(1000):  # requests per connection
                head = await reader.readuntil(b"\r\n\r\n")
                request = Received(head, b"")
                length = next((int(v) for k, v in request.headers if k == b"content-length"), 0)
                request.body = await reader.readexactly(length)
                self.requests.append(request)
                await self.respond(request, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


def reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None, delay: float = 0) -> Respond:
    async def respond(_: Received, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()

    return respond


OK = reply(200, b"ok")
