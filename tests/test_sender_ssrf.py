"""The sender's SSRF guard: private, loopback and other non-public destinations are refused before
any connect, on every request, on the address a name resolves to, unless explicitly allowed.

Nothing here connects anywhere but 127.0.0.1 / ::1: a guard fixture records every connect and
refuses non-loopback ones before they reach the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from raw_http import reply

from pgwebhooks.localpg import free_port
from pgwebhooks.sender import Sender

HINT = "allow it with --allow-private-networks or --allow-cidr"


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


async def test_redirect_to_a_private_address_is_neither_followed_nor_connected(serve, connects) -> None:
    redirector = await serve(reply(302, b"go", {"Location": "http://10.0.0.1/steal"}))
    async with Sender(allowed_cidrs=["127.0.0.1/32"]) as sender:
        result = await sender.send(redirector.url(), b"{}", {}, 5)
    assert (result.status_code, result.response_excerpt, result.error) == (302, "go", None)
    assert [ip for ip in connects if ip != "127.0.0.1"] == []


async def test_a_name_whose_every_address_refuses_says_connection_refused(connects, fake_dns) -> None:
    # Two addresses refusing: aiohappyeyeballs raises one folded OSError, which must still read as
    # a refusal (the receiver is down), not as its raw message.
    port = free_port()
    fake_dns({"down.test": ["127.0.0.1", "127.0.0.2"]})
    async with Sender(allow_private_networks=True) as sender:
        result = await sender.send(f"http://down.test:{port}/", b"{}", {}, 5)
    assert (result.status_code, result.error) == (None, "connection refused")
    assert connects == ["127.0.0.1", "127.0.0.2"]
