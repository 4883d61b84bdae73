"""claim() and next_due_in() beside many webhooks without work (a webhook per tenant, each
subscribed to its own event type, each delivered to once and then quiet). Before 0.5.2 both
probed every enabled webhook at every call; webhooks at rest are now left out
(sql/functions/044_resting_webhooks.sql).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from common import Env, create_orders, create_webhook, median
from delivery import bulk_backlog
from psycopg.types.json import Jsonb
from report import Result, ratio


def _timed_ms(conn: psycopg.Connection[Any], sql: str, repeats: int) -> tuple[float, float]:
    """(fastest, median) in ms of `sql`, each in a transaction rolled back (the same 200 stay due)."""
    times = []
    for _ in range(repeats):
        with conn.transaction(force_rollback=True):
            started = time.perf_counter()
            conn.execute(sql).fetchall()
            times.append((time.perf_counter() - started) * 1000)
    return min(times), median(times)


def _measure(conn: psycopg.Connection[Any], repeats: int) -> dict[str, tuple[float, float]]:
    # The rest a runner's claims reach within ~0.3 s, committed (the measured calls roll back),
    # and the session's open floors raised since (they are kept per webhook not at rest).
    routes = conn.execute("SELECT to_regprocedure('webhooks._rest_routes(boolean)') IS NOT NULL").fetchone()
    for _ in range(3):
        conn.execute("SELECT webhooks._rest_webhooks(webhooks._open_floors(), true)")
        if routes and routes[0]:  # 0.6.0: event types' routes rest too (041_cursors.sql)
            conn.execute("SELECT webhooks._rest_routes(true)")
        time.sleep(0.15)
    conn.execute("VACUUM ANALYZE")
    _timed_ms(conn, "SELECT count(*) FROM webhooks.claim(200)", 3)  # warm-up
    return {"claim": _timed_ms(conn, "SELECT count(*) FROM webhooks.claim(200)", repeats),
            "next_due_in": _timed_ms(conn, "SELECT webhooks.next_due_in()", repeats)}


def _quiet_tenants(conn: psycopg.Connection[Any], count: int) -> None:
    """`count` webhooks, each on its own event type, each sent one event that was delivered."""
    # Event type names are dotted lowercase words: tenant 12 is tenant.bc.changed.
    name = "'tenant.' || translate(g::text, '0123456789', 'abcdefghij') || '.changed'"
    tenants = "FROM generate_series(1, %s) g"
    conn.execute(f"SELECT webhooks.create_event_type({name}) {tenants}", (count,))
    conn.execute(f"SELECT webhooks.create_webhook('tenant-' || g, 'http://127.0.0.1:9/tenant',"
                 f" jsonb_build_array(jsonb_build_object('event_type', {name}))) {tenants}", (count,))
    conn.execute(f"SELECT webhooks.publish({name}, '{{}}') {tenants}", (count,))
    for _ in range(count // 200 + 50):
        leased = conn.execute("SELECT delivery_id, attempt FROM webhooks.claim(1000)").fetchall()
        if not leased:
            break
        conn.execute("SELECT count(*) FROM webhooks.complete(%s)",
                     (Jsonb([{"delivery_id": d, "attempt": a, "status_code": 200} for d, a in leased]),))


def bench_resting_webhooks(env: Env, tenants: int, repeats: int = 25) -> list[Result]:
    section = (f"8 isolation: claim(200) and next_due_in() beside {tenants:,} webhooks without work "
               "(one event type each, each delivered to once; 200 due for the webhook being served)")
    alone: dict[str, tuple[float, float]] = {}
    beside: dict[str, tuple[float, float]] = {}
    for label, quiet in (("alone", 0), ("beside", tenants)):
        dsn = env.fresh_db(f"resting_{label}")
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                create_orders(conn, "orders")
                if quiet:
                    _quiet_tenants(conn, quiet)
                create_webhook(conn, "served", "http://127.0.0.1:9/hook", "orders")
                bulk_backlog(conn, "orders", 200)
                (alone if label == "alone" else beside).update(_measure(conn, repeats))
        finally:
            env.drop_db(dsn)

    def shown(t: tuple[float, float]) -> str:
        return f"{t[0]:.1f} ms (median {t[1]:.1f})"

    return [
        ratio(section, f"claim(200): beside {tenants:,} quiet webhooks / alone",
              beside["claim"][0] / alone["claim"][0], 1.3, False,
              f"{shown(beside['claim'])} vs {shown(alone['claim'])}; 0.5.1, measured apart with 10,001 "
              "webhooks: 77 ms vs 25 alone", alone=alone, beside=beside),
        ratio(section, f"next_due_in(): beside {tenants:,} quiet webhooks / alone",
              beside["next_due_in"][0] / alone["next_due_in"][0], 2.0, False,
              f"{shown(beside['next_due_in'])} vs {shown(alone['next_due_in'])}; 0.5.1, measured apart: 29 ms vs 0.3"),
    ]
