"""The sender against hostile or broken receivers, and a hostile webhook admin choosing URL and headers.

Each numbered section proves one property (9, TLS, is in tests/test_sender_tls.py; 10 and 11, the
pool, in tests/test_sender_pool.py). The receivers are raw asyncio sockets on 127.0.0.1 that write
exactly the bytes a test gives them; every loop and every server is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from raw_http import Peer, answers, hung_up, ok, send

from pgwebhooks.sender import Sender


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


# 2. Interim answers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nRetry-After: 99\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
])
async def test_interim_answers_are_skipped_for_the_final_one(peer, open_sender, interim) -> None:
    p = await peer(answers(interim + b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy"))
    result = await open_sender.send(p.url(), b"{}", {}, 5)
    # A Retry-After of an interim answer is not the final answer's.
    assert (result.status_code, result.response_excerpt, result.retry_after_seconds) == (503, "busy", None)
    assert await send(open_sender, p) == (200, "answer-2", None)
    assert p.connections == 1  # a complete keep-alive answer: reused


@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
])
async def test_endless_interim_answers_end_at_the_deadline(peer, open_sender, interim) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: Peer) -> None:
        await p.read_request(reader)
        for _ in range(200_000):  # a few MB at most
            writer.write(interim * 10)
            await writer.drain()
            await asyncio.sleep(0)

    p = await peer(endless)
    started = time.monotonic()
    assert await send(open_sender, p, timeout=0.5) == (None, None, "timeout after 0.5s")
    assert time.monotonic() - started < 5
    assert await p.wait_closed_by_client()


async def test_one_huge_interim_header_block_is_cut_at_the_header_cap(peer, open_sender) -> None:
    huge = b"HTTP/1.1 103 Early Hints\r\n" + b"Link: </%s>\r\n" % (b"a" * 1000) * 100 + b"\r\n"
    p = await peer(answers(huge + ok(b"late")))
    status, _, error = await send(open_sender, p)
    assert status is None and error is not None and "larger than 64 KiB" in error


# 3. Protocol switches -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("switch", [
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\nhello",
])
async def test_switching_protocols_is_a_result_and_the_connection_is_not_reused(peer, open_sender, switch) -> None:
    p = await peer(answers(switch))
    assert await send(open_sender, p) == (101, "", None)
    assert await send(open_sender, p) == (200, "answer-2", None)
    assert p.connections == 2


async def test_an_upgrade_offer_on_a_200_is_just_a_200(peer, open_sender) -> None:
    # "Upgrade" on a final non-101 answer only advertises: the connection stays HTTP/1.1.
    offer = b"HTTP/1.1 200 OK\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\noffer"
    p = await peer(answers(offer))
    assert await send(open_sender, p) == (200, "offer", None)
    assert await send(open_sender, p) == (200, "answer-2", None)


# 4. Bodies read until the connection closes --------------------------------------------------------------------
@pytest.mark.parametrize(("head", "hang_up"), [
    (b"HTTP/1.0 200 OK\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", True),  # not chunked last: the close ends it
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 7\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\n", False),
])
async def test_an_answer_that_ends_its_connection_keeps_status_and_excerpt(peer, open_sender, head, hang_up) -> None:
    # The connection is not reused even when the receiver, against its own word, keeps it open.
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: Peer) -> None:
        for _ in range(1 if hang_up else 10):
            if await p.read_request(reader) is not None:
                writer.write(head + b"reply %d" % len(p.requests))
                await writer.drain()

    p = await peer(script)
    assert await send(open_sender, p) == (200, "reply 1", None)
    assert await send(open_sender, p) == (200, "reply 2", None)
    assert p.connections == 2


# 5. Garbage ---------------------------------------------------------------------------------------------------

CHUNKED = b"2\r\nok\r\n0\r\n\r\n"
GARBAGE = {
    "not-http": (b"SMTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", None),
    "http-0.9": (b"ok\r\n", None),
    "no-cr": (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", None),
    "status-1000": (b"HTTP/1.1 1000 X\r\nContent-Length: 0\r\n\r\n", None),
    "negative-length": (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", None),
    "overflowing-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n", None),
    "two-lengths": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 7\r\n\r\nok", None),
    "length-list": (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 7\r\n\r\nok", None),
    "te-then-cl": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\n\r\n" + CHUNKED, None),
    "cl-then-te": (b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED, None),
    "space-before-colon": (b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", None),
    "folded-header": (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok", None),
    "nul-in-header": (b"HTTP/1.1 200 OK\r\nX: a\0b\r\nContent-Length: 2\r\n\r\nok", None),
    "chunk-size-not-hex": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n", 200),
    "chunk-size-negative": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nok\r\n0\r\n\r\n", 200),
    "chunk-size-overflow": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 40 + b"\r\nok\r\n", 200),
    "chunk-longer-than-size": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokEXTRA\r\n0\r\n\r\n", 200),
    "body-after-204": (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", 204),
}


@pytest.mark.parametrize(("garbage", "status"), GARBAGE.values(), ids=GARBAGE.keys())
async def test_garbage_is_an_error_result_and_the_connection_is_dropped(peer, open_sender, garbage, status) -> None:
    p = await peer(answers(garbage))
    result = await open_sender.send(p.url(), b"{}", {}, 5)  # never raises
    assert result.status_code == status
    if status is None:
        assert result.error is not None and result.error.startswith("invalid HTTP response (")
    assert await send(open_sender, p) == (200, "answer-2", None)
    assert p.connections == 2


@pytest.mark.parametrize(("start", "filler"), [
    (b"0\r\nX-Trailer: ", b"a"),  # one trailer that never ends: the parser keeps what it has of it in memory
    (b"0\r\n", b"X-More: b\r\n"),  # trailers that never end
    (b"", b"1\r\na\r\n"),  # one byte per chunk, forever
    (b"1;", b"a"),  # a chunk extension that never ends
])
async def test_endless_chunk_framing_or_trailers_are_cut_like_a_body(peer, start, filler) -> None:
    sent = [0]

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: Peer) -> None:
        await p.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + start)
        for _ in range(4096):  # 256 MiB at most
            writer.write(filler * (65536 // len(filler)))
            await writer.drain()
            sent[0] += 65536

    p = await peer(endless)
    async with Sender(allow_private_networks=True, max_body_bytes=64 * 1024) as sender:
        result = await sender.send(p.url(), b"{}", {}, 10)
    assert (result.status_code, result.error) == (200, None) and result.latency_ms < 5000
    assert await p.wait_closed_by_client()
    assert sent[0] < 64 * 1024 * 1024  # kernel buffers take some; the client stopped reading long before


# 6. The receiver closes an idle keep-alive connection ---------------------------------------------------------
@pytest.mark.parametrize("noticed", [True, False], ids=["seen-by-the-loop", "still-in-the-socket"])
async def test_an_idle_connection_the_receiver_closed_is_replaced(peer, open_sender, noticed) -> None:
    # The close arrives before the next send picks a connection: that send succeeds on a new one,
    # whether the event loop has delivered the close yet or not.
    p = await peer(answers())
    assert await send(open_sender, p) == (200, "answer-1", None)
    p.writers[0].get_extra_info("socket").shutdown(socket.SHUT_RDWR)  # the FIN goes out now
    if noticed:
        for _ in range(20):
            await asyncio.sleep(0)
    assert await send(open_sender, p) == (200, "answer-2", None)
    assert p.connections == 2


async def test_a_close_after_the_request_was_written_fails_cleanly(peer, open_sender) -> None:
    # The receiver reads the request on the reused connection and hangs up without answering (its
    # keep-alive timeout raced our request): that attempt fails, it is not resent (a POST may have
    # been acted on), and the next send opens a new connection.
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: Peer) -> None:
        if await p.read_request(reader) is not None:
            writer.write(ok(b"answer-%d" % len(p.requests)))
            await writer.drain()
            await p.read_request(reader)  # and return without answering: the connection closes

    p = await peer(script)
    assert await send(open_sender, p) == (200, "answer-1", None)
    assert await send(open_sender, p) == (None, None, "server disconnected without a response")
    assert await send(open_sender, p) == (200, "answer-3", None)
    assert (p.connections, len(p.requests)) == (2, 3)


# 7. Header and URL injection by whoever configures the webhook -----------------------------------------------

INJECTED_HEADERS = [
    {"X-A": "v\r\nX-Injected: 1"},
    {"X-A": "v\nX-Injected: 1"},
    {"X-A": "v\rX-Injected: 1"},
    {"X-A\r\nX-Injected": "1"},
    {"X-A": "v\r\n\r\nPOST /smuggled HTTP/1.1\r\nX-Injected: 1"},
    {"X-A": "v\0X-Injected: 1"},
    {"X-A\0": "v"},
    {"X-Fine": "ok", "X-A": "v\r\nX-Injected: 1", "X-Also-Fine": "ok"},
]


@pytest.mark.parametrize("headers", INJECTED_HEADERS)
async def test_line_breaks_and_nul_in_headers_are_refused_before_connecting(peer, open_sender, headers) -> None:
    p = await peer(answers())
    result = await open_sender.send(p.url(), b"{}", headers, 5)
    assert (result.status_code, result.error) == (None, "a header name or value holds a line break or NUL; not sent")
    assert p.connections == 0


@pytest.mark.parametrize("headers", [
    {"Content-Length": "0"}, {"transfer-encoding": "chunked"}, {"Host": "elsewhere.test"}, {"CONNECTION": "close"},
])
async def test_headers_that_frame_the_request_are_refused_before_connecting(peer, open_sender, headers) -> None:
    # A second Content-Length or a Transfer-Encoding would make a proxy in front of the receiver
    # read another request than the one sent; the database refuses these names, the sender too.
    p = await peer(answers())
    result = await open_sender.send(p.url(), b"{}", {"X-Ok": "1", **headers}, 5)
    assert result.status_code is None and result.error and result.error.endswith("; not sent")
    assert p.connections == 0


@pytest.mark.parametrize("path", [
    "/a\r\nX-Injected: 1", "/a?q=\r\nX-Injected: 1", "/a\nX-Injected: 1", "/a\rX-Injected: 1", "/a\0",
    "/a HTTP/1.1\r\nX-Injected: 1\r\n\r\n", "/a\tb", "/a b",
])
async def test_raw_control_characters_in_the_url_are_refused(peer, open_sender, path) -> None:
    p = await peer(answers())
    for url in (p.url(path), p.url(userinfo=f"u{path}:p{path}@")):
        assert await send(open_sender, url) == (None, None, "the URL holds a space or a control character; not sent")
    assert p.connections == 0


@pytest.mark.parametrize("path", ["/a%0D%0AX-Injected:%201", "/a?q=%0d%0aX-Injected:%201&r=%00"])
async def test_percent_encoded_line_breaks_stay_encoded(peer, open_sender, path) -> None:
    p = await peer(answers())
    for url in (p.url(path), p.url(path, userinfo="u%0D%0AX-Injected:%201:p%0d%0a@")):
        assert await send(open_sender, url) == (200, f"answer-{len(p.requests)}", None)
    for request in p.requests:
        assert b"x-injected" not in request.head.lower().replace(b"%0d%0ax-injected", b"")
        assert request.request_line.startswith(b"POST /a") and request.request_line.endswith(b" HTTP/1.1")
        assert b"\r" not in request.request_line and b"\0" not in request.head
        assert [k for k, _ in request.headers] in ([b"host", b"content-length"],
                                                   [b"host", b"authorization", b"content-length"])


@pytest.mark.parametrize("host", ["127.0.0.1%0D%0AX-Injected:%201", "127.0.0.1\r\nX-Injected: 1", "127.0.0.1%00"])
async def test_a_line_break_in_the_host_is_refused(open_sender, host) -> None:
    status, _, error = await send(open_sender, f"http://{host}:1/")
    assert status is None and error is not None


# 8. Credentials in the URL ------------------------------------------------------------------------------------
async def test_url_userinfo_is_sent_as_basic_credentials_only(peer, open_sender) -> None:
    p = await peer(answers())
    assert await send(open_sender, p.url("/hook?x=1", userinfo="user:p%40ss@")) == (200, "answer-1", None)
    [request] = p.requests
    port = p.url().rsplit(":", 1)[1].rstrip("/")
    assert request.request_line == b"POST /hook?x=1 HTTP/1.1"
    assert dict(request.headers)[b"host"] == f"127.0.0.1:{port}".encode()
    assert dict(request.headers)[b"authorization"] == b"Basic dXNlcjpwQHNz"  # base64 of user:p@ss
    assert b"user" not in request.head and b"p@ss" not in request.head and b"p%40ss" not in request.head


async def test_userinfo_that_is_not_latin1_is_an_error_not_an_exception(peer, open_sender) -> None:
    p = await peer(answers())
    status, _, error = await send(open_sender, p.url(userinfo="%E7%94%A8:pw@"))
    assert status is None and error is not None and "latin-1" in error
    assert p.connections == 0


# 12. A body trickled past the deadline ------------------------------------------------------------------------
async def test_a_trickled_body_keeps_its_status_and_its_connection_is_closed(peer, open_sender) -> None:
    client_gone = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: Peer) -> None:
        if await p.read_request(reader) is None:
            return
        if len(p.requests) > 1:
            writer.write(ok(b"answer-%d" % len(p.requests)))
            await writer.drain()
            await p.read_request(reader)
            return
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(1000):  # 20 s at most; the deadline is 0.5 s
            if reader.at_eof() or hung_up(writer):
                client_gone.set()
                return
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.02)

    p = await peer(script)
    started = time.monotonic()
    status, excerpt, error = await send(open_sender, p, timeout=0.5)
    assert (status, error) == (502, None) and excerpt and set(excerpt) == {"x"}
    assert time.monotonic() - started < 5
    await asyncio.wait_for(client_gone.wait(), 5)  # the receiver sees the connection end
    assert await send(open_sender, p) == (200, "answer-2", None)
    assert p.connections == 2
