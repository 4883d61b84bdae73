"""Benchmarks: the dashboard's pages and the runner's /metrics.

* overview: `GET /` with 1,000 webhooks and 1,000,000 kept deliveries (--dashboard-deliveries;
  quick 100,000) under 300 ms; timed over HTTP on loopback, so the figure includes the round trip
  and is an upper bound of the server's time.
* log: a webhook's page (settings, health and the first page of its delivery log) under 100 ms,
  unfiltered and filtered (status, event, since), for a webhook holding half of all deliveries.
* metrics: the runner's CPU while /metrics is scraped once a second (Prometheus scrapes every 15 s
  by default), against the same drain without metrics: under 1.02x. What one scrape costs is
  measured over 100 scrapes of the runner that drained; whole drains are shown beside it.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request

import psycopg
from aiohttp import ClientSession, web
from common import PROCS, BenchError, Env, cpu_seconds, create_orders, create_webhook, median
from delivery import RUNNER_FAST_OPTIONS, delivered, single_row_backlog
from psycopg.types.json import Jsonb
from report import Result, info, ratio, threshold

from pgwebhooks.dashboard.app import Settings, create_app
from pgwebhooks.localpg import free_port

SECTION = "11 dashboard and metrics"


def _fill(dsn: str, webhooks: int, deliveries: int) -> str:
    """`webhooks` webhooks and a kept log of `deliveries`, half of them the first webhook's; the
    last six hours of attempts feed the overview's charts. Returns the busy webhook's id."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_orders(conn, "orders")
        with conn.transaction():
            for i in range(webhooks):
                conn.execute("SELECT webhooks.create_webhook(%s, 'http://127.0.0.1:9/hook', %s)",
                             (f"hook-{i:04d}", Jsonb([{"table": "orders"}] if i == 0 else [{"event_type": "b.*"}])))
        conn.execute("""
            INSERT INTO webhooks.captures (id, operation, relid, schema_name, table_name, webhook_ids, row_count,
                                           fanned_out, record, occurred_at)
            SELECT g, 'INSERT', 'orders'::regclass, 'public', 'orders', '{}', 1, 1,
                   json_build_object('id', g, 'amount', g %% 1000), now() - make_interval(secs => (%(n)s - g) * 0.6)
            FROM generate_series(1, %(n)s) g""", {"n": deliveries})
        conn.execute("""
            INSERT INTO webhooks.deliveries (capture_id, n, webhook_id, status, attempts, next_attempt_at,
                                             created_at, completed_at)
            SELECT g, 1, CASE WHEN g %% 2 = 0 THEN h.ids[1] ELSE h.ids[1 + g %% array_length(h.ids, 1)] END,
                   CASE WHEN g %% 100 = 0 THEN 'pending' WHEN g %% 7 = 0 THEN 'failed' ELSE 'delivered' END,
                   CASE WHEN g %% 100 = 0 THEN 0 ELSE 1 END, c.occurred_at, c.occurred_at,
                   CASE WHEN g %% 100 <> 0 THEN c.occurred_at END
            FROM generate_series(1, %(n)s) g
            JOIN webhooks.captures c ON c.id = g,
            (SELECT array_agg(id ORDER BY name) AS ids FROM webhooks.webhooks) h""", {"n": deliveries})
        conn.execute("""
            INSERT INTO webhooks.delivery_attempts (delivery_id, attempt, status_code, latency_ms, attempted_at,
                                                    webhook_id, response_excerpt)
            SELECT d.id, 1, CASE WHEN d.status = 'failed' THEN 500 ELSE 200 END, (d.id % 300)::int, d.created_at,
                   d.webhook_id, CASE WHEN d.status = 'failed' THEN 'upstream unavailable' ELSE 'ok' END
            FROM webhooks.deliveries d WHERE d.status <> 'pending'""")
        for table in ("captures", "deliveries", "delivery_attempts"):
            conn.execute(f"VACUUM ANALYZE webhooks.{table}")
        row = conn.execute("SELECT id FROM webhooks.webhooks ORDER BY name LIMIT 1").fetchone()
    assert row is not None
    return str(row[0])


async def _time_pages(dsn: str, pages: dict[str, str], repeats: int) -> dict[str, float]:
    port = free_port()
    settings = Settings(host="127.0.0.1", port=port, require_tokens=False, csrf_key=os.urandom(32))
    runner = web.AppRunner(create_app(dsn, settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    timings: dict[str, float] = {}
    try:
        async with ClientSession() as http:
            for label, path in pages.items():
                times = []
                for i in range(repeats + 1):
                    started = time.perf_counter()
                    async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                        await resp.read()
                        if resp.status != 200:
                            raise BenchError(f"GET {path}: HTTP {resp.status}")
                    if i:  # the first warms the pool and the plans
                        times.append((time.perf_counter() - started) * 1000)
                timings[label] = median(times)
    finally:
        await runner.cleanup()
    return timings


def bench_pages(env: Env, deliveries: int, webhooks: int = 1000) -> list[Result]:
    dsn = env.fresh_db("dashboard")
    try:
        started = time.monotonic()
        busy = _fill(dsn, webhooks, deliveries)
        filled = time.monotonic() - started
        pages = {
            "overview": "/",
            "log": f"/webhooks/{busy}",
            "log filtered": f"/webhooks/{busy}?status=failed&event=INSERT&since=2000-01-01",
        }
        ms = asyncio.run(_time_pages(dsn, pages, repeats=7))
    finally:
        env.drop_db(dsn)
    detail = f"{webhooks} webhooks, {deliveries:,} deliveries kept ({filled:.0f}s to fill); median of 7, over HTTP"
    return [
        threshold(SECTION, "overview page (GET /)", ms["overview"], 300, "ms", False, detail),
        threshold(SECTION, "webhook page, first page of its log", ms["log"], 100, "ms", False,
                  f"the webhook holding {deliveries // 2:,} deliveries"),
        threshold(SECTION, "webhook page, log filtered by status, event, since", ms["log filtered"], 100, "ms",
                  False, "status=failed&event=INSERT&since=2000-01-01"),
    ]


SCRAPES = 100


def _drain_cpu(env: Env, deliveries: int, metrics: bool) -> tuple[float, float, float]:
    """CPU seconds of one runner draining `deliveries`, the seconds it took, and (with metrics)
    the CPU seconds of one scrape, measured over 100 scrapes once the drain is done."""
    label = "metrics" if metrics else "plain"
    dsn = env.fresh_db(f"metrics_{label}")
    receiver = env.start_receiver(f"metrics-{label}")
    port = free_port()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_orders(conn, "orders")
            create_webhook(conn, "metrics", receiver.url("hook"), "orders")
            single_row_backlog(conn, "orders", deliveries)
            options = [*RUNNER_FAST_OPTIONS, "--progress-interval", "0"]
            if metrics:
                options += ["--metrics-port", str(port)]
            started = time.monotonic()
            proc = env.start_runner(dsn, f"metrics-{label}", *options)
            try:
                scraped, last_scrape = 0, 0.0
                deadline = time.monotonic() + max(120.0, deliveries / 100)
                # Counted from the first delivery: the process's start-up (imports, connections,
                # the metrics server's own start) is not what scraping costs, and its ~0.3 s
                # varied more between runs than the scrapes cost in all.
                while delivered(conn) == 0:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise BenchError(f"drain with metrics={metrics} did not start")
                    time.sleep(0.01)
                cpu_at_start = cpu_seconds(proc.pid)
                while delivered(conn) < deliveries:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise BenchError(f"drain with metrics={metrics} did not finish")
                    if metrics and time.monotonic() - last_scrape >= 1.0:
                        last_scrape = time.monotonic()
                        try:
                            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                                resp.read()
                            scraped += 1
                        except OSError:
                            pass  # not listening yet
                    time.sleep(0.1)
                cpu = cpu_seconds(proc.pid) - cpu_at_start
                seconds = time.monotonic() - started
                per_scrape = 0.0
                if metrics:  # the same runner, holding the drained webhook's counters
                    before = cpu_seconds(proc.pid)
                    for _ in range(SCRAPES):
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                            resp.read()
                    per_scrape = (cpu_seconds(proc.pid) - before) / SCRAPES
            finally:
                PROCS.stop(proc)
            if metrics and scraped == 0:
                raise BenchError("/metrics was never scraped")
    finally:
        PROCS.stop(receiver.proc)
        env.drop_db(dsn)
    return cpu, seconds, per_scrape


def bench_metrics_cpu(env: Env, deliveries: int, rounds: int) -> list[Result]:
    """The runner's CPU with /metrics scraped once a second, against the same drain without: what
    one scrape costs (measured over 100) times the scrapes a drain gets, over the drain's CPU.
    The whole drains are shown too; they vary by ~5% from run to run, more than the scrapes
    could cost, so their ratio alone judged noise (0.87x to 1.08x in runs a day apart)."""
    plain, scraped = [], []
    for _ in range(rounds):
        plain.append(_drain_cpu(env, deliveries, metrics=False))
        scraped.append(_drain_cpu(env, deliveries, metrics=True))
    cpu_plain, cpu_scraped = median([c for c, _, _ in plain]), median([c for c, _, _ in scraped])
    drain_seconds = median([s for _, s, _ in plain])
    per_scrape = median([p for _, _, p in scraped])
    overhead = (cpu_plain + per_scrape * drain_seconds) / cpu_plain
    detail = (f"{1000 * per_scrape:.2f} ms of runner CPU a scrape (100 scrapes), once a second over a "
              f"{drain_seconds:.1f} s drain of {deliveries:,} deliveries using {cpu_plain:.2f} s of CPU; whole drains "
              f"with / without scraping {cpu_scraped:.2f} s / {cpu_plain:.2f} s (median of {rounds})")
    return [ratio(SECTION, "runner CPU with /metrics scraped / without", overhead, 1.02, False,
                  detail, cpu_plain=cpu_plain, cpu_scraped=cpu_scraped, per_scrape=per_scrape),
            info(SECTION, "drain time with / without metrics",
                 f"{median([s for _, s, _ in scraped]):.1f} s / {drain_seconds:.1f} s")]


def bench_dashboard(env: Env, deliveries: int, drain: int, rounds: int) -> list[Result]:
    return bench_pages(env, deliveries) + bench_metrics_cpu(env, drain, rounds)
