"""Sender against real HTTP servers on loopback: exact bytes out, bounded reads in.

The servers are raw asyncio sockets (tests/raw_http.py) so tests see the request bytes exactly as
sent and can count accepted connections. Nothing here connects anywhere but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from raw_http import Received, reply

from pgwebhooks.sender import Sender, parse_retry_after

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


# --- hostile receivers --------------------------------------------------------------------------------------


async def test_header_bomb_is_an_error_not_a_crash(serve, open_sender: Sender) -> None:
    # Endless headers: the parser's limits end it, as an error result, long before the deadline.
    async def bomb(_: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(20000):
            writer.write(b"X-Bomb-%d: %s\r\n" % (i, b"b" * 1000))
            await writer.drain()
        writer.write(b"\r\nok")

    server = await serve(bomb)
    result = await open_sender.send(server.url(), b"{}", {}, 10)
    assert result.status_code is None and result.error and "timeout" not in result.error
    assert result.latency_ms < 5000


async def test_one_enormous_header_line_is_an_error(serve, open_sender: Sender) -> None:
    server = await serve(reply(200, b"ok", {"X-Huge": "h" * 100_000}))
    result = await open_sender.send(server.url(), b"{}", {}, 5)
    assert result.status_code is None and result.error


async def test_slowloris_headers_are_cut_at_the_deadline(serve, open_sender: Sender) -> None:
    # A byte of the status line and headers at a time, each well inside any per-read timeout:
    # only the one deadline for the whole send ends it.
    async def trickle(_: Received, writer: asyncio.StreamWriter) -> None:
        for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"s" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)

    server = await serve(trickle)
    started = time.monotonic()
    result = await open_sender.send(server.url(), b"{}", {}, 0.5)
    assert (result.status_code, result.error) == (None, "timeout after 0.5s")
    assert time.monotonic() - started < 3


async def test_slowloris_body_keeps_the_status_and_ends_at_the_deadline(serve, open_sender: Sender) -> None:
    async def trickle(_: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(100000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.02)

    server = await serve(trickle)
    started = time.monotonic()
    result = await open_sender.send(server.url(), b"{}", {}, 0.5)
    assert result.status_code == 500 and result.error is None
    assert result.response_excerpt is not None and set(result.response_excerpt) <= {"x"}
    assert time.monotonic() - started < 3


async def test_a_capped_body_closes_its_connection_and_the_next_send_works(serve) -> None:
    # The cut-off response's unread bytes must not be read as the next request's answer.
    server = await serve(reply(200, b"a" * 200_000))
    async with Sender(allow_private_networks=True, excerpt_bytes=10, max_body_bytes=1000) as sender:
        first = await sender.send(server.url(), b"{}", {}, 5)
        second = await sender.send(server.url(), b"{}", {}, 5)
    assert (first.status_code, first.response_excerpt) == (200, "a" * 10)
    assert (second.status_code, second.response_excerpt) == (200, "a" * 10)
    assert server.connections == 2


async def test_a_body_read_to_the_end_keeps_its_connection(serve, open_sender: Sender) -> None:
    server = await serve(reply(503, b"busy", {"Retry-After": "7"}))
    results = [await open_sender.send(server.url(), b"{}", {}, 5) for _ in range(3)]
    assert [(r.status_code, r.response_excerpt, r.retry_after_seconds) for r in results] == [(503, "busy", 7)] * 3
    assert server.connections == 1
