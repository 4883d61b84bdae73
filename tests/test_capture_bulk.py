"""Capture is set-based: one statement's rows are captured together, each change once, and the
payload stored once however many webhooks it goes to; a statement that changes nothing captures
nothing.

Counts are taken through the public API where possible: every captured change is drained with
webhooks.claim() into a temporary table (`claimed`) and counted there (tests/outbox_helpers.py).
"""

from __future__ import annotations

import psycopg
import pytest
from outbox_helpers import claimed_stats, create_webhook, drain, scalar, stored_row_images

BULK = 100_000


# --- set-based bulk capture ---------------------------------------------------------------------


def test_capture_triggers_are_statement_level(conn, table) -> None:
    create_webhook(conn)
    rows = conn.execute(
        "SELECT tgname, (tgtype & 1) = 1 AS row_level, tgoldtable, tgnewtable FROM pg_trigger"
        " WHERE tgrelid = 'bulk'::regclass AND NOT tgisinternal ORDER BY tgname"
    ).fetchall()
    assert [r[0] for r in rows] == ["webhooks_capture_delete", "webhooks_capture_insert", "webhooks_capture_update"]
    assert not any(r[1] for r in rows), "capture on a table with a primary key must be FOR EACH STATEMENT"
    by_name = {r[0]: r for r in rows}
    assert by_name["webhooks_capture_insert"][3] is not None
    assert by_name["webhooks_capture_delete"][2] is not None
    assert by_name["webhooks_capture_update"][2] is not None and by_name["webhooks_capture_update"][3] is not None


def test_bulk_insert_one_webhook(conn, table) -> None:
    hook = create_webhook(conn)
    conn.execute(f"INSERT INTO bulk (id, v) SELECT g, g * 2 FROM generate_series(1, {BULK}) g")
    assert stored_row_images(conn) == BULK

    assert drain(conn) == BULK
    assert claimed_stats(conn) == (BULK, BULK, BULK)
    assert conn.execute(
        "SELECT count(DISTINCT (record->>'id')::int), min((record->>'id')::int), max((record->>'id')::int),"
        " count(*) FILTER (WHERE operation <> 'INSERT' OR table_name <> 'bulk' OR schema_name <> 'public'"
        "                  OR webhook_id <> %s OR attempt <> 1 OR old_record <> 'null'"
        "                  OR (record->>'v')::int <> 2 * (record->>'id')::int)"
        " FROM claimed",
        (hook,),
    ).fetchone() == (BULK, 1, BULK, 0)
    assert drain(conn) == 0  # nothing left, nothing handed out twice


def test_bulk_insert_two_webhooks_stores_payload_once(conn, table) -> None:
    first, second = create_webhook(conn), create_webhook(conn)
    conn.execute(f"INSERT INTO bulk (id, v) SELECT g, g FROM generate_series(1, {BULK}) g")
    assert stored_row_images(conn) == BULK  # once, not once per webhook

    assert drain(conn) == 2 * BULK
    assert claimed_stats(conn) == (2 * BULK, 2 * BULK, BULK)
    per_hook = dict(conn.execute("SELECT webhook_id, count(*) FROM claimed GROUP BY 1").fetchall())
    assert per_hook == {first: BULK, second: BULK}
    # Each change goes to each webhook exactly once, with the same event id and row.
    assert scalar(
        conn,
        "SELECT count(*) FROM (SELECT event_id FROM claimed GROUP BY event_id"
        " HAVING count(*) <> 2 OR count(DISTINCT webhook_id) <> 2 OR count(DISTINCT record) <> 1) x",
    ) == 0


def test_copy_is_captured(conn, table) -> None:
    create_webhook(conn)
    n = 10_000
    with conn.cursor() as cur, cur.copy("COPY bulk (id, v) FROM STDIN") as copy:
        for i in range(1, n + 1):
            copy.write_row((i, -i))

    assert scalar(conn, "SELECT count(*) FROM bulk") == n
    assert drain(conn) == n
    assert conn.execute(
        "SELECT count(DISTINCT (record->>'id')::int), count(DISTINCT event_id),"
        " count(*) FILTER (WHERE operation <> 'INSERT' OR (record->>'v')::int <> -(record->>'id')::int)"
        " FROM claimed"
    ).fetchone() == (n, n, 0)


def test_unsubscribed_operations_and_tables_are_not_captured(conn, table) -> None:
    conn.execute("CREATE TABLE other (id int PRIMARY KEY)")
    create_webhook(conn, operations=["INSERT"])
    conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 100) g")
    conn.execute("INSERT INTO other SELECT g FROM generate_series(1, 100) g")
    conn.execute("UPDATE bulk SET v = v + 1")
    conn.execute("DELETE FROM bulk")
    assert drain(conn) == 100
    assert scalar(conn, "SELECT count(*) FROM claimed WHERE operation <> 'INSERT' OR table_name <> 'bulk'") == 0


def test_bulk_delete_captures_each_row(conn, table) -> None:
    conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 5000) g")
    create_webhook(conn, operations=["DELETE"])
    conn.execute("DELETE FROM bulk WHERE id % 2 = 0")
    assert drain(conn) == 2500
    assert conn.execute(
        "SELECT count(DISTINCT (record->>'id')::int),"
        " count(*) FILTER (WHERE operation <> 'DELETE' OR (record->>'id')::int % 2 <> 0 OR old_record <> record)"
        " FROM claimed"
    ).fetchone() == (2500, 0)


OUTBOX_TABLES = ("captures", "events", "deliveries", "held_rows")


def outbox_counts(conn: psycopg.Connection) -> dict[str, int]:
    return {t: scalar(conn, f"SELECT count(*) FROM webhooks.{t}") for t in OUTBOX_TABLES}


def notifications_before_sentinel(db: str, statements: list[str]) -> list[str]:
    """The payloads NOTIFY sent on the runner's channel while `statements` ran, each committed on
    its own. Ordered, not timed: a sentinel NOTIFY from the same session follows them, and a
    session's notifications arrive in commit order, so whatever came before it came from them."""
    with psycopg.connect(db, autocommit=True) as listener, psycopg.connect(db, autocommit=True) as writer:
        listener.execute("LISTEN webhooks")
        listener.execute("SELECT webhooks.next_due_in()")  # a waiting runner: writers notify it
        for sql in statements:
            writer.execute(sql)
        writer.execute("NOTIFY webhooks, 'sentinel'")
        seen = []
        for n in listener.notifies(timeout=30, stop_after=100):
            if n.payload == "sentinel":
                return seen
            seen.append(n.payload)
    pytest.fail(f"the sentinel notification never arrived (saw {seen!r})")


def test_empty_statements_capture_nothing(db, conn, table) -> None:
    create_webhook(conn)
    conn.execute("INSERT INTO bulk VALUES (1, 1)")
    assert drain(conn) == 1
    before = outbox_counts(conn)
    empty = ["INSERT INTO bulk SELECT g, g FROM generate_series(1, 0) g", "UPDATE bulk SET v = 0 WHERE id < 0",
             "DELETE FROM bulk WHERE id < 0"]
    # Neither a row image nor a wake-up for the runners: an empty statement costs them nothing.
    assert notifications_before_sentinel(db, empty) == []
    assert outbox_counts(conn) == before
    assert drain(conn) == 0
    # The same watch does wake the runners for a statement that changes a row (the listener works).
    assert notifications_before_sentinel(db, ["UPDATE bulk SET v = 2"]) != []
    assert outbox_counts(conn)["captures"] == before["captures"] + 1
