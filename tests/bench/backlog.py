"""A large backlog: claim()'s cost against the size of the outbox, and whether a real
`pgwebhooks run` process drains the last tenth as fast as the first."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from common import PROCS, Env, create_orders, create_webhook, median
from delivery import RUNNER_FAST_OPTIONS, bulk_backlog, drain, runner_note
from report import Result, ratio, threshold


def claim_seconds(conn: psycopg.Connection[Any], repeats: int = 15) -> float:
    """Median time of claim(200) in a transaction that is rolled back (the outbox stays as it is)."""
    times = []
    for _ in range(repeats):
        with conn.transaction(force_rollback=True):
            started = time.perf_counter()
            conn.execute("SELECT count(*) FROM webhooks.claim(200)").fetchone()
            times.append(time.perf_counter() - started)
    return median(times)


def bench_backlog(env: Env, backlog: int) -> list[Result]:
    section = f"6 backlog ({backlog:,} pending deliveries; runner {' '.join(RUNNER_FAST_OPTIONS)})"
    dsn = env.fresh_db("backlog")
    receiver = env.start_receiver("backlog")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_orders(conn, "orders")
            create_webhook(conn, "backlog", receiver.url("hook"), "orders")
            # Baseline: an outbox holding one batch (an empty one would have nothing to claim or sign).
            bulk_backlog(conn, "orders", 200)
            conn.execute("ANALYZE")
            small = claim_seconds(conn)
            conn.execute("TRUNCATE orders, webhooks.captures, webhooks.events, webhooks.deliveries")
            built = time.perf_counter()
            bulk_backlog(conn, "orders", backlog)
            conn.execute("ANALYZE")  # as autovacuum would have by the time such a backlog is drained
            built = time.perf_counter() - built
            full = claim_seconds(conn)
        d = drain(env, dsn, "backlog", backlog, [RUNNER_FAST_OPTIONS], receiver, poll=0.25)
        with psycopg.connect(dsn, autocommit=True) as conn:
            empty = claim_seconds(conn)
            marks = conn.execute(
                "SELECT extract(epoch FROM t)::float8 FROM unnest((SELECT percentile_disc(ARRAY[0, 0.1, 0.9, 1])"
                " WITHIN GROUP (ORDER BY completed_at) FROM webhooks.deliveries)) t").fetchall()
    finally:
        PROCS.stop(receiver.proc)
        env.drop_db(dsn)
    t0, t10, t90, t100 = (float(m[0]) for m in marks)
    tenth = backlog / 10
    first_rate, last_rate = tenth / max(t10 - t0, 1e-6), tenth / max(t100 - t90, 1e-6)
    hwm_mb = (d.hwm_kib[0] or 0) / 1024
    return [
        ratio(section, "claim(200): full backlog / one-batch outbox", full / small, 2.0, False,
              f"{full * 1000:.1f} ms vs {small * 1000:.1f} ms; {empty * 1000:.1f} ms once drained",
              full_ms=full * 1000, one_batch_ms=small * 1000, drained_ms=empty * 1000, build_seconds=built),
        ratio(section, "drain rate: last 10% / first 10%", last_rate / first_rate, 0.8, True,
              f"{last_rate:.0f}/s vs {first_rate:.0f}/s; whole drain {d.rate:.0f}/s in {d.seconds:.1f}s "
              f"{runner_note(d)}".rstrip(),
              first_rate=first_rate, last_rate=last_rate, rate=d.rate, seconds=d.seconds),
        threshold(section, "runner peak RSS (VmHWM)", hwm_mb, 150, "MB", False,
                  f"sampled VmRSS max {(d.rss_max_kib or 0) / 1024:.0f} MB", hwm_kib=d.hwm_kib[0],
                  rss_max_kib=d.rss_max_kib),
    ]
