"""A captured UPDATE pairs each row's old and new image by primary key (or row by row without one)."""

from __future__ import annotations

from outbox_helpers import create_webhook, drain, scalar


def test_bulk_update_pairs_old_and_new_by_primary_key(conn, table) -> None:
    n = 10_000
    # v is a scrambled function of id, so that pairing rows by position rather than key shows.
    conn.execute(f"INSERT INTO bulk SELECT g, (g * 7919) % 10007 FROM generate_series(1, {n}) g")
    create_webhook(conn, operations=["UPDATE"])
    conn.execute("UPDATE bulk SET v = v + 1")

    assert drain(conn) == n
    assert conn.execute(
        "SELECT count(*), count(DISTINCT (record->>'id')::int),"
        " count(*) FILTER (WHERE old_record = 'null'),"
        " count(*) FILTER (WHERE operation = 'UPDATE' AND (old_record->>'id') = (record->>'id')"
        "                  AND (old_record->>'v')::int + 1 = (record->>'v')::int"
        "                  AND (old_record->>'v')::int = ((record->>'id')::int * 7919) % 10007)"
        " FROM claimed"
    ).fetchone() == (n, n, 0, n)

    # And a sample looked at one by one, as a receiver would.
    sample = conn.execute(
        "SELECT record, old_record FROM claimed ORDER BY (record->>'id')::int LIMIT 200"
    ).fetchall()
    assert len(sample) == 200
    for i, (new, old) in enumerate(sample, start=1):
        assert new["id"] == old["id"] == i
        assert old["v"] + 1 == new["v"]
        assert old["v"] == (i * 7919) % 10007


def test_update_with_composite_key_pairs_correctly(conn) -> None:
    conn.execute("CREATE TABLE multi (tenant int, id int, v int, PRIMARY KEY (tenant, id))")
    conn.execute("INSERT INTO multi SELECT t, i, t * 1000 + i FROM generate_series(1, 3) t, generate_series(1, 100) i")
    create_webhook(conn, operations=["UPDATE"], table="multi")
    conn.execute("UPDATE multi SET v = -v")
    assert drain(conn) == 300
    assert scalar(
        conn,
        "SELECT count(*) FROM claimed WHERE (old_record->>'tenant') = (record->>'tenant')"
        " AND (old_record->>'id') = (record->>'id') AND (old_record->>'v')::int = -(record->>'v')::int"
        " AND (record->>'v')::int = -((record->>'tenant')::int * 1000 + (record->>'id')::int)",
    ) == 300


def test_update_without_primary_key_is_captured_row_by_row(conn) -> None:
    conn.execute("CREATE TABLE nokey (id int, v int)")
    conn.execute("INSERT INTO nokey SELECT g, g FROM generate_series(1, 500) g")
    create_webhook(conn, operations=["UPDATE"], table="nokey")
    conn.execute("UPDATE nokey SET v = v + 1")
    assert drain(conn) == 500
    assert scalar(
        conn,
        "SELECT count(*) FROM claimed WHERE (old_record->>'id') = (record->>'id')"
        " AND (old_record->>'v')::int + 1 = (record->>'v')::int",
    ) == 500


def test_update_changing_primary_key_is_still_captured(conn, table) -> None:
    conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 100) g")
    create_webhook(conn, operations=["UPDATE"])
    conn.execute("UPDATE bulk SET id = id + 1000")
    assert drain(conn) == 100
    assert conn.execute(
        "SELECT min((record->>'id')::int), max((record->>'id')::int), count(DISTINCT record) FROM claimed"
    ).fetchone() == (1001, 1100, 100)
