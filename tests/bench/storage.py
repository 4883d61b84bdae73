"""What the outbox keeps per delivered one-row event, and the dead row versions it leaves.

One-row transactions at a steady pace, delivered as they come by a real `pgwebhooks run`
(default flags) to a local receiver; once all are delivered, the outbox tables are read with
pgstattuple: live bytes (rows and indexes) per event, and dead row versions per event left for
vacuum (each update of a row leaves one).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from common import PROCS, BenchError, Env, create_orders, create_webhook, paced, wait_delivered
from report import Result, info, threshold

TABLES = ("captures", "events", "deliveries", "delivery_attempts")


def _measure(conn: psycopg.Connection[Any]) -> dict[str, dict[str, int]]:
    out = {}
    for table in TABLES:
        # Partitioned since 0.8.0: the sum over its blocks.
        row = conn.execute(
            "SELECT sum(s.table_len), sum(s.tuple_len), sum(s.dead_tuple_count), sum(pg_indexes_size(t.relid))"
            " FROM unnest(coalesce((SELECT array_agg(p.relid) FROM pg_partition_tree(%s::regclass) p"
            " WHERE p.isleaf), ARRAY[%s::regclass])) t (relid), pgstattuple(t.relid) s",
            (f"webhooks.{table}", f"webhooks.{table}")).fetchone()
        assert row is not None
        out[table] = {"file": int(row[0]), "live": int(row[1]), "dead": int(row[2]), "indexes": int(row[3])}
    return out


def bench_storage(env: Env, events: int, rate: float = 1000.0) -> list[Result]:
    section = (f"14 storage ({events:,} one-row transactions at {rate:.0f}/s, delivered as they come by a runner "
               "with default flags; read with pgstattuple before any VACUUM)")
    dsn = env.fresh_db("storage")
    receiver = env.start_receiver("storage")
    runner = None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
            # Autovacuum would hide the dead versions this row counts: off for the outbox tables.
            # Partitioned since 0.8.0: each of its blocks.
            for table in TABLES:
                leaves = conn.execute(
                    "SELECT coalesce((SELECT array_agg(p.relid) FROM pg_partition_tree(%s::regclass) p"
                    " WHERE p.isleaf), ARRAY[%s::regclass])::text[]", (f"webhooks.{table}",) * 2).fetchone()
                assert leaves is not None
                for name in leaves[0]:
                    conn.execute(f"ALTER TABLE {name} SET (autovacuum_enabled = false)")
            create_orders(conn, "orders")
            hook = create_webhook(conn, "storage", receiver.url("storage"), "orders")
            runner = env.start_runner(dsn, "storage")
            paced(conn, "INSERT INTO orders (customer_id, amount, status) VALUES (42, 19.99, 'new')", events, rate)
            wait_delivered(conn, hook, events, runner, timeout=120)
            time.sleep(0.5)  # the last complete() has committed; nothing else writes
            sizes = _measure(conn)
            row_bytes = conn.execute("SELECT avg(pg_column_size(o.*))::int FROM orders o").fetchone()
    finally:
        if runner is not None:
            PROCS.stop(runner)
        PROCS.stop(receiver.proc)
        env.drop_db(dsn)
    if row_bytes is None:
        raise BenchError("no watched rows")
    live = sum(s["live"] + s["indexes"] for s in sizes.values()) / events
    dead = sum(s["dead"] for s in sizes.values()) / events
    on_disk = sum(s["file"] + s["indexes"] for s in sizes.values()) / events
    per_table = "; ".join(f"{t} {(s['live'] + s['indexes']) / events:.0f} B live ({s['indexes'] / events:.0f} "
                          f"in indexes), {s['dead'] / events:.2f} dead" for t, s in sizes.items())
    return [
        threshold(section, "outbox bytes per delivered one-row event", live, 400, "B", False,
                  f"rows and indexes, live; watched row {row_bytes[0]} B; {per_table}", sizes=sizes),
        threshold(section, "dead row versions per event", dead, 0.1, "", False,
                  "left for vacuum by updates on the hot path (fan-out, lease, completion)"),
        info(section, "on disk per event, dead versions included", f"{on_disk:.0f} B", "before VACUUM"),
    ]
