"""What publishing application events costs the writer: `rows` webhooks.publish() calls in one
transaction against inserting the same rows into a plain table.

Two baselines: one INSERT statement per event into a plain table (what an application writing
its own outbox row per event does; the target is judged on it), and one set-based INSERT ...
SELECT of all rows (shown for context: no per-event work at all). No runner runs; the webhook's
URL is never contacted.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from common import BenchError, Env, median
from report import Result, info, ratio

UNUSED_URL = "http://127.0.0.1:9/never-contacted"
DATA = "jsonb_build_object('order_id', g, 'amount', g * 100, 'currency', 'usd')"


def bench_publish(env: Env, rows: int, repeats: int) -> list[Result]:
    section = f"9 application events ({rows:,} publish() calls in one transaction)"
    dsn = env.fresh_db("events")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE plain_events (id bigserial PRIMARY KEY, event_type text NOT NULL,"
                     " data jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
        # The floor of any function-call API: a SECURITY DEFINER function that only inserts the row
        # and returns its id (what publish() is, minus the outbox's work).
        conn.execute("CREATE FUNCTION floor_publish(kind text, payload jsonb) RETURNS bigint"
                     " LANGUAGE plpgsql SECURITY DEFINER AS $f$ DECLARE i bigint; BEGIN"
                     " INSERT INTO public.plain_events (event_type, data) VALUES (kind, payload)"
                     " RETURNING id INTO i; RETURN i; END $f$")
        conn.execute("SELECT webhooks.create_event_type('order.completed')")
        conn.execute("SELECT webhooks.create_webhook('events', %s, '[{\"event_type\": \"order.*\"}]')", (UNUSED_URL,))
    variants = {
        "publish": f"SELECT count(webhooks.publish('order.completed', {DATA})) FROM generate_series(1, %s) g",
        "floor function": f"SELECT count(floor_publish('order.completed', {DATA})) FROM generate_series(1, %s) g",
        "plain, one INSERT per event": (
            "DO $$ BEGIN FOR g IN 1..{rows} LOOP INSERT INTO plain_events (event_type, data)"
            f" VALUES ('order.completed', {DATA}); END LOOP; END $$"),
        "plain, one INSERT ... SELECT": (
            f"INSERT INTO plain_events (event_type, data) SELECT 'order.completed', {DATA}"
            " FROM generate_series(1, %s) g"),
    }

    def reset(conn: psycopg.Connection[Any]) -> None:
        conn.execute("TRUNCATE plain_events, webhooks.captures, webhooks.deliveries RESTART IDENTITY")
        conn.execute("CHECKPOINT")

    def timed(conn: psycopg.Connection[Any], label: str) -> float:
        statement = variants[label]
        started = time.perf_counter()
        with conn.transaction():
            if "{rows}" in statement:
                conn.execute(statement.replace("{rows}", str(rows)))
            else:
                conn.execute(statement, (rows,))
        return time.perf_counter() - started  # the commit included

    def check(conn: psycopg.Connection[Any], label: str) -> None:
        row = conn.execute("SELECT (SELECT count(*) FROM plain_events), (SELECT count(*) FROM webhooks.captures"
                           " WHERE operation = 'EVENT')").fetchone()
        expected = (0, rows) if label == "publish" else (rows, 0)
        if row is None or tuple(row) != expected:
            raise BenchError(f"{label}: (plain rows, published events) = {row}, expected {expected}")

    seconds: dict[str, list[float]] = {label: [] for label in variants}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for label in variants:  # warm-up, not recorded
            reset(conn)
            timed(conn, label)
        for _ in range(repeats):
            for label in variants:
                reset(conn)
                seconds[label].append(timed(conn, label))
                check(conn, label)
        listened = _notifications(dsn, rows=1000)
    env.drop_db(dsn)
    med = {label: median(v) for label, v in seconds.items()}
    per_call_us = med["publish"] / rows * 1e6
    return [
        ratio(section, "publish() / plain INSERT per event", med["publish"] / med["plain, one INSERT per event"],
              2.0, False, f"{med['publish']:.3f}s vs {med['plain, one INSERT per event']:.3f}s "
              f"(median of {repeats}; {per_call_us:.1f} us per publish)", seconds=seconds, median_seconds=med),
        info(section, "floor: a function that only inserts / plain INSERT per event",
             f"{med['floor function'] / med['plain, one INSERT per event']:.2f}x",
             f"{med['floor function']:.3f}s: a SECURITY DEFINER PL/pgSQL function inserting the row and returning"
             " its id, called the way publish() is"),
        info(section, "publish() / plain INSERT ... SELECT",
             f"{med['publish'] / med['plain, one INSERT ... SELECT']:.2f}x",
             f"{med['publish']:.3f}s vs {med['plain, one INSERT ... SELECT']:.3f}s"),
        info(section, "NOTIFYs for 1,000 publish() calls in one transaction", str(listened),
             "identical notifications are folded into one at commit"),
    ]


def _notifications(dsn: str, rows: int) -> int:
    with psycopg.connect(dsn, autocommit=True) as listener, psycopg.connect(dsn) as writer:
        listener.execute("LISTEN webhooks")
        listener.execute("SELECT webhooks.next_due_in()")  # a waiting runner: publish() notifies only then
        writer.execute(f"SELECT count(webhooks.publish('order.completed', {DATA})) FROM generate_series(1, %s) g",
                       (rows,))
        writer.commit()
        return len(list(listener.notifies(timeout=1.0)))
