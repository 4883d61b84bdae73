"""A loopback HTTP receiver that misbehaves on purpose, written on raw sockets so it can break HTTP.

Each request is counted by the changed row it carries (`record.id`). The hostile answer is given
for the first `storm_seconds` after start (then a plain 200: the endpoint recovers), or always when
`storm_seconds` is None. A storm by time, not by attempts per event, is what a real outage looks
like, and what a circuit breaker must ride out. An event counts as received once a complete 2xx
status line and headers have been written for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections import Counter

MODES = ("ok", "500", "hang", "reset", "truncated", "huge", "nul", "bad-utf8", "drip-body", "drip-head")
HUGE_BYTES = 32 * 1024 * 1024
# NUL, and bytes that are no UTF-8 at all: a lone continuation, an overlong form, a UTF-16 surrogate.
BODIES = {"ok": b"ok", "nul": b'{"note": "a\x00b"}\x00', "bad-utf8": b"\xff\xfe\xc3\x28 \xed\xa0\x80 \xc0\xaf bad"}


class HostileReceiver:
    def __init__(
        self, mode: str = "ok", storm_seconds: float | None = None, hang_seconds: float = 3.0, delay: float = 0.0,
    ) -> None:
        assert mode in MODES, mode
        self.mode = mode
        self.storm_seconds = storm_seconds
        self._storm_until = 0.0
        self.delay = delay  # before every answer: a slow endpoint keeps a backlog in the outbox
        self.hang_seconds = hang_seconds
        self.requests: Counter[int] = Counter()  # record id -> requests that arrived
        self.accepted: Counter[int] = Counter()  # record id -> complete 2xx answers sent
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> HostileReceiver:
        self._storm_until = time.monotonic() + (self.storm_seconds or 0.0)
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            for _ in range(100_000):  # keep-alive: one connection may carry many requests
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length)
                try:
                    payload = json.loads(body)  # a row change's record, or a published event's data
                    record_id = int((payload.get("record") or payload["data"])["id"])
                except (ValueError, KeyError, TypeError):
                    record_id = -1
                self.requests[record_id] += 1
                hostile = self.storm_seconds is None or time.monotonic() < self._storm_until
                if not await self._answer(self.mode if hostile else "ok", record_id, writer):
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    def _accept(self, record_id: int) -> None:
        self.accepted[record_id] += 1

    async def _answer(self, mode: str, record_id: int, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False closes the connection."""
        if self.delay:
            await asyncio.sleep(self.delay)
        if mode in ("ok", "nul", "bad-utf8"):
            body = BODIES[mode]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            self._accept(record_id)
            return True
        if mode == "500":
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nstorm")
            await writer.drain()
            return True
        if mode == "hang":
            await asyncio.sleep(self.hang_seconds)  # past the webhook's timeout
            return False
        if mode == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            return False
        if mode == "truncated":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b")
            await writer.drain()
            self._accept(record_id)
            return False
        if mode == "huge":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % HUGE_BYTES)
            await writer.drain()
            self._accept(record_id)
            chunk = b"x" * (1024 * 1024)
            for _ in range(HUGE_BYTES // len(chunk)):  # the runner stops reading after its cap
                if writer.transport.is_closing():
                    break
                writer.write(chunk)
                await writer.drain()
            return False
        if mode == "drip-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n")
            await writer.drain()
            self._accept(record_id)
            for _ in range(40):
                if writer.transport.is_closing():  # the runner hung up at its timeout
                    break
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.1)
            return False
        if mode == "drip-head":
            response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            for i in range(len(response)):
                if writer.transport.is_closing():
                    break
                writer.write(response[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0.1)  # 4 s for the whole status line and headers: past the timeout
            return False  # not counted as received: the runner must have given up on it by now
        raise AssertionError(mode)
