"""POSTs already-signed webhook requests and reports what happened, without ever raising for network trouble.

Sends go through a keep-alive pool of our own HTTP/1.1 connections (http1.py): a webhook sender
only ever POSTs a prepared body and reads one status and a capped body, and doing that on an
asyncio protocol with llhttp costs a third of aiohttp's client CPU per request (and a fraction of
httpx's). httpx stays the project's HTTP library everywhere else. The SSRF guard runs on every
address a name resolves to, right before connecting to exactly those addresses, so DNS rebinding
cannot slip a private address past a name check.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import ipaddress
import math
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Self

import aiohappyeyeballs
from yarl import URL

from pgwebhooks.http1 import Connection, Disconnected, Exchange, ProtocolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_ALLOW_HINT = "allow it with --allow-private-networks or --allow-cidr"
_MAX_RETRY_AFTER = 2**31 - 1  # fits the database's int column whatever a receiver claims
_IDLE_SECONDS = 15.0  # an idle connection older than this is closed rather than reused (servers drop them)
_HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305's recommended head start for each address of a name


@dataclass(frozen=True, slots=True)
class SendResult:
    status_code: int | None  # None when no HTTP response was received
    response_excerpt: str | None  # first excerpt_bytes of the body, utf-8 with replacement; None without response
    error: str | None  # None on any HTTP response
    latency_ms: int
    retry_after_seconds: int | None  # only for 429 and 503
    # Nothing was sent: this runner's own network policy refused every address of the destination.
    # Not the endpoint's fault, so it must not cost the delivery an attempt (see hold_refused()).
    refused_by_policy: bool = False


@dataclass(frozen=True, slots=True)
class _Target:
    """A webhook URL, parsed once: where to connect and the start of every request's head."""

    key: tuple[str, str, int]
    host: str
    port: int
    tls: bool
    head: str  # request line, Host and (for a URL's user:password) Authorization


class _Refused(OSError):
    """The guard refused every address of the destination; nothing was connected to."""


class _Unresolved(OSError):
    def __init__(self, host: str) -> None:
        super().__init__(f"could not resolve host {host}")


def tls_context() -> ssl.SSLContext:
    """Certificates checked against the system's CAs, host names verified (tests swap this)."""
    return ssl.create_default_context()


def non_public_kind(ip: IPAddress) -> str | None:
    """What kind of non-public address `ip` is ("loopback", "private", ...), or None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return non_public_kind(ip.ipv4_mapped)
    # Specific kinds first: is_private is also true for loopback, link-local and unspecified addresses.
    kinds = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-public", not ip.is_global),  # e.g. 100.64.0.0/10 carrier-grade NAT
    )
    return next((kind for kind, matches in kinds if matches), None)


class Sender:
    """One shared keep-alive pool; use as `async with Sender(...) as sender: await sender.send(...)`."""

    def __init__(
        self,
        *,
        allow_private_networks: bool = False,
        allowed_cidrs: Sequence[str] = (),
        max_connections: int = 100,
        excerpt_bytes: int = 1024,
        max_body_bytes: int = 64 * 1024,
    ) -> None:
        self._allow_private = allow_private_networks
        self._allowed: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in allowed_cidrs)
        self._max_connections = max_connections
        self._excerpt_bytes = excerpt_bytes
        self._max_body_bytes = max(max_body_bytes, excerpt_bytes)
        self._slots: asyncio.Semaphore | None = None  # connections in use, at most max_connections
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._idle_count = 0
        self._in_use = 0
        self._tls: ssl.SSLContext | None = None
        self._targets: dict[str, _Target] = {}  # parsed once per webhook URL, not once per request

    async def __aenter__(self) -> Self:
        self._slots = asyncio.Semaphore(self._max_connections)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._slots = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        self._idle_count = 0

    async def send(self, url: str, body: str | bytes, headers: Mapping[str, str], timeout: float) -> SendResult:
        if self._slots is None:
            raise RuntimeError("Sender used outside 'async with'")
        content = body.encode() if isinstance(body, str) else body
        started = time.perf_counter()
        refused: list[str] = []
        try:
            target = self._target(url)
            request = _request(target, headers, content)
        except ValueError as exc:
            return SendResult(None, None, str(exc) or "invalid request", _elapsed_ms(started), None)
        # One deadline for connecting, sending and reading (one timer per send, not several). A
        # timeout or a broken body after the status line only shortens the excerpt: the status
        # is what delivery is judged on.
        deadline = asyncio.get_running_loop().time() + timeout
        exchange: Exchange | None = None
        conn: Connection | None = None
        slots = self._slots
        holding = False
        try:
            async with asyncio.timeout_at(deadline):
                await slots.acquire()  # waiting for a free connection counts against the deadline too
                holding = True
                self._in_use += 1
                conn = await self._connection(target, refused)
                exchange = conn.send(request)
                await exchange.done
        except TimeoutError:
            if exchange is None or exchange.status is None:
                return SendResult(None, None, f"timeout after {timeout:g}s", _elapsed_ms(started), None)
        except (OSError, ssl.SSLError, ProtocolError, ValueError) as exc:
            if refused:
                return SendResult(None, None, f"destination {', '.join(refused)}; {_ALLOW_HINT}",
                                  _elapsed_ms(started), None, refused_by_policy=True)
            return SendResult(None, None, _describe(exc), _elapsed_ms(started), None)
        finally:
            if holding:
                self._in_use -= 1
                if conn is not None:
                    self._put_back(target, conn)
                slots.release()
        if exchange is None or exchange.status is None:  # ended without a status line we could read
            return SendResult(None, None, "invalid HTTP response", _elapsed_ms(started), None)
        retry_after = None
        if exchange.status in (429, 503):
            retry_after = parse_retry_after(exchange.retry_after)
        excerpt = exchange.body[: self._excerpt_bytes].decode("utf-8", errors="replace")
        return SendResult(exchange.status, excerpt, None, _elapsed_ms(started), retry_after)

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) >= 10_000:  # webhooks come and go; keep the cache bounded
                self._targets.clear()
            target = self._targets[url] = _parse_target(url)
        return target

    async def _connection(self, target: _Target, refused: list[str]) -> Connection:
        """A clean idle connection to the target, or a new one (closing the oldest idle one of any
        destination when the pool is full)."""
        idle = self._idle.get(target.key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if not conn.closed and now - conn.idle_since < _IDLE_SECONDS and not conn.unread_input():
                return conn
            conn.close()
        while self._idle_count + self._in_use > self._max_connections and self._evict_one():
            pass
        return await self._connect(target, refused)

    def _evict_one(self) -> bool:
        """Close the oldest idle connection of the first destination holding one."""
        for key, idle in self._idle.items():
            if idle:
                idle.pop(0).close()
                self._idle_count -= 1
                if not idle:
                    del self._idle[key]
                return True
        return False

    def _put_back(self, target: _Target, conn: Connection) -> None:
        conn.finish()
        if conn.reusable and self._slots is not None:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(target.key, []).append(conn)
            self._idle_count += 1
        else:
            conn.close()  # not clean, or the sender is closing

    async def _connect(self, target: _Target, refused: list[str]) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise _Unresolved(target.host) from exc
        allowed = []
        for info in infos:
            reason = self._refusal(info[4][0])
            if reason is None:
                allowed.append(info)
            else:
                refused.append(reason)
        if not allowed:
            raise _Refused(f"destination {', '.join(refused)}; {_ALLOW_HINT}")
        sock = await aiohappyeyeballs.start_connection(allowed, happy_eyeballs_delay=_HAPPY_EYEBALLS_DELAY)
        if target.tls and self._tls is None:
            self._tls = tls_context()
        try:
            _, conn = await loop.create_connection(
                lambda: Connection(self._max_body_bytes), sock=sock,
                ssl=self._tls if target.tls else None, server_hostname=target.host if target.tls else None)
        except BaseException:
            sock.close()
            raise
        return conn

    def _refusal(self, address: str) -> str | None:
        """Why the guard refuses this address, or None."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a link-local address may carry a zone
        kind = None if self._allowed_destination(ip) else non_public_kind(ip)
        if kind is None:
            return None
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        shown = f"::ffff:{mapped}" if mapped else address  # the dotted form people wrote in the URL
        return f"{shown} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} address"

    def _allowed_destination(self, ip: IPAddress) -> bool:
        if self._allow_private:
            return True
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        # `in` across IP versions compares raw integers, so the version check is not optional.
        return any(c.version == net.version and c in net for c in candidates for net in self._allowed)


def _parse_target(url: str) -> _Target:
    # yarl, like a browser, silently drops tabs and line breaks and encodes the rest, so such a URL
    # would be sent somewhere else than what it says; the database refuses these URLs, and so do we.
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise ValueError("the URL holds a space or a control character; not sent")
    parsed = URL(url)  # ValueError for what is no URL
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise ValueError(f"not an http(s) URL: {parsed.scheme or 'no scheme'}")
    host = parsed.raw_host
    port = parsed.port
    assert port is not None  # http and https have default ports
    authority = f"[{host}]" if ":" in host else host
    if not parsed.is_default_port():
        authority += f":{port}"
    head = f"POST {parsed.raw_path_qs or '/'} HTTP/1.1\r\nHost: {authority}\r\n"
    if parsed.raw_user is not None:  # user:password in the URL is sent as Basic credentials
        credentials = f"{parsed.user or ''}:{parsed.password or ''}".encode("latin-1")
        head += f"Authorization: Basic {base64.b64encode(credentials).decode('ascii')}\r\n"
    _check_head(head, 2 + (parsed.raw_user is not None))
    return _Target((parsed.scheme, host, port), host, port, parsed.scheme == "https", head)


# How a request is framed is the sender's alone: a second Host, Content-Length or Transfer-Encoding
# from a webhook's headers would let one receiver's proxy read a different request than ours. The
# database refuses these names too (WH010); this holds for rows put there by any other way.
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def _request(target: _Target, headers: Mapping[str, str], content: bytes) -> bytes:
    if any(name.lower() in _FRAMING for name in headers):
        raise ValueError("a header sets how the request is framed (Host, Content-Length, Transfer-Encoding,"
                         " Connection); not sent")
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    _check_head(lines, len(headers))
    return f"{target.head}{lines}Content-Length: {len(content)}\r\n\r\n".encode() + content


def _check_head(lines: str, count: int) -> None:
    """Exactly `count` lines and no NUL: a line break inside a name or value would add a header
    (or a request) of the sender's choosing."""
    if lines.count("\n") != count or lines.count("\r") != count or "\0" in lines:
        raise ValueError("a header name or value holds a line break or NUL; not sent")


def parse_retry_after(value: str | None) -> int | None:
    """Retry-After as whole seconds from now (delta-seconds or HTTP-date), clamped at 0; None if unparsable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(int(value[:10]), _MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = math.ceil((when - datetime.now(UTC)).total_seconds())
    return min(max(seconds, 0), _MAX_RETRY_AFTER)


def _describe(exc: BaseException) -> str:
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for err in chain:
        # aiohappyeyeballs folds the refusals of a name's several addresses into one OSError that
        # keeps their common errno.
        if isinstance(err, ConnectionRefusedError) or (isinstance(err, OSError) and err.errno == errno.ECONNREFUSED):
            return "connection refused"
        if isinstance(err, ssl.SSLError):
            return f"TLS error: {err}"
        if isinstance(err, Disconnected):
            return "server disconnected without a response"
        if isinstance(err, ConnectionResetError):
            return "connection reset by peer"
    return str(exc) or type(exc).__name__


def _elapsed_ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
