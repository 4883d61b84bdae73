"""POSTs already-signed webhook requests and reports what happened, without ever raising for network trouble.

Sends go through one aiohttp ClientSession of our own, called directly: httpx's request and
response models on top of it (the httpx-aiohttp transport) cost a fifth of the runner's CPU per
delivery for nothing a webhook sender uses, and httpx's own pool (httpcore) is several times slower
on one core. httpx stays the project's HTTP library everywhere else. We control the connector: the
SSRF guard lives in its `socket_factory`, which aiohttp calls with the exact address it is about to
connect to (for IP literals and resolved names alike), so DNS rebinding cannot slip a private address
past a name check.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import math
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Self

import aiohttp
from aiohappyeyeballs import AddrInfoType
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_ALLOW_HINT = "allow it with --allow-private-networks or --allow-cidr"
_MAX_RETRY_AFTER = 2**31 - 1  # fits the database's int column whatever a receiver claims
# aiohttp's own timeouts off: one deadline (asyncio.timeout_at) covers connect, send and reading.
_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None)

# Refusals of the send() in progress. aiohappyeyeballs folds the errors of a multi-address host into one
# "Multiple exceptions" OSError, so the exception chain alone cannot tell us which addresses we refused.
_refusals: contextvars.ContextVar[list[str]] = contextvars.ContextVar("pgwebhooks_refusals")


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


class _RefusedDestination(OSError):
    """An OSError so aiohappyeyeballs treats it like a failed connect and moves on to the host's next address."""


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
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}  # parsed once per webhook URL, not once per request

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, socket_factory=self._guarded_socket
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Send the caller's headers and nothing of aiohttp's own: no octet-stream Content-Type, no
            # Accept-Encoding (so excerpts arrive readable and no decompression bomb can be requested).
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # one receiver must not plant cookies sent to another
            trust_env=False,  # no proxies or .netrc credentials from the environment
            timeout=_NO_TIMEOUT,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()  # closes its connector too
            self._session = None

    async def send(self, url: str, body: str | bytes, headers: Mapping[str, str], timeout: float) -> SendResult:
        if self._session is None:
            raise RuntimeError("Sender used outside 'async with'")
        refused: list[str] = []
        token = _refusals.set(refused)  # connects happen in this task (or tasks copying its context)
        try:
            return await self._send(self._session, url, body, headers, timeout, refused)
        finally:
            _refusals.reset(token)

    async def _send(
        self,
        session: aiohttp.ClientSession,
        url: str,
        body: str | bytes,
        headers: Mapping[str, str],
        timeout: float,
        refused: list[str],
    ) -> SendResult:
        content = body.encode() if isinstance(body, str) else body
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + timeout

        def failure(error: str) -> SendResult:
            return SendResult(None, None, error, _elapsed_ms(started), None)

        # One deadline for connecting, sending and reading (one timer per send, not two). A
        # timeout or a broken body after the status line only shortens the excerpt: the status
        # is what delivery is judged on.
        response: aiohttp.ClientResponse | None = None
        received = bytearray()
        try:
            async with asyncio.timeout_at(deadline):
                response = await session.request(
                    "POST", self._url(url), data=content, headers=headers,
                    allow_redirects=False,  # a redirect is the receiver's answer, never followed
                    compress=False, timeout=_NO_TIMEOUT,
                )
                await self._read_capped(response, received)
        except TimeoutError:
            if response is None:
                return failure(f"timeout after {timeout:g}s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:  # before any response: _read_capped keeps its own
            if refused:
                return SendResult(None, None, f"destination {', '.join(refused)}; {_ALLOW_HINT}",
                                  _elapsed_ms(started), None, refused_by_policy=True)
            return failure(_describe(exc))
        finally:
            # Read to the end, the connection goes back to the pool; cut off, it is closed.
            if response is not None:
                if response.content.is_eof():
                    response.release()
                else:
                    response.close()
        assert response is not None  # every path without one has returned
        retry_after = None
        if response.status in (429, 503):
            retry_after = parse_retry_after(response.headers.get("retry-after"))
        excerpt = received[: self._excerpt_bytes].decode("utf-8", errors="replace")
        return SendResult(response.status, excerpt, None, _elapsed_ms(started), retry_after)

    def _url(self, url: str) -> URL:
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= 10_000:  # webhooks come and go; keep the cache bounded
                self._urls.clear()
            parsed = self._urls[url] = URL(url)
        return parsed

    async def _read_capped(self, response: aiohttp.ClientResponse, received: bytearray) -> None:
        """Up to max_body_bytes of the body into `received`; a body that breaks off ends early."""
        content = response.content
        with contextlib.suppress(aiohttp.ClientError, OSError):
            while len(received) < self._max_body_bytes:
                chunk = await content.readany()
                if not chunk:
                    break
                received += chunk[: self._max_body_bytes - len(received)]

    def _guarded_socket(self, addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        ip = ipaddress.ip_address(sockaddr[0])
        kind = None if self._allowed_destination(ip) else non_public_kind(ip)
        if kind is not None:
            mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
            shown = f"::ffff:{mapped}" if mapped else sockaddr[0]  # the dotted form people wrote in the URL
            reason = f"{shown} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} address"
            if (refused := _refusals.get(None)) is not None:
                refused.append(reason)
            raise _RefusedDestination(f"destination {reason}; {_ALLOW_HINT}")
        return socket.socket(family, type_, proto)

    def _allowed_destination(self, ip: IPAddress) -> bool:
        if self._allow_private:
            return True
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        # `in` across IP versions compares raw integers, so the version check is not optional.
        return any(c.version == net.version and c in net for c in candidates for net in self._allowed)


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
    # Judge by the aiohttp and OS errors underneath: aiohttp wraps a refused connect in
    # ClientConnectorError, and aiohappyeyeballs folds several addresses' errors into one OSError.
    for err in chain:
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, aiohttp.ClientConnectorDNSError):
            return f"could not resolve host {err.host}"
        if isinstance(err, aiohttp.ClientSSLError):
            return f"TLS error: {err}"
        if isinstance(err, aiohttp.ServerDisconnectedError):
            return "server disconnected without a response"
        if isinstance(err, ConnectionResetError):
            return "connection reset by peer"
    return str(exc) or type(exc).__name__


def _elapsed_ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
