"""Fan-out is fair across captures: a bulk write for one webhook does not hold back another's events.

Captured changes become deliveries inside claim(), a bounded number per call. Oldest-first, one
200,000-row statement used every call's budget until it was all fanned out, and a one-row change
for another webhook captured just after it waited behind it (seconds, at a runner's pace). Counted
here in claim() calls, not in time: the small webhook's rows must be leased within the first calls.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def _webhook(conn: psycopg.Connection[Any], name: str, table: str) -> str:
    row = conn.execute(
        "SELECT id FROM webhooks.create_webhook(name => %s, url => %s, events => %s)",
        (name, f"https://receiver.example/{name}", Jsonb([{"table": table}])),
    ).fetchone()
    assert row is not None
    return str(row[0])


def _claim(conn: psycopg.Connection[Any], batch: int = 200) -> list[tuple[int, int, str]]:
    rows = conn.execute("SELECT delivery_id, attempt, webhook_id::text FROM webhooks.claim(%s)", (batch,)).fetchall()
    if rows:
        conn.execute(
            "SELECT webhooks.complete(%s)",
            (Jsonb([{"delivery_id": d, "attempt": a, "status_code": 200, "duration_ms": 1} for d, a, _ in rows]),),
        )
    return rows


def test_small_captures_are_not_held_back_by_a_bulk_capture(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE big (id int PRIMARY KEY)")
    conn.execute("CREATE TABLE small (id int PRIMARY KEY)")
    _webhook(conn, "bulk", "big")
    small = _webhook(conn, "neighbour", "small")
    conn.execute("INSERT INTO big SELECT g FROM generate_series(1, 20000) g")
    for i in range(20):
        conn.execute("INSERT INTO small VALUES (%s)", (i,))

    calls_until_small_leased = None
    leased_small = 0
    for call in range(1, 40):
        leased_small += sum(1 for _, _, w in _claim(conn) if w == small)
        if leased_small == 20:
            calls_until_small_leased = call
            break
    # Oldest first, the 20,000 rows took 25 calls (800 per call) before the first small row.
    assert calls_until_small_leased is not None and calls_until_small_leased <= 2, calls_until_small_leased


def test_the_bulk_capture_still_progresses_beside_a_stream_of_small_ones(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE big (id int PRIMARY KEY)")
    conn.execute("CREATE TABLE small (id int PRIMARY KEY)")
    bulk = _webhook(conn, "bulk", "big")
    _webhook(conn, "neighbour", "small")
    conn.execute("INSERT INTO big SELECT g FROM generate_series(1, 5000) g")
    leased_bulk = 0
    for round_ in range(30):
        # More one-row captures arrive before every call than a call's whole fan-out budget (800).
        conn.execute(
            f"DO $$ BEGIN FOR i IN 1..900 LOOP INSERT INTO small VALUES ({round_} * 1000 + i); END LOOP; END $$"
        )
        leased_bulk += sum(1 for _, _, w in _claim(conn) if w == bulk)
    # Starvation would lease none of them; its group's share (half the budget) leases ~100 a call.
    assert leased_bulk >= 30 * 50, leased_bulk
    pending = conn.execute(
        "SELECT count(*) FROM webhooks.deliveries WHERE webhook_id = %s", (bulk,)
    ).fetchone()
    assert pending is not None and pending[0] > 0
