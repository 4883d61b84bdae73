"""A minimal keep-alive webhook receiver, run as its own process by the benchmarks.

It lives in a process of its own so that serving requests never competes with the runner's (or a
plain client's) event loop: what is measured is the sender, not a shared loop.

    python receiver.py --port 8123 [--delay 0.05] [--record-tokens] [--fail-first]

POST to any path answers 200 "ok" (after `--delay` seconds when given) and counts the request,
keyed by (path, webhook-id): every webhook gets the same webhook-id for one event, so the path,
which names the webhook, is part of the key. GET /_stats returns the counters, POST /_reset clears
them, GET /_tokens returns [token, receipt time] pairs when `--record-tokens` is on (the body's
record.token, with time.time() taken as the request arrives: the latency benchmark compares it
with the inserter's commit time on the same clock). With `--fail-first`, the first request of each
(path, webhook-id) is answered 429 with `Retry-After: 1` (an answer, not a failure of the endpoint:
its circuit stays closed), and GET /_arrivals returns every request's arrival time per webhook-id (the retry punctuality
and bulk neighbour benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time

from aiohttp import web

OK = b"ok"


class Counters:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.duplicates = 0
        self.first: float | None = None
        self.last: float | None = None
        self.seen: set[tuple[str, str]] = set()
        self.tokens: list[tuple[int, float]] = []
        self.arrivals: dict[str, list[float]] = {}

    def stats(self) -> dict[str, object]:
        return {"count": self.count, "duplicates": self.duplicates, "unique": len(self.seen),
                "first": self.first, "last": self.last}


def make_app(delay: float, record_tokens: bool, fail_first: bool = False) -> web.Application:
    counters = Counters()

    async def hook(request: web.Request) -> web.Response:
        now = time.time()
        body = await request.read()
        key = (request.path, request.headers.get("webhook-id", ""))
        first_time = key[1] not in counters.arrivals
        counters.arrivals.setdefault(key[1], []).append(now)
        if fail_first and first_time:
            return web.Response(status=429, body=b"slow down", headers={"Retry-After": "1"})
        if key in counters.seen:
            counters.duplicates += 1
        else:
            counters.seen.add(key)
        counters.count += 1
        if counters.first is None:
            counters.first = now
        counters.last = now
        if record_tokens:
            # Only the latency benchmark pays for parsing bodies.
            with contextlib.suppress(ValueError, KeyError, TypeError):
                counters.tokens.append((int(json.loads(body)["record"]["token"]), now))
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=OK)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(counters.stats())

    async def reset(_: web.Request) -> web.Response:
        counters.reset()
        return web.json_response({"reset": True})

    async def tokens(_: web.Request) -> web.Response:
        return web.json_response(counters.tokens)

    async def arrivals(_: web.Request) -> web.Response:
        return web.json_response(counters.arrivals)

    app = web.Application()
    app.router.add_get("/_arrivals", arrivals)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    app.router.add_get("/_tokens", tokens)
    app.router.add_post("/{tail:.*}", hook)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    parser.add_argument("--record-tokens", action="store_true")
    parser.add_argument("--fail-first", action="store_true", help="answer each event's first request 429")
    args = parser.parse_args()
    # A large backlog: 200+ keep-alive connections open at once when a sender starts.
    web.run_app(make_app(args.delay, args.record_tokens, args.fail_first), host="127.0.0.1", port=args.port,
                access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
