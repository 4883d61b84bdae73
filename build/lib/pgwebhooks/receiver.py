"""`pgwebhooks listen`: a local receiver for development, in the spirit of `stripe listen`.

It verifies both signature schemes against the secrets it was given, prints each event in a few
readable lines, and answers with a chosen status (200 by default; pick 500 or 410 to watch the
runner retry or disable). A request whose signature does not verify gets 401 and says why, which
is what a careful production receiver would do too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from aiohttp import web

from pgwebhooks.signatures import SignatureError, verify_legacy, verify_standard

Verify = Callable[[bytes, Mapping[str, str], list[str]], None]


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
        self, secrets: Iterable[str] = (), status: int = 200, out: TextIO | None = None, keep: int | None = None
    ) -> None:
        self.secrets = list(secrets)
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
        legacy_ok, legacy_note = _verdict(verify_legacy, body, headers, self.secrets)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {"unparsed": body[:200].decode("utf-8", "replace")}
        rejected = bool(self.secrets) and not (standard_ok and legacy_ok)
        status = 401 if rejected else self.status
        event = {
            "path": request.path,
            "headers": headers,
            "body": body,
            "payload": payload if isinstance(payload, dict) else {"value": payload},
            "standard_verified": standard_ok,
            "legacy_verified": legacy_ok,
            "answered": status,
            "received_at": time.time(),
        }
        self.events.append(event)
        self.received += 1
        if self.out is not None:
            self._print(event, standard_note, legacy_note)
        async with self._arrived:
            self._arrived.notify_all()
        return web.json_response({"received": not rejected}, status=status)

    def _print(self, event: dict[str, Any], standard_note: str, legacy_note: str) -> None:
        assert self.out is not None
        payload = event["payload"]
        at = datetime.fromtimestamp(event["received_at"], UTC).strftime("%H:%M:%S")
        what = f"{payload.get('event', '?')} {payload.get('schema', '?')}.{payload.get('table', '?')}"
        delivery = event["headers"].get("webhook-id", "?")
        self.out.write(f"{at}  --> {what:<28} {delivery}  <-- {event['answered']}\n")
        self.out.write(f"          webhook-signature: {standard_note};  X-Webhook-Signature: {legacy_note}\n")
        for key in ("record", "old_record"):
            if payload.get(key) is not None:
                self.out.write(f"          {key}: {json.dumps(payload[key], separators=(', ', ': '))}\n")
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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """The events so far, once there are at least `count` of them or `timeout` has passed."""
        async with self._arrived:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait_for(lambda: self.received >= count), timeout)
        return list(self.events)


def run_listener(host: str, port: int, secrets: Iterable[str], status: int, out: TextIO = sys.stdout) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM)."""

    async def serve() -> None:
        receiver = Receiver(secrets, status, out, keep=100)  # it prints them; a long session must not grow
        await receiver.start(host, port)
        checking = "verifying signatures" if receiver.secrets else "NOT verifying signatures (no --secret)"
        out.write(f"listening on http://{host}:{receiver.port}/ ({checking}), answering {status}; Ctrl-C to stop\n")
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
