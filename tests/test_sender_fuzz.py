"""The sender against answers a receiver makes up (Hypothesis): whatever bytes come back, in
whatever pieces, send() returns a result within its deadline, never raises, keeps its excerpt
bounded, and the pool stays sound for the next send to another receiver.

Loopback only: each example serves its made-up answer from 127.0.0.1 and a well-behaved
neighbour beside it.
"""

from __future__ import annotations

import asyncio
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgwebhooks.sender import Sender

STATUS_LINES = st.one_of(
    st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 503 Busy",
                     b"HTTP/1.1 429 Slow", b"HTTP/1.1 100 Continue", b"HTTP/1.1 101 Switching",
                     b"HTTP/1.1 999 Odd", b"HTTP/1.1 20 Short", b"HTTP/2 200", b"ICY 200 OK", b""]),
    st.binary(max_size=30),
)
HEADER_NAMES = st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Connection", b"Retry-After",
                                b"Content-Encoding", b"X-Junk", b"Content-Length ", b"Transfer-Encoding:"])
HEADER_VALUES = st.one_of(
    st.sampled_from([b"0", b"5", b"-1", b"99999999999999999999", b"chunked", b"close", b"keep-alive",
                     b"gzip", b"chunked, identity", b"7", b"Wed, 21 Oct 2015 07:28:00 GMT"]),
    st.binary(max_size=20),
)
BODIES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"5\r\nhello\r\n0\r\n\r\n", b"ffffffffffffffff\r\nx", b"3\r\nabcdef\r\n", b"0\r\n\r\n"]),
)


@st.composite
def answers(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    """A made-up answer, as the pieces it is written in, and whether the receiver then hangs up."""
    head = draw(STATUS_LINES) + b"\r\n"
    for name, value in draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5)):
        head += name + b": " + value + b"\r\n"
    whole = head + b"\r\n" + draw(BODIES) + draw(st.binary(max_size=40))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(whole)), max_size=4))))
    pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True) if whole[a:b]]
    return pieces, draw(st.booleans())


async def _serve(pieces: list[bytes], hang_up: bool) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0)
            if not hang_up:
                await asyncio.sleep(0.5)  # hold the connection past the sender's deadline
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def _neighbour() -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def _exchange(pieces: list[bytes], hang_up: bool) -> None:
    made_up, neighbour = await _serve(pieces, hang_up), await _neighbour()
    try:
        async with Sender(allow_private_networks=True, excerpt_bytes=64, max_body_bytes=128) as sender:
            started = time.monotonic()
            odd = await sender.send(f"http://127.0.0.1:{made_up.sockets[0].getsockname()[1]}/", b"{}", {}, 0.3)
            assert time.monotonic() - started < 2
            assert (odd.status_code is None) == (odd.error is not None)
            if odd.status_code is None:
                assert odd.response_excerpt is None
            else:
                assert odd.response_excerpt is not None and len(odd.response_excerpt.encode()) <= 64 * 3
            after = await sender.send(f"http://127.0.0.1:{neighbour.sockets[0].getsockname()[1]}/", b"{}", {}, 2)
            assert (after.status_code, after.response_excerpt, after.error) == (200, "fine", None)
    finally:
        for server in (made_up, neighbour):
            server.close()
            await server.wait_closed()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers())
def test_any_answer_is_a_result_and_leaves_the_pool_sound(answer: tuple[list[bytes], bool]) -> None:
    pieces, hang_up = answer
    asyncio.run(_exchange(pieces, hang_up))
