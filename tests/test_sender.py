"""Sender against real HTTP servers on loopback: exact bytes out, bounded reads in, and the SSRF guard.

The servers are raw asyncio sockets rather than a framework so tests see the request bytes exactly as
sent and can count accepted connections. Nothing here connects anywhere but 127.0.0.1 / ::1: a guard
fixture records every connect and refuses non-loopback ones before they reach the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from pgwebhooks.localpg import free_port
from pgwebhooks.sender import Sender, parse_retry_after

HINT = "allow it with --allow-private-networks or --allow-cidr"


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


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(respond: Respond = OK, host: str = "127.0.0.1") -> RawServer:
        servers.append(await RawServer(respond, host).start())
        return servers[-1]

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address the event loop is asked to connect to; only loopback ones go through."""
    loop = asyncio.get_running_loop()
    real_connect = loop.sock_connect
    seen: list[str] = []

    async def guarded(sock: socket.socket, address: Any) -> None:
        seen.append(address[0])
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise ConnectionRefusedError("test guard: only loopback connects are allowed")
        await real_connect(sock, address)

    monkeypatch.setattr(loop, "sock_connect", guarded)
    return seen


@pytest.fixture
async def open_sender() -> AsyncIterator[Sender]:
    async with Sender(allow_private_networks=True) as sender:
        yield sender


# --- what goes out --------------------------------------------------------------------------------------------


async def test_posts_body_and_headers_exactly(serve, open_sender: Sender) -> None:
    server = await serve()
    body = '{"id":"evt_1","record":{"name":"Zoë ✓"},  "n": 1.50}'.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "pgwebhooks/0.1.0",
        "webhook-id": "evt_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1,abc+/= v1,def=",
        "X-Webhook-Signature": "t=1700000000,v1=00ff,v1=ab12",
        "X-Custom": "Some  Value; with=stuff",
    }

    result = await open_sender.send(server.url("/hook?a=1&b=%20"), body, headers, 5)

    assert (result.status_code, result.response_excerpt, result.error) == (200, "ok", None)
    assert result.retry_after_seconds is None and result.latency_ms >= 0
    [received] = server.requests
    assert received.request_line == b"POST /hook?a=1&b=%20 HTTP/1.1"
    assert received.body == body
    ours = [(k, v) for k, v in received.headers if k not in (b"host", b"content-length")]
    assert ours == [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    assert dict(received.headers)[b"content-length"] == str(len(body)).encode()
    assert len(received.headers) == len(headers) + 2  # nothing else added: no Accept-Encoding, no Accept


async def test_adds_no_content_type_of_its_own(serve, open_sender: Sender) -> None:
    server = await serve()
    result = await open_sender.send(server.url(), "héllo", {"User-Agent": "t"}, 5)
    assert result.status_code == 200
    [received] = server.requests
    assert received.body == "héllo".encode()
    assert {k for k, _ in received.headers} == {b"host", b"content-length", b"user-agent"}


async def test_keep_alive_reuses_one_connection(serve, open_sender: Sender) -> None:
    server = await serve()
    for _ in range(5):
        assert (await open_sender.send(server.url(), b"{}", {}, 5)).status_code == 200
    assert server.connections == 1


async def test_max_connections_caps_the_pool(serve) -> None:
    server = await serve(reply(200, b"ok", delay=0.1))
    async with Sender(allow_private_networks=True, max_connections=2) as sender:
        results = await asyncio.gather(*(sender.send(server.url(), b"{}", {}, 5) for _ in range(6)))
    assert [r.status_code for r in results] == [200] * 6
    assert server.connections == 2


# --- what comes back ------------------------------------------------------------------------------------------


async def test_non_2xx_is_returned_with_a_truncated_excerpt(serve) -> None:
    server = await serve(reply(500, b"e" * 5000))
    async with Sender(allow_private_networks=True, excerpt_bytes=100) as sender:
        result = await sender.send(server.url(), b"{}", {}, 5)
    assert (result.status_code, result.response_excerpt, result.error) == (500, "e" * 100, None)


async def test_excerpt_decodes_invalid_utf8_with_replacement(serve, open_sender: Sender) -> None:
    server = await serve(reply(400, b"\xff\xfebad \xc3"))
    result = await open_sender.send(server.url(), b"{}", {}, 5)
    assert (result.status_code, result.response_excerpt) == (400, "\ufffd\ufffdbad \ufffd")


async def test_redirect_is_not_followed(serve, open_sender: Sender) -> None:
    target = await serve()
    redirector = await serve(reply(307, b"moved", {"Location": target.url("/elsewhere")}))
    result = await open_sender.send(redirector.url(), b"{}", {}, 5)
    assert (result.status_code, result.response_excerpt, result.error) == (307, "moved", None)
    assert target.connections == 0


async def test_slow_server_times_out(serve, open_sender: Sender) -> None:
    server = await serve(reply(200, b"late", delay=10))
    started = time.monotonic()
    result = await open_sender.send(server.url(), b"{}", {}, 0.3)
    assert (result.status_code, result.response_excerpt, result.error) == (None, None, "timeout after 0.3s")
    assert 250 <= result.latency_ms < 2000 and time.monotonic() - started < 2


async def test_connection_refused(open_sender: Sender) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await open_sender.send(f"http://127.0.0.1:{port}/", b"{}", {}, 5)
    assert (result.status_code, result.error) == (None, "connection refused")


async def test_huge_streaming_response_is_cut_off(serve) -> None:
    sent = [0]

    async def endless(_: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")  # body runs until close
        chunk = b"z" * 65536
        for _ in range(16384):  # 1 GiB at most
            writer.write(chunk)
            await writer.drain()
            sent[0] += len(chunk)

    server = await serve(endless)
    started = time.monotonic()
    async with Sender(allow_private_networks=True, excerpt_bytes=1024, max_body_bytes=64 * 1024) as sender:
        result = await sender.send(server.url(), b"{}", {}, 30)
    assert (result.status_code, result.response_excerpt, result.error) == (200, "z" * 1024, None)
    assert time.monotonic() - started < 5
    for _ in range(100):  # let the server notice the closed connection
        if not server._tasks:
            break
        await asyncio.sleep(0.02)
    assert sent[0] < 64 * 1024 * 1024  # kernel buffers take some; the client stopped reading long before


def http_date(offset: timedelta) -> str:
    return format_datetime(datetime.now(UTC) + offset, usegmt=True)


@pytest.mark.parametrize(
    ("status", "value", "low", "high"),
    [
        (429, "120", 120, 120),
        (503, " 7 ", 7, 7),
        (429, timedelta(seconds=90), 80, 91),  # an HTTP date, made when the test runs
        (503, timedelta(seconds=-90), 0, 0),
        (429, "soon", None, None),
        (503, "-5", None, None),
        (500, "120", None, None),
        (200, "120", None, None),
    ],
)
async def test_retry_after(serve, open_sender: Sender, status: int, value: str | timedelta, low, high) -> None:
    if isinstance(value, timedelta):
        value = http_date(value)
    server = await serve(reply(status, b"", {"Retry-After": value}))
    result = await open_sender.send(server.url(), b"{}", {}, 5)
    assert result.status_code == status
    if low is None:
        assert result.retry_after_seconds is None
    else:
        assert result.retry_after_seconds is not None and low <= result.retry_after_seconds <= high


def test_retry_after_absent_or_absurd() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("9" * 5000) == 2**31 - 1
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0


# --- SSRF guard -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "listen_on", "kind_of", "address"),
    [
        ("127.0.0.1", "127.0.0.1", "a loopback", "127.0.0.1"),
        ("localhost", "127.0.0.1", "a loopback", "127.0.0.1"),
        ("[::1]", "::1", "a loopback", "::1"),
        ("[::ffff:127.0.0.1]", "127.0.0.1", "a loopback", "::ffff:127.0.0.1"),
    ],
)
async def test_loopback_refused_without_connecting(serve, connects, host, listen_on, kind_of, address) -> None:
    # A listener makes a wrongly allowed request visible at the receiving end too; on a machine
    # without IPv6 loopback there is none, and `connects` alone shows that nothing was attempted.
    server = None
    with contextlib.suppress(OSError):
        server = await serve(host=listen_on)
    url = server.url(host=host) if server else f"http://{host}:{free_port()}/"
    async with Sender() as sender:
        result = await sender.send(url, b"{}", {}, 5)
    assert result.status_code is None and result.response_excerpt is None
    assert result.error == f"destination {address} is {kind_of} address; {HINT}"
    assert connects == []
    assert server is None or server.connections == 0


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("10.0.0.1", "10.0.0.1 is a private address"),
        ("192.168.1.20", "192.168.1.20 is a private address"),
        ("172.16.5.5", "172.16.5.5 is a private address"),
        ("169.254.169.254", "169.254.169.254 is a link-local address"),
        ("0.0.0.0", "0.0.0.0 is an unspecified address"),
        ("224.0.0.1", "224.0.0.1 is a multicast address"),
        ("240.0.0.1", "240.0.0.1 is a private address"),  # Python files 240/4 under is_private too
        ("100.64.0.1", "100.64.0.1 is a non-public address"),
        ("[::]", ":: is an unspecified address"),
        ("[fd00::1]", "fd00::1 is a private address"),
        ("[fe80::1]", "fe80::1 is a link-local address"),
        ("[ff02::1]", "ff02::1 is a multicast address"),
        ("[::ffff:10.0.0.1]", "::ffff:10.0.0.1 is a private address"),
        ("[::ffff:169.254.169.254]", "::ffff:169.254.169.254 is a link-local address"),
    ],
)
async def test_non_public_refused_before_any_connect(connects, host: str, message: str) -> None:
    started = time.monotonic()
    async with Sender() as sender:
        result = await sender.send(f"http://{host}:8080/", b"{}", {}, 5)
    assert result.error == f"destination {message}; {HINT}"
    assert result.status_code is None
    assert connects == [] and time.monotonic() - started < 1


async def test_guard_checks_every_request_not_just_the_first(connects) -> None:
    async with Sender() as sender:
        for _ in range(3):
            result = await sender.send("http://10.0.0.1/", b"{}", {}, 5)
            assert result.error == f"destination 10.0.0.1 is a private address; {HINT}"
    assert connects == []


@pytest.mark.parametrize(
    "options",
    [{"allow_private_networks": True}, {"allowed_cidrs": ["127.0.0.0/8"]}, {"allowed_cidrs": ["127.0.0.1"]}],
)
async def test_loopback_reachable_when_allowed(serve, connects, options) -> None:
    server = await serve()
    async with Sender(**options) as sender:
        for host in ("127.0.0.1", "localhost"):
            result = await sender.send(server.url(host=host), b"{}", {}, 5)
            assert (result.status_code, result.error) == (200, None)
    assert server.connections == 2 and connects == ["127.0.0.1", "127.0.0.1"]


@pytest.mark.parametrize("cidrs", [["10.0.0.0/8"], ["::/0"], ["::ffff:0:0/96"]])
async def test_other_cidrs_do_not_open_loopback(serve, connects, cidrs) -> None:
    # ::/0 and friends matter: ipaddress compares raw integers across versions unless told otherwise.
    server = await serve()
    async with Sender(allowed_cidrs=cidrs) as sender:
        result = await sender.send(server.url(), b"{}", {}, 5)
    assert result.error == f"destination 127.0.0.1 is a loopback address; {HINT}"
    assert server.connections == 0 and connects == []


@pytest.mark.parametrize("url", ["ftp://example.com/", "not a url", "http://[::1/"])
async def test_bad_urls_become_errors(connects, url: str) -> None:
    async with Sender() as sender:
        result = await sender.send(url, b"{}", {}, 5)
    assert result.status_code is None and result.error
    assert connects == []


async def test_body_that_stalls_keeps_the_status(serve, open_sender: Sender) -> None:
    # The status is what delivery is judged on; a body that never finishes only shortens the excerpt.
    async def stall(_: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(10)

    server = await serve(stall)
    result = await open_sender.send(server.url(), b"{}", {}, 0.3)
    assert (result.status_code, result.response_excerpt, result.error) == (200, "partial", None)
    assert result.latency_ms < 2000


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, list[str]]], None]:
    """Answers getaddrinfo for made-up names, the way a rebinding DNS server would."""

    def install(answers: dict[str, list[str]]) -> None:
        loop = asyncio.get_running_loop()
        real_getaddrinfo = loop.getaddrinfo

        async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host not in answers:
                return await real_getaddrinfo(host, port, *args, **kwargs)
            return [
                (
                    socket.AF_INET6 if ":" in ip else socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    (ip, port, 0, 0) if ":" in ip else (ip, port),
                )
                for ip in answers[host]
            ]

        monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)

    return install


async def test_names_are_checked_on_the_resolved_address(serve, connects, fake_dns) -> None:
    server = await serve()
    fake_dns({"rebind.test": ["127.0.0.1"], "both.test": ["::1", "127.0.0.1"]})
    async with Sender() as sender:
        one = await sender.send(server.url(host="rebind.test"), b"{}", {}, 5)
        both = await sender.send(server.url(host="both.test"), b"{}", {}, 5)
    assert one.error == f"destination 127.0.0.1 is a loopback address; {HINT}"
    assert both.error == f"destination ::1 is a loopback address, 127.0.0.1 is a loopback address; {HINT}"
    assert server.connections == 0 and connects == []
