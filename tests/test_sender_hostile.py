"""The sender against hostile or broken receivers, and a hostile webhook admin choosing URL and headers.

Each test names the property it proves. The receivers are raw asyncio sockets on 127.0.0.1 that
write exactly the bytes a test gives them; every loop and every server is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from raw_http import Received

import pgwebhooks.sender
from pgwebhooks.sender import Sender

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


@pytest.fixture
async def peer() -> AsyncIterator[Callable[..., Awaitable[Peer]]]:
    peers: list[Peer] = []

    async def start(script: Script, live: list[asyncio.StreamWriter] | None = None,
                    tls: ssl.SSLContext | None = None) -> Peer:
        p = Peer(script, live)
        p.server = await asyncio.start_server(p._on_connection, "127.0.0.1", 0, ssl=tls)
        peers.append(p)
        return p

    yield start
    for p in peers:
        assert p.server is not None
        p.server.close()
        for task in list(p.tasks):
            task.cancel()
        await asyncio.gather(*p.tasks, return_exceptions=True)


def answers(*replies: bytes, then: bytes | None = None) -> Script:
    """Answers the n-th request of the whole server with replies[n] (or `then`, or `ok(b"answer-n")`),
    keeping the connection open for more."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: Peer) -> None:
        for _ in range(100):
            if await p.read_request(reader) is None:
                return
            n = len(p.requests)
            reply = replies[n - 1] if n <= len(replies) else then or ok(b"answer-%d" % n)
            writer.write(reply)
            await writer.drain()

    return script


async def send(sender: Sender, p: Peer, timeout: float = 5) -> tuple[int | None, str | None, str | None]:
    result = await sender.send(p.url(), b"{}", {}, timeout)
    return result.status_code, result.response_excerpt, result.error


# 1. Unsolicited bytes -----------------------------------------------------------------------------------------


async def test_unsolicited_response_in_the_same_write_is_never_read_as_the_next_answer(peer, open_sender) -> None:
    p = await peer(answers(ok(b"answer-1") + ok(b"stale")))
    assert await send(open_sender, p) == (200, "answer-1", None)
    assert await send(open_sender, p) == (200, "answer-2", None)
    assert p.connections == 2  # the connection that carried the stray answer was dropped


@pytest.mark.parametrize("noticed", [True, False], ids=["seen-by-the-loop", "still-in-the-socket"])
async def test_unsolicited_response_while_idle_is_never_read_as_the_next_answer(peer, open_sender, noticed) -> None:
    # The stray answer arrives after the first exchange ended. Either the event loop has already
    # delivered it (the idle connection saw bytes and was dropped), or it still sits unread in the
    # socket when the next send picks a connection: a busy runner loop is exactly that case, and
    # the next request must not be written to that connection.
    p = await peer(answers())
    assert await send(open_sender, p) == (200, "answer-1", None)
    p.writers[0].write(ok(b"stale"))  # loopback: in the client's socket buffer when write() returns
    if noticed:
        assert await p.wait_closed_by_client()
    assert await send(open_sender, p) == (200, "answer-2", None)
    assert p.connections == 2
