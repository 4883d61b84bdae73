"""The sender's keep-alive pool against receivers that stall or never read, and senders that give up.

Connections are counted at the receivers (raw loopback servers, tests/raw_http.py): at most
max_connections open at once, none kept for a send that was cancelled, timed out or outlived its
sender, and no pool slot lost on the way. Every loop and server is bounded in count and time.
"""

from __future__ import annotations

import asyncio

import pytest
from raw_http import OK_HEAD, Peer, ok, send

from pgwebhooks.sender import Sender


# 10. Pool bounds ----------------------------------------------------------------------------------------------
async def test_max_connections_holds_across_destinations(peer) -> None:
    async def slow_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: Peer) -> None:
        for _ in range(400):
            if await p.read_request(reader) is None:
                return
            await asyncio.sleep(0.002)
            writer.write(ok(p.url().encode()))
            await writer.drain()

    live: list[asyncio.StreamWriter] = []  # open connections of all three servers, counted at each accept
    peers = [await peer(slow_answers, live) for _ in range(3)]
    async with Sender(allow_private_networks=True, max_connections=5) as sender:
        results = await asyncio.gather(*(sender.send(peers[n % 3].url(), b"{}", {}, 30) for n in range(300)))
    assert [r.status_code for r in results] == [200] * 300
    assert [r.response_excerpt for r in results] == [peers[n % 3].url() for n in range(300)]  # each its own answer
    assert sum(len(p.requests) for p in peers) == 300
    assert max(p.peak for p in peers) <= 5
    assert sum(p.connections for p in peers) > 5  # destinations took turns: idle connections were closed for others


async def test_a_send_that_ends_after_the_sender_closed_closes_its_connection(peer) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: Peer) -> None:
        for _ in range(10):
            if await p.read_request(reader) is None:
                return
            await asyncio.sleep(0.1)
            writer.write(ok(b"late"))
            await writer.drain()

    p = await peer(slow)
    async with Sender(allow_private_networks=True) as sender:
        in_flight = asyncio.create_task(send(sender, p))
        await asyncio.sleep(0.02)
    assert await in_flight == (200, "late", None)
    assert await p.wait_closed_by_client()  # no pool left to keep it: closed, not left to the GC


async def test_a_receiver_that_never_reads_does_not_keep_the_connection(peer) -> None:
    # A body bigger than the socket buffers stays queued in the client; when the send gives up, the
    # rest must be dropped with the connection, not kept to be sent whenever (if ever) the receiver
    # reads again. It reads only after the send gave up: it gets what the kernels held, then the end.
    gave_up, received = asyncio.Event(), [0]

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: Peer) -> None:
        await asyncio.wait_for(gave_up.wait(), 10)
        for _ in range(10_000):
            chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
            if not chunk:
                return
            received[0] += len(chunk)

    p = await peer(deaf)
    async with Sender(allow_private_networks=True) as sender:
        result = await sender.send(p.url(), b"x" * (32 << 20), {}, 0.3)
        gave_up.set()
        assert (result.status_code, result.error) == (None, "timeout after 0.3s")
        assert await p.wait_closed_by_client()
    assert received[0] < 16 << 20  # socket buffers hold a few MiB; the other 30-odd were dropped


# 11. Cancellation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("before_cancel", [b"", b"HTTP/1.1 200 OK\r\n", OK_HEAD % 10 + b"stale"])
async def test_a_cancelled_send_leaves_no_connection_with_its_answer(peer, open_sender, before_cancel) -> None:
    go, written = asyncio.Event(), asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: Peer) -> None:
        for _ in range(10):
            if await p.read_request(reader) is None:
                return
            if len(p.requests) == 1:  # the answer to the cancelled send comes in two parts
                writer.write(before_cancel)
                await writer.drain()
                written.set()
                await asyncio.wait_for(go.wait(), 5)
                writer.write((OK_HEAD % 10 + b"stale-----")[len(before_cancel):])
            else:
                writer.write(ok(b"answer-%d" % len(p.requests)))
            await writer.drain()

    p = await peer(script)
    cancelled = asyncio.create_task(open_sender.send(p.url(), b"{}", {}, 5))
    await asyncio.wait_for(written.wait(), 5)
    for _ in range(5):  # let the client read what was written, if anything
        await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    go.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert await send(open_sender, p) == (200, "answer-2", None)
    assert await send(open_sender, p) == (200, "answer-3", None)
    assert p.connections == 2


async def test_cancelled_and_timed_out_waits_give_their_slot_back(peer) -> None:
    async def first_never_answered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: Peer) -> None:
        for _ in range(10):
            if await p.read_request(reader) is None:
                return
            if len(p.requests) == 1:
                await asyncio.sleep(30)  # cancelled with the server
            writer.write(ok(b"answer-%d" % len(p.requests)))
            await writer.drain()

    p = await peer(first_never_answered)
    async with Sender(allow_private_networks=True, max_connections=1) as sender:
        holder = asyncio.create_task(send(sender, p))
        waiters = [asyncio.create_task(send(sender, p)) for _ in range(3)]
        assert await send(sender, p, timeout=0.3) == (None, None, "timeout after 0.3s")  # no slot came
        for task in (holder, *waiters):
            task.cancel()
        await asyncio.gather(holder, *waiters, return_exceptions=True)
        assert [await send(sender, p) for _ in range(2)] == [(200, "answer-2", None), (200, "answer-3", None)]
    assert p.connections == 2
