"""`pgwebhooks listen`: a local receiver for development, in the spirit of `stripe listen`.

It verifies both signature schemes against the secrets it was given, prints each event in a few
readable lines, and answers with a chosen status (200 by default; pick 500 or 410 to watch the
runner retry or disable). A request whose signature does not verify gets 401 and says why, which
is what a careful production receiver would do too.

With `--forward-to URL` (a server on this machine) each verified request is then forwarded as it
came, raw body and headers, and the receiver answers the runner with what that server answered,
so a handler under development sees exactly what production will send.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx
from aiohttp import web

from pgwebhooks.signatures import SignatureError, verify_profile, verify_standard

Verify = Callable[[bytes, Mapping[str, str], list[str]], None]
# Set by the HTTP connection itself, not by the sender: never forwarded.
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


def _addresses(host: str, port: int) -> list[str]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return [str(info[4][0]) for info in found]


def forward_url(target: str) -> str:
    """`localhost:3000/hook` or a full URL, checked to point at this machine (a development server).

    The name is resolved and every address it resolves to must be a loopback one: a name's
    spelling proves nothing (127.attacker.example is anyone's), and a name that does not resolve
    now could resolve anywhere later. (The client resolves again when it sends; a name that
    changes its answer between the two is outside what a development tool defends against.)
    """
    url = target if "://" in target else f"http://{target}"
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ValueError(f"--forward-to {target!r} has an invalid port") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--forward-to {target!r} is not an http(s) URL")
    addresses = _addresses(parts.hostname, port)
    if not addresses:
        raise ValueError(f"--forward-to {target!r}: {parts.hostname} does not resolve")
    outside = sorted({a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback})
    if outside:
        raise ValueError(f"--forward-to {target!r}: {parts.hostname} resolves to {', '.join(outside)}, not a loopback "
                         "address; forwarding is for a local development server (this machine only)")
    return url


def _verdict(check: Verify, body: bytes, headers: Mapping[str, str], secrets: list[str]) -> tuple[bool, str]:
    if not secrets:
        return False, "not checked (no --secret)"
    try:
        check(body, headers, secrets)
    except SignatureError as exc:
        return False, str(exc)
    return True, "verified"


class Receiver:
    """An HTTP server that keeps, verifies and prints every webhook POSTed to it."""

    def __init__(
        self, secrets: Iterable[str] = (), status: int = 200, out: TextIO | None = None, keep: int | None = None,
        forward_to: str | None = None,
    ) -> None:
        self.secrets = list(secrets)
        self.forward_to = forward_url(forward_to) if forward_to else None
        self._client: httpx.AsyncClient | None = None
        self.status = status
        self.out = out
        self.events: deque[dict[str, Any]] = deque(maxlen=keep)  # the latest `keep` (all when None)
        self.received = 0
        self.port = 0
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        standard_ok, standard_note = _verdict(verify_standard, body, headers, self.secrets)
        legacy_ok, legacy_note = _verdict(verify_profile, body, headers, self.secrets)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {"unparsed": body[:200].decode("utf-8", "replace")}
        rejected = bool(self.secrets) and not (standard_ok and legacy_ok)
        status = 401 if rejected else self.status
        forwarded = None
        if self.forward_to is not None and not rejected:
            status, forwarded = await self._forward(body, request)
        event = {
            "path": request.path,
            "headers": headers,
            "body": body,
            "payload": payload if isinstance(payload, dict) else {"value": payload},
            "standard_verified": standard_ok,
            "legacy_verified": legacy_ok,
            "answered": status,
            "forwarded": forwarded,
            "received_at": time.time(),
        }
        self.events.append(event)
        self.received += 1
        if self.out is not None:
            self._print(event, standard_note, legacy_note)
        async with self._arrived:
            self._arrived.notify_all()
        if forwarded is not None:
            return web.Response(status=status, body=forwarded["body"],
                                content_type=forwarded["content_type"] or "text/plain")
        return web.json_response({"received": not rejected}, status=status)

    async def _forward(self, body: bytes, request: web.Request) -> tuple[int, dict[str, Any]]:
        """POST the request on as it came; its answer becomes ours (502 when nothing answered)."""
        assert self.forward_to is not None
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=30.0, follow_redirects=False)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        try:
            response = await self._client.post(self.forward_to, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return 502, {"status": None, "error": f"{type(exc).__name__}: {exc}", "body": b"", "content_type": None}
        mime = response.headers.get("content-type", "").split(";")[0].strip() or None
        return response.status_code, {"status": response.status_code, "error": None,
                                      "body": response.content[:65536], "content_type": mime}

    def _print(self, event: dict[str, Any], standard_note: str, legacy_note: str) -> None:
        assert self.out is not None
        payload = event["payload"]
        at = datetime.fromtimestamp(event["received_at"], UTC).strftime("%H:%M:%S")
        if "event" not in payload and "type" in payload:  # an application event
            what = str(payload["type"])
        else:
            what = f"{payload.get('event', '?')} {payload.get('schema', '?')}.{payload.get('table', '?')}"
        delivery = event["headers"].get("webhook-id", "?")
        self.out.write(f"{at}  --> {what:<28} {delivery}  <-- {event['answered']}\n")
        self.out.write(f"          webhook-signature: {standard_note};  X-Webhook-Signature: {legacy_note}\n")
        for key in ("record", "old_record", "data"):
            if payload.get(key) is not None:
                self.out.write(f"          {key}: {json.dumps(payload[key], separators=(', ', ': '))}\n")
        if (forwarded := event.get("forwarded")) is not None:
            answer = forwarded["error"] or f"{forwarded['status']} {forwarded['body'][:200].decode('utf-8', 'replace')}"
            self.out.write(f"          forwarded to {self.forward_to}: {answer}\n")
        self.out.flush()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Receiver:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = self._runner.addresses[0][1]  # the port the system chose when asked for 0
        return self

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """The events so far, once there are at least `count` of them or `timeout` has passed."""
        async with self._arrived:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait_for(lambda: self.received >= count), timeout)
        return list(self.events)


def run_listener(host: str, port: int, secrets: Iterable[str], status: int, out: TextIO = sys.stdout,
                 forward_to: str | None = None) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM)."""

    async def serve() -> None:
        # It prints them; a long session must not grow.
        receiver = Receiver(secrets, status, out, keep=100, forward_to=forward_to)
        await receiver.start(host, port)
        checking = "verifying signatures" if receiver.secrets else "NOT verifying signatures (no --secret)"
        answering = f"forwarding to {receiver.forward_to}" if receiver.forward_to else f"answering {status}"
        out.write(f"listening on http://{host}:{receiver.port}/ ({checking}), {answering}; Ctrl-C to stop\n")
        out.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await receiver.stop()
        out.write(f"stopped after {receiver.received} events\n")

    asyncio.run(serve())
