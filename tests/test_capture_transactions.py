"""Capture is transactional: a rolled-back transaction or savepoint leaves nothing in the outbox,
and the runners are woken once per committed transaction that captured something."""

from __future__ import annotations

import psycopg
import pytest
from outbox_helpers import Boom, collect_notifies, create_webhook, drain, scalar, stored_row_images

# --- transactions -------------------------------------------------------------------------------


def test_rolled_back_transaction_leaves_nothing(conn, table) -> None:
    create_webhook(conn)
    with pytest.raises(Boom), conn.transaction():
        conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 1000) g")
        # Inside the transaction the outbox does fill...
        assert stored_row_images(conn) == 1000
        raise Boom
    # ...and the rollback takes it away with the rows.
    assert scalar(conn, "SELECT count(*) FROM bulk") == 0
    assert stored_row_images(conn) == 0
    assert drain(conn) == 0


def test_explicit_rollback_leaves_nothing(db, conn, table) -> None:
    create_webhook(conn)
    with psycopg.connect(db, autocommit=False) as tx:
        tx.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 1000) g")
        tx.execute("UPDATE bulk SET v = v + 1 WHERE id <= 10")
        tx.execute("DELETE FROM bulk WHERE id <= 5")
        tx.rollback()
        tx.execute("INSERT INTO bulk VALUES (1, 1)")
        tx.commit()
    assert drain(conn) == 1  # only the committed insert
    assert scalar(conn, "SELECT (record->>'id')::int FROM claimed") == 1


def test_rolled_back_savepoint_keeps_only_the_outer_changes(conn, table) -> None:
    create_webhook(conn)
    with conn.transaction():
        conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 10) g")
        with pytest.raises(Boom), conn.transaction():
            conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(11, 20) g")
            raise Boom
        conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(21, 25) g")
    assert drain(conn) == 15
    ids = [r[0] for r in conn.execute("SELECT (record->>'id')::int FROM claimed ORDER BY 1")]
    assert ids == [*range(1, 11), *range(21, 26)]


# --- notifications ------------------------------------------------------------------------------


def test_one_notification_per_transaction(conn, table, listener) -> None:
    create_webhook(conn)
    assert collect_notifies(listener, 0.3) == []  # nothing pending from setup

    with conn.transaction():
        for batch in range(10):
            first = batch * 100 + 1
            conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(%s::int, %s::int) g", (first, first + 99))
        conn.execute("UPDATE bulk SET v = 0 WHERE id <= 10")
        conn.execute("INSERT INTO bulk VALUES (1001, 1)")  # a single-row statement as well

    notes = collect_notifies(listener)
    assert len(notes) == 1, notes
    assert notes[0].channel == "webhooks"
    assert drain(conn) == 1011


def test_notifications_only_for_committed_transactions(conn, table, listener) -> None:
    create_webhook(conn)
    with pytest.raises(Boom), conn.transaction():
        conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 100) g")
        raise Boom
    assert collect_notifies(listener, 0.5) == []

    conn.execute("INSERT INTO bulk VALUES (1, 1)")  # autocommit: a transaction each
    conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(2, 50) g")
    notes = collect_notifies(listener)
    assert [n.channel for n in notes] == ["webhooks", "webhooks"]


def test_no_notification_without_capture(conn, table, listener) -> None:
    create_webhook(conn, operations=["DELETE"])
    conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 100) g")
    conn.execute("DELETE FROM bulk WHERE id < 0")  # a subscribed operation that changes nothing
    assert collect_notifies(listener, 0.5) == []
    assert drain(conn) == 0
