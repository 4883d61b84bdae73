"""Plain async HTTP clients posting prepared requests as fast as they can: the runner's yardstick.

    python clients.py --kind aiohttp|httpx|httpx-aiohttp --requests requests.json [--concurrency 200]
                      [--max-seconds 20]

`requests.json` holds [{"url", "body", "headers"}, ...], the very requests `webhooks.claim()`
hands the runner. Each client runs in a process of its own, like the runner, with `concurrency`
workers pulling from one shared list (the cheapest way to keep that many requests in flight), and
prints one JSON line: {"kind", "requests", "ok", "errors", "seconds", "rate"}. The clock starts
once the client exists and stops at the last response, so imports and setup are not counted. A
client too slow to finish within `--max-seconds` stops taking requests then, and is judged on
those it completed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

Post = Callable[[str, bytes, dict[str, str]], Awaitable[int]]


Requests = list[tuple[str, bytes, dict[str, str]]]


async def drive(post: Post, requests: Requests, concurrency: int, max_seconds: float) -> dict[str, Any]:
    pending = iter(requests)
    ok = errors = 0
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal ok, errors
        for url, body, headers in pending:  # a shared iterator: each request is taken once
            if time.perf_counter() > deadline:
                return  # a slow client is measured on what it managed, not waited for
            try:
                status = await post(url, body, headers)
            except (aiohttp.ClientError, httpx.HTTPError, OSError, TimeoutError):
                errors += 1
                continue
            if 200 <= status < 300:
                ok += 1
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return {"requests": ok + errors, "ok": ok, "errors": errors, "seconds": seconds, "rate": ok / seconds}


async def with_aiohttp(requests: Requests, concurrency: int, max_seconds: float) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status

        return await drive(post, requests, concurrency, max_seconds)


async def with_httpx(
    requests: Requests, concurrency: int, max_seconds: float, transport: httpx.AsyncBaseTransport | None
) -> dict[str, Any]:
    # httpx's default pool allows 100 connections; give it as many as there are workers.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, transport=transport, timeout=30) as client:

        async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
            response = await client.post(url, content=body, headers=headers)
            return response.status_code

        return await drive(post, requests, concurrency, max_seconds)


async def run(kind: str, requests: Requests, concurrency: int, max_seconds: float) -> dict[str, Any]:
    if kind == "aiohttp":
        return await with_aiohttp(requests, concurrency, max_seconds)
    if kind == "httpx":
        return await with_httpx(requests, concurrency, max_seconds, None)
    if kind == "httpx-aiohttp":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        return await with_httpx(requests, concurrency, max_seconds, AiohttpTransport(limits=limits))
    raise SystemExit(f"unknown client kind {kind!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", required=True, choices=["aiohttp", "httpx", "httpx-aiohttp"])
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="stop taking new requests after this")
    args = parser.parse_args()
    raw = json.loads(args.requests.read_text())
    requests = [(r["url"], r["body"].encode(), r["headers"]) for r in raw]
    result = asyncio.run(run(args.kind, requests, args.concurrency, args.max_seconds))
    result["kind"] = args.kind
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
