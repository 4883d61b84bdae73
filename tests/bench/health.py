"""Benchmarks: capture filters and webhook_status.

* tenants: 1, 100 and 1,000 webhooks on one `orders` table, each `"where": "tenant_id = N"`. A
  one-row write (its own transaction) costs at most 1.2x what it costs with one webhook, and
  what the writer stores per write does not grow with the webhook count (equalities are routed
  by lookup in capture_routes, not evaluated one by one).
* filter_bulk: a bulk INSERT whose `where` rejects 90% of the rows costs less than unfiltered.
* status: `SELECT * FROM webhooks.webhook_status` with a large outbox kept (default 100,000
  deliveries; --status-deliveries 1000000 for the issue's full size) stays under 50 ms.

Writes are timed server-side, in a procedure committing after each row, so client round trips
do not dilute the ratio.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from common import Env, median
from psycopg.types.json import Jsonb
from report import Result, ratio

SECTION = "10 health and capture filters"

WRITE_LOOP = """
CREATE OR REPLACE PROCEDURE public.bench_writes(n int, tenants int)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        INSERT INTO public.orders (tenant_id, status, total) VALUES (1 + i % tenants, 'new', i);
        COMMIT;
    END LOOP;
END $$;
"""


def _tenants_db(env: Env, hooks: int) -> str:
    dsn = env.fresh_db(f"tenants_{hooks}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.orders (id bigserial PRIMARY KEY, tenant_id int NOT NULL,"
                     " status text NOT NULL, total int NOT NULL)")
        conn.execute(WRITE_LOOP)
        with conn.transaction():
            for tenant in range(1, hooks + 1):
                conn.execute(
                    "SELECT webhooks.create_webhook(%s, 'http://127.0.0.1:9/hook', %s)",
                    (f"tenant-{tenant}", Jsonb([{"table": "orders", "operations": ["INSERT"],
                                                 "where": f"tenant_id = {tenant}"}])))
    return dsn


def _time_writes(conn: psycopg.Connection[Any], writes: int, tenants: int) -> tuple[float, float]:
    """Microseconds per one-row transaction, and bytes the outbox grew per write, for one round."""
    before = _outbox_bytes(conn)
    started = time.perf_counter()
    conn.execute("CALL public.bench_writes(%s, %s)", (writes, tenants))
    return (time.perf_counter() - started) / writes * 1e6, (_outbox_bytes(conn) - before) / writes


def _outbox_bytes(conn: psycopg.Connection[Any]) -> float:
    row = conn.execute("SELECT (SELECT coalesce(sum(pg_column_size(c.*)), 0) FROM webhooks.captures c)"
                       " + (SELECT coalesce(sum(pg_column_size(e.*)), 0) FROM webhooks.events e)").fetchone()
    assert row is not None
    return float(row[0])


def bench_tenants(env: Env, writes: int, rounds: int) -> list[Result]:
    counts = (1, 100, 1000)
    dsns = {hooks: _tenants_db(env, hooks) for hooks in counts}
    samples: dict[int, list[tuple[float, float]]] = {hooks: [] for hooks in counts}
    conns = {hooks: psycopg.connect(dsns[hooks], autocommit=True) for hooks in counts}
    try:
        for hooks, conn in conns.items():
            # Commits are not flushed to disk before they return (as in section 1): a flush costs
            # more than the capture and varies with whatever else writes to the disk.
            conn.execute("SET synchronous_commit = off")
            conn.execute("CALL public.bench_writes(200, %s)", (hooks,))  # warm caches and plans
        # With one webhook, its tenant is 1 and every write is tenant 1's; with more, writes go to
        # every tenant in turn, so each is routed to exactly one webhook either way. Rounds are
        # interleaved (1, 100, 1000, 1, ...), so drift in the machine hits all three alike.
        for _ in range(rounds):
            for hooks, conn in conns.items():
                samples[hooks].append(_time_writes(conn, writes, hooks))
    finally:
        for conn in conns.values():
            conn.close()
    for dsn in dsns.values():
        env.drop_db(dsn)
    measured = {hooks: (median([t for t, _ in v]), median([b for _, b in v])) for hooks, v in samples.items()}
    base_us, base_bytes = measured[1]
    results = []
    for hooks in (100, 1000):
        us, per_write = measured[hooks]
        results.append(ratio(SECTION, f"one-row write, {hooks} tenant webhooks / 1", us / base_us, 1.2, False,
                             f"{us:.0f} us vs {base_us:.0f} us per write transaction; outbox {per_write:.0f} B"
                             f" vs {base_bytes:.0f} B per write", us=us, base_us=base_us))
    us, per_write = measured[1000]
    results.append(ratio(SECTION, "outbox bytes per write, 1000 tenant webhooks / 1", per_write / base_bytes,
                         1.05, False, f"{per_write:.0f} B vs {base_bytes:.0f} B"))
    return results


def bench_filter_bulk(env: Env, rows: int, rounds: int) -> list[Result]:
    results: dict[str, float] = {}
    for label, where in (("unfiltered", None), ("filtered", "total % 10 = 0")):
        dsn = env.fresh_db(f"filter_{label}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.orders (id bigserial PRIMARY KEY, tenant_id int NOT NULL,"
                         " status text NOT NULL, total int NOT NULL)")
            entry: dict[str, Any] = {"table": "orders", "operations": ["INSERT"]}
            if where:
                entry["where"] = where
            conn.execute("SELECT webhooks.create_webhook('bulk', 'http://127.0.0.1:9/hook', %s)", (Jsonb([entry]),))
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                conn.execute("INSERT INTO public.orders (tenant_id, status, total)"
                             " SELECT 1, 'new', g FROM generate_series(1, %s) g", (rows,))
                times.append((time.perf_counter() - started) * 1000)
            results[label] = median(times)
        env.drop_db(dsn)
    return [ratio(SECTION, f"bulk INSERT of {rows} rows, where rejecting 90% / unfiltered",
                  results["filtered"] / results["unfiltered"], 1.0, False,
                  f"{results['filtered']:.0f} ms vs {results['unfiltered']:.0f} ms")]


def bench_status(env: Env, deliveries: int, webhooks: int = 20) -> list[Result]:
    dsn = env.fresh_db("status")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.orders (id bigserial PRIMARY KEY)")
        for i in range(webhooks):
            conn.execute("SELECT webhooks.create_webhook(%s, 'http://127.0.0.1:9/hook', '[{\"table\": \"orders\"}]')",
                         (f"hook-{i}",))
        # A kept outbox: deliveries over the last week, 1% still pending, one attempt each.
        conn.execute("""
            INSERT INTO webhooks.deliveries (capture_id, n, webhook_id, status, attempts, next_attempt_at,
                                             created_at, completed_at)
            SELECT g, 1, h.ids[1 + g %% %(webhooks)s],
                   CASE WHEN g %% 100 = 0 THEN 'pending' ELSE 'delivered' END,
                   CASE WHEN g %% 100 = 0 THEN 0 ELSE 1 END,
                   now() - make_interval(secs => (%(n)s - g) * 604800.0 / %(n)s),
                   now() - make_interval(secs => (%(n)s - g) * 604800.0 / %(n)s),
                   CASE WHEN g %% 100 <> 0
                        THEN now() - make_interval(secs => (%(n)s - g) * 604800.0 / %(n)s) END
            FROM generate_series(1, %(n)s) g, (SELECT array_agg(id ORDER BY id) AS ids FROM webhooks.webhooks) h
        """.replace("%(webhooks)s", str(webhooks)), {"n": deliveries})
        conn.execute("""
            INSERT INTO webhooks.delivery_attempts (delivery_id, attempt, status_code, latency_ms, attempted_at,
                                                    webhook_id)
            SELECT d.id, 1, CASE WHEN d.id % 7 = 0 THEN 500 ELSE 200 END, (d.id % 300)::int, d.created_at,
                   d.webhook_id
            FROM webhooks.deliveries d WHERE d.status = 'delivered'
        """)
        conn.execute("VACUUM ANALYZE webhooks.deliveries")
        conn.execute("VACUUM ANALYZE webhooks.delivery_attempts")
        times = []
        for _ in range(7):
            started = time.perf_counter()
            rows = conn.execute("SELECT * FROM webhooks.webhook_status").fetchall()
            times.append((time.perf_counter() - started) * 1000)
        assert len(rows) == webhooks
    env.drop_db(dsn)
    ms = median(times)
    return [Result(SECTION, f"SELECT * FROM webhook_status, {deliveries} deliveries kept", "< 50 ms", f"{ms:.1f} ms",
                   ms, ms < 50, f"{webhooks} webhooks, 1% pending, one attempt per delivery",
                   {"ms": ms, "deliveries": deliveries})]


def bench_health(env: Env, writes: int, rows: int, status_deliveries: int, rounds: int) -> list[Result]:
    return (bench_tenants(env, writes, rounds) + bench_filter_bulk(env, rows, rounds)
            + bench_status(env, status_deliveries))
