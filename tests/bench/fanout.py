"""A bulk write for one webhook beside another webhook's one-row changes.

Captured changes become deliveries inside claim(), a bounded number per call. The question is how
long a one-row change for webhook B, committed just after a `rows`-row INSERT ... SELECT for
webhook A, waits: from its statement's time in the database to its arrival at B's receiver (one
machine, one clock). The runner runs with its default flags, as users run it.
"""

from __future__ import annotations

import statistics
import time

import psycopg
from common import PROCS, BenchError, Env, create_orders, create_webhook, paced, wait_delivered
from report import Result, threshold


def bench_bulk_neighbour(env: Env, rows: int, events: int = 20, rate: float = 20.0) -> list[Result]:
    section = (f"8 isolation: bulk neighbour ({rows:,}-row INSERT ... SELECT for one webhook, then {events} "
               f"one-row changes for another at {rate:.0f}/s; runner with default flags)")
    receiver = env.start_receiver("bulk-neighbour")
    dsn = env.fresh_db("bulk_neighbour")
    runner = None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_orders(conn, "bulk_orders")
            create_orders(conn, "orders")
            create_webhook(conn, "bulk", receiver.url("bulk"), "bulk_orders")
            small = create_webhook(conn, "small", receiver.url("small"), "orders")
            runner = env.start_runner(dsn, "bulk-neighbour")
            time.sleep(1.5)  # up and listening
            conn.execute("INSERT INTO bulk_orders (customer_id, amount, status)"
                         " SELECT g %% 1000, g / 100.0, 'paid' FROM generate_series(1, %s) g", (rows,))
            paced(conn, "INSERT INTO orders (customer_id, amount, status) VALUES (1, 1, 'new')", events, rate)
            wait_delivered(conn, small, events, runner, timeout=120)
            committed = dict(conn.execute(
                "SELECT webhooks._event_uid(d.capture_id, d.n)::text, extract(epoch FROM c.occurred_at)::float8"
                " FROM webhooks.deliveries d JOIN webhooks.captures c ON c.id = d.capture_id"
                " WHERE d.webhook_id = %s", (small,)).fetchall())
        arrivals = receiver.arrivals()
    finally:
        if runner is not None:
            PROCS.stop(runner)
        PROCS.stop(receiver.proc)
        env.drop_db(dsn)
    waits = sorted((times[0] - committed[uid]) * 1000 for uid, times in arrivals.items() if uid in committed)
    if len(waits) < events:
        raise BenchError(f"{len(waits)} of {events} one-row changes seen by the receiver")
    cuts = statistics.quantiles(waits, n=100, method="inclusive")
    return [threshold(section, "p99 commit-to-receipt of the other webhook's changes", cuts[98], 200, "ms", False,
                      f"p50 {cuts[49]:.0f} ms, max {waits[-1]:.0f} ms; {len(waits)} changes",
                      p50=cuts[49], p99=cuts[98], max=waits[-1])]
