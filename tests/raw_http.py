"""A raw HTTP/1.1 server on loopback for the sender tests: raw asyncio sockets rather than a
framework, so tests see the request bytes exactly as sent and can count accepted connections."""

from __future__ import annotations

import asyncio
import select
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pgwebhooks.sender import Sender


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
        await shut_down(self._server, self._tasks)


async def shut_down(server: asyncio.Server, tasks: set[asyncio.Task[Any]]) -> None:
    """Stop accepting, end every connection's task, and wait until the server is closed."""
    server.close()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await server.wait_closed()


def reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None, delay: float = 0) -> Respond:
    async def respond(_: Received, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()

    return respond


OK = reply(200, b"ok")


# --- servers that write exactly what a test scripts, per connection (tests/test_sender_hostile.py) ---

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Peer"], Awaitable[None]]
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"


def ok(body: bytes) -> bytes:
    return OK_HEAD % len(body) + body


class Peer:
    """A loopback server that runs `script` once per accepted connection and counts connections:
    accepted in all, and at most open at once (one whose client has hung up is not open)."""

    def __init__(self, script: Script, live: list[asyncio.StreamWriter] | None = None) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[Received] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.live = [] if live is None else live  # shared between peers to count across ports
        self.peak = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, tls: ssl.SSLContext | None = None) -> Peer:
        self.server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0, ssl=tls)
        return self

    async def close(self) -> None:
        assert self.server is not None
        await shut_down(self.server, self.tasks)

    def url(self, path: str = "/", scheme: str = "http", userinfo: str = "") -> str:
        assert self.server is not None
        return f"{scheme}://{userinfo}127.0.0.1:{self.server.sockets[0].getsockname()[1]}{path}"

    async def read_request(self, reader: asyncio.StreamReader) -> Received | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request = Received(head, b"")
            length = next((int(v) for k, v in request.headers if k == b"content-length"), 0)
            request.body = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        self.requests.append(request)
        return request

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)  # type: ignore[arg-type]
        self.connections += 1
        self.writers.append(writer)
        self.live.append(writer)
        self.peak = max(self.peak, sum(not hung_up(w) for w in self.live))
        try:
            await self.script(reader, writer, self)
        except ConnectionError:
            pass
        finally:
            self.live.remove(writer)
            self.tasks.discard(task)  # type: ignore[arg-type]
            writer.close()

    async def wait_closed_by_client(self) -> bool:
        """True once every connection's handler has ended (bounded: 2 s)."""
        for _ in range(200):
            if not self.tasks:
                return True
            await asyncio.sleep(0.01)
        return False


def hung_up(writer: asyncio.StreamWriter) -> bool:
    """Whether the client's end has closed (its FIN or RST has arrived), without reading anything."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


def answers(*replies: bytes) -> Script:
    """Answers the n-th request of the whole server with replies[n] (after those, `ok(b"answer-n")`),
    keeping the connection open for more."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: Peer) -> None:
        for _ in range(100):
            if await p.read_request(reader) is None:
                return
            n = len(p.requests)
            reply = replies[n - 1] if n <= len(replies) else ok(b"answer-%d" % n)
            writer.write(reply)
            await writer.drain()

    return script


async def send(sender: Sender, to: Peer | str, timeout: float = 5) -> tuple[int | None, str | None, str | None]:
    """POSTs {} to a Peer or a URL: (status, excerpt, error)."""
    result = await sender.send(to if isinstance(to, str) else to.url(), b"{}", {}, timeout)
    return result.status_code, result.response_excerpt, result.error
