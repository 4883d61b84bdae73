"""The runner's HTTP/1.1 client connection: one POST at a time on a keep-alive connection.

The runner sends the same thing again and again (a POST of a prepared body, read one status and at
most a capped body), so it speaks HTTP/1.1 itself on an asyncio protocol and leaves parsing to
llhttp (httptools, the parser uvicorn uses). Per request this costs a third of aiohttp's client
CPU, which on a busy runner was half of all its work. Everything a receiver sends is bounded: the
header block by size, the body by `max_body` (the rest is never read: the connection is closed),
the time by the caller's one deadline. A connection is reused only after a complete response that
allows it, and is dropped if anything arrives while it is idle (looked for again in the socket
when the pool hands it out, as the loop may not have delivered those bytes yet), so no stale or
unsolicited bytes that arrived before a request was written can be read as its answer.
"""

from __future__ import annotations

import asyncio
import select

import httptools

MAX_HEADER_BYTES = 64 * 1024


class ProtocolError(Exception):
    """The receiver's answer is not HTTP/1.1 we can read (or exceeds our limits)."""


class Disconnected(ConnectionError):
    """The connection ended before a status line arrived."""


class Exchange:
    """One request's answer as it arrives. `done` resolves once the status is known and the body
    is complete, capped, or ended by the connection closing; it fails if no status came."""

    __slots__ = ("body", "done", "retry_after", "status")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.status: int | None = None
        self.retry_after: str | None = None
        self.body = bytearray()
        self.done = done


class Connection(asyncio.Protocol):
    """A client connection; `send()` one request at a time, then `reusable` says whether it may
    carry the next one."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._exchange: Exchange | None = None
        self._header_bytes = 0  # raw bytes read before the headers ended
        self._field_bytes = 0  # names and values parsed
        self._tail_bytes = 0  # raw bytes read after the headers: body, chunk framing, trailers
        self._headers_done = False
        self.reusable = False
        self.closed = False
        self.idle_since = 0.0
        self._idle_poll: select.poll | None = None

    # -- used by the pool ---------------------------------------------------------------------------

    def send(self, request: bytes) -> Exchange:
        assert self._transport is not None and self._exchange is None
        self.reusable = False
        self._header_bytes = self._field_bytes = self._tail_bytes = 0
        self._headers_done = False
        self._exchange = Exchange(asyncio.get_running_loop().create_future())
        self._transport.write(request)
        return self._exchange

    def unread_input(self) -> bool:
        """Whether bytes (or the receiver's close) wait in the socket that the event loop has not
        delivered yet. data_received drops a connection that gets bytes while idle, but only once the
        loop runs it: a busy loop can hand out an idle connection whose stray answer is already here,
        and that answer would be read as the next request's."""
        return self._idle_poll is not None and not self.closed and bool(self._idle_poll.poll(0))

    def finish(self) -> None:
        """The caller is done with the current exchange (answered, failed or timed out): a
        connection that is not known to be clean is closed."""
        if self._exchange is not None:  # still reading: a timeout or an error cut it short
            self._exchange = None
            self.reusable = False
        if not self.reusable:
            self.close()

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None and not self.closed:
            self.closed = True
            # abort, not close: close() first sends what is still queued, and a receiver that never
            # reads would keep the socket, and the queued request, open without any deadline.
            self._transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # poll, not select: select fails on descriptors above 1023
            self._idle_poll = select.poll()
            self._idle_poll.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)

    def data_received(self, data: bytes) -> None:
        if self._exchange is None:  # bytes nobody asked for: never let them answer a later request
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._end(reusable=False)  # 101 or an upgrade: what follows is not HTTP/1.1
        except httptools.HttpParserCallbackError as exc:  # one of ours below said stop
            cause = exc.__context__
            self._fail(cause if isinstance(cause, ProtocolError) else ProtocolError(f"invalid HTTP response ({exc})"))
            return
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"invalid HTTP response ({exc})"))
            return
        if self._exchange is not None and not self._headers_done:
            self._header_bytes += len(data)  # a header block that never ends is cut here
            if self._header_bytes > MAX_HEADER_BYTES:
                self._fail(ProtocolError(f"response headers larger than {MAX_HEADER_BYTES // 1024} KiB"))
        elif self._exchange is not None:
            # max_body caps only body bytes: a trailer that never ends (httptools holds it in memory,
            # joined anew on every read) or chunk framing without data are cut here like a long body.
            self._tail_bytes += len(data)
            if self._tail_bytes > self._max_body + MAX_HEADER_BYTES:
                self._end(reusable=False)

    def eof_received(self) -> bool:
        return False  # close the transport: we never write after the receiver stopped

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        exchange = self._exchange
        if exchange is None:
            return
        if exchange.status is not None:
            self._end(reusable=False)  # a body read to the close, or cut short: the status stands
        else:
            self._fail(Disconnected("server disconnected without a response") if exc is None else exc)

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._exchange is None:  # a second answer in the bytes of the first: nobody asked for it
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted here too: a whole header block can arrive, and be parsed, in one read.
        self._field_bytes += len(name) + len(value)
        if self._field_bytes > MAX_HEADER_BYTES:
            raise ProtocolError(f"response headers larger than {MAX_HEADER_BYTES // 1024} KiB")
        if self._exchange is not None and name.lower() == b"retry-after":
            self._exchange.retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._header_bytes = self._field_bytes = 0
            if self._exchange is not None:
                self._exchange.retry_after = None
            return
        self._headers_done = True
        if self._exchange is not None:
            self._exchange.status = status

    def on_body(self, body: bytes) -> None:
        exchange = self._exchange
        if exchange is None or exchange.status is None:
            return
        room = self._max_body - len(exchange.body)
        exchange.body += body[:room]
        if len(body) > room:  # more than we read: the rest is never drained, the connection goes
            self._end(reusable=False)

    def on_message_complete(self) -> None:
        if self._exchange is None or not self._headers_done:
            return  # the end of an interim answer
        self._end(reusable=self._parser.should_keep_alive())

    # -- ending an exchange -------------------------------------------------------------------------

    def _end(self, reusable: bool) -> None:
        exchange, self._exchange = self._exchange, None
        self.reusable = reusable and not self.closed
        if not self.reusable:
            self.close()
        if exchange is not None and not exchange.done.done():
            exchange.done.set_result(None)

    def _fail(self, error: BaseException) -> None:
        exchange, self._exchange = self._exchange, None
        self.close()
        if exchange is not None and not exchange.done.done():
            if exchange.status is not None:
                exchange.done.set_result(None)  # a broken body after the status: the status stands
            else:
                exchange.done.set_exception(error)
