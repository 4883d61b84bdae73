"""The sender over TLS: a self-signed certificate made by the openssl CLI for 127.0.0.1, served by asyncio.

Refused by the default context, accepted when `pgwebhooks.sender.tls_context` trusts it; the TLS-only
ways a receiver can stall or cut an answer. Loopback only, every wait bounded.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import pytest
from raw_http import Peer, answers, send

import pgwebhooks.sender
from pgwebhooks.sender import Sender


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made by the openssl CLI."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


@pytest.fixture
async def tls_peer(peer, certificate) -> Peer:
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(*certificate)
    return await peer(answers(), tls=server_side)


async def test_an_untrusted_certificate_is_a_tls_error(tls_peer) -> None:
    async with Sender(allow_private_networks=True) as sender:
        status, _, error = await send(sender, tls_peer.url(scheme="https"))
    assert status is None and error is not None and error.startswith("TLS error") and "VERIFY_FAILED" in error
    assert tls_peer.requests == []


async def test_a_trusted_certificate_carries_the_post(tls_peer, certificate, monkeypatch) -> None:
    monkeypatch.setattr(pgwebhooks.sender, "tls_context", lambda: ssl.create_default_context(cafile=certificate[0]))
    async with Sender(allow_private_networks=True) as sender:
        results = [await sender.send(tls_peer.url("/tls", scheme="https"), b'{"n":1}', {}, 5) for _ in range(3)]
    assert [(r.status_code, r.response_excerpt, r.error) for r in results] == [
        (200, f"answer-{n}", None) for n in (1, 2, 3)]
    assert [(r.request_line, r.body) for r in tls_peer.requests] == [(b"POST /tls HTTP/1.1", b'{"n":1}')] * 3
    assert tls_peer.connections == 1  # kept alive over TLS too


async def test_a_tls_name_mismatch_is_a_tls_error(tls_peer, certificate, monkeypatch) -> None:
    # A trusted certificate, but for 127.0.0.1, not for the name in the URL.
    monkeypatch.setattr(pgwebhooks.sender, "tls_context", lambda: ssl.create_default_context(cafile=certificate[0]))
    async with Sender(allow_private_networks=True) as sender:
        _, _, error = await send(sender, tls_peer.url(scheme="https").replace("127.0.0.1", "localhost"))
    assert error is not None and error.startswith("TLS error") and "match" in error


async def test_a_tls_handshake_that_never_ends_times_out_and_lets_go(peer) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: Peer) -> None:
        await asyncio.wait_for(reader.read(), 10)  # the ClientHello, then nothing until the client leaves

    p = await peer(silent)
    async with Sender(allow_private_networks=True) as sender:
        assert await send(sender, p.url(scheme="https"), timeout=0.3) == (None, None, "timeout after 0.3s")
    assert await p.wait_closed_by_client()


async def test_a_tls_body_cut_without_close_notify_keeps_its_status(peer, certificate, monkeypatch) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: Peer) -> None:
        if await p.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\npartial")
            await writer.drain()
            writer.transport.abort()  # no close_notify: the TLS layer reports a truncated stream

    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(*certificate)
    p = await peer(cut, tls=server_side)
    monkeypatch.setattr(pgwebhooks.sender, "tls_context", lambda: ssl.create_default_context(cafile=certificate[0]))
    async with Sender(allow_private_networks=True) as sender:
        assert await send(sender, p.url(scheme="https")) == (500, "partial", None)
