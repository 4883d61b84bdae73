"""Retention: how long webhooks.maintain() takes to remove a large amount of finished work, whether
the space it frees is used again, and what it costs claim() meanwhile.

The outbox is filled directly (one-row captures, each with one finished delivery and one attempt,
30 days old) beside a recent backlog of pending deliveries that claim() keeps leasing. maintain()
is then called until it says nothing more remains, as the runner's timer or pg_cron would.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import psycopg
from common import create_orders, median
from report import Result, info, ratio, threshold

from pgwebhooks.maintainer import PAUSE_BETWEEN_CALLS

SECTION = "12 retention"
TABLES = ("captures", "events", "deliveries", "delivery_attempts")


def fill_finished(conn: psycopg.Connection[Any], webhook: str, count: int) -> None:
    """`count` one-row captures, each delivered once 30 days ago, with its attempt: ids from the
    sequences, so they land in the current block as the capture trigger's and claim()'s do."""
    conn.execute("""
        WITH c AS (
            INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count,
                                           fanned_out, record, occurred_at)
            SELECT 'INSERT', 'orders'::regclass, 'public', 'orders', ARRAY[%(w)s::uuid], 1, 1,
                   json_build_object('id', g, 'amount', g %% 1000), now() - interval '30 days'
            FROM generate_series(1, %(n)s) g
            RETURNING id
        ), d AS (
            INSERT INTO webhooks.deliveries (capture_id, n, webhook_id, status, attempts, next_attempt_at,
                                             created_at, completed_at)
            SELECT c.id, 1, %(w)s, 'delivered', 1, now() - interval '30 days', now() - interval '30 days',
                   now() - interval '30 days'
            FROM c
            RETURNING id, webhook_id, completed_at
        )
        INSERT INTO webhooks.delivery_attempts (delivery_id, attempt, status_code, latency_ms, attempted_at,
                                                webhook_id, response_excerpt)
        SELECT d.id, 1, 200, 12, d.completed_at, d.webhook_id, 'ok' FROM d""", {"n": count, "w": webhook})


def roll_blocks(conn: psycopg.Connection[Any], every: str = "1 day") -> None:
    """What the runner's maintain() did on the day after the rows were written: it closed their
    block (073_blocks.sql), so what is written next goes to a new one."""
    conn.execute("SELECT webhooks._roll_blocks(%s::interval)", (every,))


def _fill_pending(conn: psycopg.Connection[Any], webhook: str, count: int) -> None:
    """A recent backlog of `count` due deliveries for claim() to lease during maintain()."""
    conn.execute("""
        WITH c AS (
            INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count,
                                           fanned_out, record)
            SELECT 'INSERT', 'orders'::regclass, 'public', 'orders', ARRAY[%(w)s::uuid], 1, 1,
                   json_build_object('id', g, 'amount', g %% 1000)
            FROM generate_series(1, %(n)s) g
            RETURNING id
        )
        INSERT INTO webhooks.deliveries (capture_id, n, webhook_id) SELECT c.id, 1, %(w)s FROM c""",
                 {"n": count, "w": webhook})


def _size(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT sum(pg_total_relation_size(p.relid))::bigint FROM unnest(%s::text[]) t, "
                       "pg_partition_tree(('webhooks.' || t)::regclass) p WHERE p.isleaf", (list(TABLES),)).fetchone()
    assert row is not None
    return int(row[0])


def _vacuum(conn: psycopg.Connection[Any]) -> float:
    started = time.perf_counter()
    for table in TABLES:
        conn.execute(f"VACUUM ANALYZE webhooks.{table}")
    return time.perf_counter() - started


def _claims(dsn: str, stop: threading.Event, times: list[float], pace: float) -> None:
    """claim(200) every `pace` seconds until stopped (at most 10 minutes), timing each call."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 600
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.perf_counter()
            conn.execute("SELECT count(*) FROM webhooks.claim(200)").fetchone()
            times.append((time.perf_counter() - started) * 1000)
            stop.wait(pace)


def maintain_all(conn: psycopg.Connection[Any], pause: float = 0.0) -> tuple[float, int, dict[str, int]]:
    """maintain() until nothing more remains (at most 10,000 calls, `pause` seconds apart): seconds,
    calls, rows removed."""
    removed = {"deliveries": 0, "attempts": 0, "captures": 0}
    calls = 0
    started = time.perf_counter()
    while calls < 10_000:
        calls += 1
        row = conn.execute("SELECT deliveries, attempts, captures, more FROM webhooks.maintain()").fetchone()
        assert row is not None
        for key, value in zip(removed, row[:3], strict=True):
            removed[key] += value
        if not row[3]:
            break
        time.sleep(pause)
    return time.perf_counter() - started, calls, removed


def _claim_beside(dsn: str, conn: psycopg.Connection[Any]) -> tuple[list[float], list[float], float]:
    """claim(200) timings alone for 2 s, then while maintain() removes everything paced as the
    runner calls it: (without, during, maintain's seconds)."""
    baseline: list[float] = []
    stop = threading.Event()
    alone = threading.Thread(target=_claims, args=(dsn, stop, baseline, 0.02))
    alone.start()
    time.sleep(2)
    stop.set()
    alone.join(timeout=30)
    during: list[float] = []
    stop = threading.Event()
    beside = threading.Thread(target=_claims, args=(dsn, stop, during, 0.02))
    beside.start()
    try:
        seconds, _, _ = maintain_all(conn, PAUSE_BETWEEN_CALLS)
    finally:
        stop.set()
        beside.join(timeout=30)
    return baseline, during, seconds


def bench_retention(env: Any, finished: int) -> list[Result]:
    dsn = env.fresh_db("retention")
    pending = max(finished // 10, 20_000)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_orders(conn, "orders")
            row = conn.execute("SELECT id FROM webhooks.create_webhook('kept', 'http://127.0.0.1:9/hook', "
                               "'[{\"table\": \"orders\"}]')").fetchone()
            assert row is not None
            webhook = str(row[0])
            fill_finished(conn, webhook, finished)
            roll_blocks(conn)
            _fill_pending(conn, webhook, pending)
            _vacuum(conn)
            size_full = _size(conn)
            # Alone first: the time and the space, with nothing else changing the tables.
            seconds, calls, removed = maintain_all(conn)
            size_deleted = _size(conn)
            vacuum_seconds = _vacuum(conn)
            # Index pages one VACUUM empties are recycled by the next one (btree page deletion
            # waits for every snapshot that might still visit them): autovacuum's next pass.
            vacuum_seconds += _vacuum(conn)
            size_vacuumed = _size(conn)
            # The same again, a block of its own (written the day before, as above), while the
            # pending backlog sits in the block before it.
            roll_blocks(conn, "0")
            fill_finished(conn, webhook, finished)
            roll_blocks(conn)
            size_refilled = _size(conn)
            # Then the refilled rows again, with claim() leasing the pending backlog beside it.
            baseline, during, seconds_beside = _claim_beside(dsn, conn)
    finally:
        env.drop_db(dsn)

    mib = 1024 * 1024
    rows_removed = sum(removed.values())
    p99 = statistics.quantiles(during, n=100)[98] if len(during) >= 100 else max(during, default=0.0)
    claim_ratio = median(during) / median(baseline) if baseline and during else 0.0
    return [
        threshold(SECTION, f"maintain(): {finished:,} finished deliveries removed", seconds, 1.0, "s", False,
                  f"{calls} calls of 0.5 s budget; {removed['deliveries']:,} deliveries, {removed['attempts']:,} "
                  f"attempts, {removed['captures']:,} captures ({rows_removed / seconds:,.0f} rows/s); "
                  f"whole blocks emptied (TRUNCATE, 073_blocks.sql); {seconds_beside:.1f} s again beside claim(), "
                  f"paced as the runner calls it "
                  f"({PAUSE_BETWEEN_CALLS} s between calls)",
                  seconds=seconds, calls=calls, removed=removed, seconds_beside_claims=seconds_beside),
        info(SECTION, "VACUUM after it (what autovacuum then does)", f"{vacuum_seconds:.1f} s",
             "two plain VACUUM ANALYZE passes over captures, events, deliveries, attempts (the second recycles "
             "the index pages the first emptied; after one, the refill grew the indexes instead)",
             seconds=vacuum_seconds),
        ratio(SECTION, "outbox size after refilling the same amount / before", size_refilled / size_full, 1.1, False,
              f"{size_full / mib:.0f} MiB before, {size_deleted / mib:.0f} MiB after maintain, "
              f"{size_vacuumed / mib:.0f} MiB after two VACUUMs, {size_refilled / mib:.0f} MiB after refilling "
              f"{finished:,}", before=size_full, deleted=size_deleted, vacuumed=size_vacuumed,
              refilled=size_refilled),
        ratio(SECTION, "claim(200) during the runner's maintain() / without (median)", claim_ratio, 2.0, False,
              f"{median(baseline):.1f} ms without ({len(baseline)} calls), {median(during):.1f} ms during "
              f"({len(during)} calls, p99 {p99:.1f} ms, max {max(during, default=0.0):.1f} ms)",
              baseline_ms=baseline, during_ms=during),
    ]
