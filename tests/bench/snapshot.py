"""claim() beside a snapshot another session holds open (idle in transaction).

A held snapshot keeps every row version a drain leaves behind: vacuum cannot remove them, and
claim's index scans step over their entries. Each case drains the same freshly captured backlog
through claim(200) and complete() on a fresh database, once with nothing held and once with a
REPEATABLE READ transaction left open from before the backlog was written, and times claim()
during the drain and on the drained outbox. No runner and no HTTP: the cost is the database's.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from common import Env, create_orders, create_webhook, median
from delivery import bulk_backlog
from psycopg.types.json import Jsonb
from report import Result, ratio

UNUSED_URL = "http://127.0.0.1:9/never-contacted"


def _claim(conn: psycopg.Connection[Any]) -> tuple[float, list[tuple[int, int]]]:
    started = time.perf_counter()
    rows = conn.execute("SELECT delivery_id, attempt FROM webhooks.claim(200)").fetchall()
    return time.perf_counter() - started, [(r[0], r[1]) for r in rows]


def _drain(dsn: str, deliveries: int, hold: bool) -> tuple[float, float]:
    """Median claim(200) seconds during the drain and once drained."""
    holder = psycopg.connect(dsn)  # not autocommit: its transaction stays open
    try:
        if hold:
            holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT 1").fetchone()  # the snapshot is taken here and kept
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_orders(conn, "orders")
            create_webhook(conn, "drained", UNUSED_URL, "orders")
            bulk_backlog(conn, "orders", deliveries)
            conn.execute("ANALYZE")
            during: list[float] = []
            for _ in range(deliveries // 200 + 10):  # bounded: every call leases up to 200
                seconds, leased = _claim(conn)
                if not leased:
                    break
                during.append(seconds)
                conn.execute("SELECT webhooks.complete(%s)", (Jsonb([
                    {"delivery_id": d, "attempt": a, "status_code": 200, "latency_ms": 1} for d, a in leased]),))
            after = [_claim(conn)[0] for _ in range(15)]
    finally:
        holder.rollback()
        holder.close()
    return median(during), median(after)


def bench_snapshot(env: Env, deliveries: int) -> list[Result]:
    section = (f"13 a snapshot held open (idle in transaction) beside a {deliveries:,}-delivery drain "
               "through claim(200) and complete(); no runner")
    results = {}
    for hold in (False, True):
        dsn = env.fresh_db("snapshot")
        try:
            results[hold] = _drain(dsn, deliveries, hold)
        finally:
            env.drop_db(dsn)
    (free_during, free_after), (held_during, held_after) = results[False], results[True]
    return [
        ratio(section, "claim during the drain: snapshot held / not", held_during / free_during, 2.0, False,
              f"median {held_during * 1000:.1f} ms vs {free_during * 1000:.1f} ms per claim(200)"),
        ratio(section, "claim once drained: snapshot held / not", held_after / free_after, 2.0, False,
              f"median {held_after * 1000:.1f} ms vs {free_after * 1000:.1f} ms (dead entries kept by the snapshot)"),
    ]
