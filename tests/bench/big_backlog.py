"""A 10,000,000-event backlog (opt-in: `make bench-big`): is claim() still within 2x of its time
on a one-batch outbox, does a `pgwebhooks run` process with its default flags drain it at a flat
rate, and does its memory stay bounded?

The backlog arrives the way users' data does: bulk INSERTs captured by the trigger and not fanned
out in advance; the runner fans it out as it drains. Draining all of it at a few thousand a second
would take the better part of an hour, so the runner drains for a fixed window and the rate is
compared between the window's first and last slices (the receiver counts what arrives).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import psycopg
from backlog import claim_seconds
from common import PROCS, BenchError, Env, create_orders, create_webhook, proc_status_kib
from delivery import bulk_backlog
from report import Result, info, ratio, threshold

CHUNK = 250_000  # rows per captured INSERT ... SELECT while building the backlog
SLICES = 6  # the drain window is cut into this many slices for the flatness ratio


def _build(conn: psycopg.Connection[Any], events: int) -> float:
    """Capture `events` rows in bulk INSERTs, as an application's batch jobs would write them."""
    started = time.perf_counter()
    written = 0
    while written < events:
        rows = min(CHUNK, events - written)
        conn.execute("INSERT INTO orders (customer_id, amount, status)"
                     " SELECT g %% 10000 + 1, (g %% 100000) / 100.0, 'paid'"
                     " FROM generate_series(%s::bigint, %s::bigint) g", (written + 1, written + rows))
        written += rows
    conn.execute("ANALYZE")  # as autovacuum would have by the time a runner works through it
    return time.perf_counter() - started


def _drain_window(env: Env, dsn: str, receiver: Any, seconds: float) -> tuple[list[float], int | None, int]:
    """Run the runner with its default flags for `seconds`; the receiver's count per slice, the
    runner's peak RSS (VmHWM, KiB) and its largest sampled VmRSS."""
    proc = env.start_runner(dsn, "big-backlog")
    rss_max = 0
    try:
        deadline = time.monotonic() + 120  # bounded wait for the first delivery (start-up, first claims)
        while receiver.stats().get("count", 0) == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = env.log("runner-big-backlog")
                raise BenchError(f"the runner delivered nothing (exit {proc.poll()}): see {log}")
            time.sleep(0.1)
        counts = [int(receiver.stats()["count"])]
        slice_seconds = seconds / SLICES
        for _ in range(SLICES):
            end = time.monotonic() + slice_seconds
            while time.monotonic() < end:
                rss_max = max(rss_max, proc_status_kib(proc.pid, "VmRSS") or 0)
                time.sleep(min(1.0, max(end - time.monotonic(), 0.0)))
            counts.append(int(receiver.stats()["count"]))
        hwm = proc_status_kib(proc.pid, "VmHWM")
    finally:
        PROCS.stop(proc)
    rates = [(b - a) / slice_seconds for a, b in itertools.pairwise(counts)]
    return rates, hwm, rss_max


def bench_big_backlog(env: Env, events: int, seconds: float) -> list[Result]:
    section = f"15 a {events:,}-event backlog (freshly captured; runner with default flags for {seconds:.0f} s)"
    dsn = env.fresh_db("big_backlog")
    receiver = env.start_receiver("big_backlog")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_orders(conn, "orders")
            create_webhook(conn, "big", receiver.url("hook"), "orders")
            bulk_backlog(conn, "orders", 200)
            conn.execute("ANALYZE")
            one_batch = claim_seconds(conn)
            conn.execute("TRUNCATE orders, webhooks.captures, webhooks.events, webhooks.deliveries")
            built = _build(conn, events)
            size = conn.execute("SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid)))"
                                " FROM pg_class c WHERE c.relnamespace = 'webhooks'::regnamespace"
                                " AND c.relkind = 'r'").fetchone()
            full = claim_seconds(conn)
        rates, hwm_kib, rss_max = _drain_window(env, dsn, receiver, seconds)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ANALYZE")
            draining = claim_seconds(conn)
    finally:
        PROCS.stop(receiver.proc)
        env.drop_db(dsn)
    first, last = rates[0], rates[-1]
    hwm_mb = (hwm_kib or 0) / 1024
    return [
        info(section, "backlog built", f"{built:.0f} s",
             f"{events / built:,.0f} captured rows/s in INSERT ... SELECT of {CHUNK:,};"
             f" outbox {size[0] if size else '?'}",
             build_seconds=built),
        ratio(section, "claim(200): whole backlog captured / one-batch outbox", full / one_batch, 2.0, False,
              f"{full * 1000:.1f} ms vs {one_batch * 1000:.1f} ms", full_ms=full * 1000, one_batch_ms=one_batch * 1000),
        ratio(section, "claim(200): mid-drain / one-batch outbox", draining / one_batch, 2.0, False,
              f"{draining * 1000:.1f} ms after the window (part fanned out, part delivered)",
              draining_ms=draining * 1000),
        ratio(section, "drain rate: last slice / first slice", last / max(first, 1e-6), 0.8, True,
              f"{last:.0f}/s vs {first:.0f}/s; slices " + ", ".join(f"{r:.0f}" for r in rates),
              rates=rates),
        threshold(section, "runner peak RSS (VmHWM)", hwm_mb, 150, "MB", False,
                  f"sampled VmRSS max {rss_max / 1024:.0f} MB", hwm_kib=hwm_kib, rss_max_kib=rss_max),
    ]
