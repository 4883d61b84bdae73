"""POSTs already-signed webhook requests and reports what happened, without ever raising for network trouble.

httpx's API runs on the httpx-aiohttp transport because httpx's own pool (httpcore) is several times slower
on one core. The transport is handed our own aiohttp session so we control the connector: the SSRF guard
lives in its `socket_factory`, which aiohttp calls with the exact address it is about to connect to (for IP
literals and resolved names alike), so DNS rebinding cannot slip a private address past a name check.
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
import httpx
from aiohappyeyeballs import AddrInfoType
from httpx_aiohttp import AiohttpTransport

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_ALLOW_HINT = "allow it with --allow-private-networks or --allow-cidr"
_MAX_RETRY_AFTER = 2**31 - 1  # fits the database's int column whatever a receiver claims

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
        self._transport: httpx.AsyncBaseTransport | None = None
        self._urls: dict[str, httpx.URL] = {}  # parsed once per webhook URL, not once per request

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, socket_factory=self._guarded_socket
        )
        session = aiohttp.ClientSession(
            connector=connector,
            # Send the caller's headers and nothing of aiohttp's own: no octet-stream Content-Type, no
            # Accept-Encoding (so excerpts arrive readable and no decompression bomb can be requested).
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # one receiver must not plant cookies sent to another
            trust_env=False,
        )
        # httpx requests and responses on an aiohttp transport, called directly rather than through
        # httpx.AsyncClient: the client's layers (auth, redirects, cookies, event hooks, environment
        # proxies) are all things a webhook sender must not do, and they cost about a quarter of the
        # runner's CPU per request (see `make bench`, delivery throughput).
        self._transport = AiohttpTransport(client=session)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._transport is not None:
            await self._transport.aclose()  # closes the aiohttp session and its connector too
            self._transport = None

    async def send(self, url: str, body: str | bytes, headers: Mapping[str, str], timeout: float) -> SendResult:
        if self._transport is None:
            raise RuntimeError("Sender used outside 'async with'")
        refused: list[str] = []
        token = _refusals.set(refused)  # connects happen in this task (or tasks copying its context)
        try:
            return await self._send(self._transport, url, body, headers, timeout, refused)
        finally:
            _refusals.reset(token)

    async def _send(
        self,
        transport: httpx.AsyncBaseTransport,
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

        try:
            request = httpx.Request("POST", self._url(url), content=content, headers=headers)
            async with asyncio.timeout_at(deadline):
                response = await transport.handle_async_request(request)
        except TimeoutError:
            return failure(f"timeout after {timeout:g}s")
        except (httpx.HTTPError, httpx.InvalidURL, aiohttp.ClientError, OSError, ValueError) as exc:
            if refused:
                return SendResult(None, None, f"destination {', '.join(refused)}; {_ALLOW_HINT}",
                                  _elapsed_ms(started), None, refused_by_policy=True)
            return failure(_describe(exc))

        try:
            received = await self._read_capped(response, deadline)
        finally:
            await response.aclose()  # drops the connection if the body was not read to the end
        retry_after = None
        if response.status_code in (429, 503):
            retry_after = parse_retry_after(response.headers.get("retry-after"))
        excerpt = received[: self._excerpt_bytes].decode("utf-8", errors="replace")
        return SendResult(response.status_code, excerpt, None, _elapsed_ms(started), retry_after)

    def _url(self, url: str) -> httpx.URL:
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= 10_000:  # webhooks come and go; keep the cache bounded
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        return parsed

    async def _read_capped(self, response: httpx.Response, deadline: float) -> bytes:
        # The receiver has answered with a status, which is what delivery is judged on; a body that
        # stalls or breaks off only shortens the excerpt, so these errors are not reported.
        received = bytearray()
        stream = response.stream
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError(f"expected an async response stream, got {type(stream).__name__}")
        with contextlib.suppress(TimeoutError, httpx.HTTPError, aiohttp.ClientError, OSError):
            # The transport's stream as it is: Response.aiter_raw() would add httpx's re-chunking
            # and byte counting, a tenth of the runner's CPU per delivery for nothing we use.
            async with asyncio.timeout_at(deadline), contextlib.aclosing(aiter(stream)) as chunks:
                async for chunk in chunks:
                    received += chunk[: self._max_body_bytes - len(received)]
                    if len(received) >= self._max_body_bytes:
                        break
        return bytes(received)

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
    # Judge by the aiohttp and OS errors underneath: httpx-aiohttp maps every ClientConnectionError
    # (refused, disconnected...) to httpx.ConnectTimeout, so the httpx type says little.
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
