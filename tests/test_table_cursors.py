"""One-row changes through cursors (migration 0023, sql/functions/041_cursors.sql): a one-row
statement on a table whose webhooks are all unfiltered goes on its table and operation's route,
and each webhook's cursor gives it the change. As writers, admins, table owners and neighbours
meet it: every change given once whatever order writers commit in; bulk statements and filtered
tables keep the fan-out; a filter added or removed never hands a filtered webhook a row its
filter refuses; unsubscribing, disabling, pausing; roles that may not read or move a route; a
table owner who may not point a capture at another route."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from helpers import claimed_while_writers_commit_out_of_order, receiver, runner_config, running
from helpers import create_webhook as create_receiving_webhook
from psycopg.types.json import Jsonb

UPDATE = "SELECT webhooks.update_webhook(id, %s) FROM webhooks.webhooks WHERE name = %s"
ROUTED = ("SELECT count(*) FILTER (WHERE route IS NOT NULL), count(*) FILTER (WHERE route IS NULL)"
          " FROM webhooks.captures")


@pytest.fixture
def items(db: str) -> Iterator[str]:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, tenant int NOT NULL, v text)")
        for name in ("a", "b"):
            conn.execute("SELECT webhooks.create_webhook(%s, %s, %s)",
                         (name, f"https://e.com/{name}", Jsonb([{"table": "items"}])))
    yield db


def claim_all(conn: psycopg.Connection[Any]) -> list[tuple[str, str, int]]:
    """(webhook name, operation, row id) of what one claim() hands out, reported delivered."""
    rows = conn.execute(
        "SELECT c.delivery_id, c.attempt, w.name, c.body::jsonb ->> 'event',"
        " coalesce(c.body::jsonb -> 'record' ->> 'id', c.body::jsonb -> 'old_record' ->> 'id')::int"
        " FROM webhooks.claim(1000) c JOIN webhooks.webhooks w ON w.id = c.webhook_id"
        " WHERE c.body::jsonb ->> 'table' = 'items'").fetchall()
    if rows:
        conn.execute("SELECT * FROM webhooks.complete(%s)", (Jsonb([
            {"delivery_id": d, "attempt": a, "status_code": 200} for d, a, _, _, _ in rows]),))
    return [(name, op, n) for _, _, name, op, n in rows]


def drain(conn: psycopg.Connection[Any], until: int, seconds: float = 15.0) -> list[tuple[str, str, int]]:
    """Claim until `until` deliveries came, or the time is up (bounded); then one more claim, so
    that anything given twice would show."""
    got: list[tuple[str, str, int]] = []
    deadline = time.monotonic() + seconds
    while len(got) < until and time.monotonic() < deadline:
        got += claim_all(conn)
        time.sleep(0.05)
    return got + claim_all(conn)


def test_one_row_changes_take_the_route_and_bulk_statements_the_fan_out(items: str) -> None:
    with psycopg.connect(items, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (1, 7, 'x')")
        conn.execute("UPDATE items SET v = 'y' WHERE id = 1")
        conn.execute("DELETE FROM items WHERE id = 1")
        conn.execute("INSERT INTO items SELECT g, 7, 'bulk' FROM generate_series(10, 12) g")
        assert conn.execute(ROUTED).fetchone() == (3, 1)
        assert conn.execute("SELECT count(*) FROM webhooks.captures WHERE route IS NOT NULL"
                            " AND (fanned_out <> row_count OR webhook_ids <> '{}' OR xid IS NULL)").fetchone() == (0,)
        assert conn.execute("SELECT count(DISTINCT route) FROM webhooks.captures").fetchone() == (3,)
        got = drain(conn, 12)
    expected = [(h, op, 1) for h in "ab" for op in ("INSERT", "UPDATE", "DELETE")]
    expected += [(h, "INSERT", n) for h in "ab" for n in (10, 11, 12)]
    assert sorted(got) == sorted(expected)


def test_every_change_is_given_once_whatever_order_writers_commit_in(items: str) -> None:
    """Four writers, each holding its transaction open for a while after its one-row INSERT,
    commit out of xid order while a claimer runs; every row reaches both webhooks exactly once."""
    per_writer, writers = 40, 4

    def write(conn: psycopg.Connection[Any], n: int) -> None:
        conn.execute("INSERT INTO items VALUES (%s, 1, 'w')", (n,))

    got = claimed_while_writers_commit_out_of_order(items, write, claim_all, drain, 2 * per_writer * writers,
                                                    writers, per_writer)
    expected = sorted((h, "INSERT", w * 1000 + i) for h in "ab" for w in range(writers) for i in range(per_writer))
    assert sorted(got) == expected  # none missing, none twice


def test_a_filter_never_sees_a_row_it_refuses_as_tables_change_kind(items: str) -> None:
    """A tenant's webhook joins a routed table with a filter: the table's changes go by fan-out
    from then on, and the tenant gets only its rows, not what the route still holds for the
    others. When its filter goes, it reads the route from that moment only."""
    with psycopg.connect(items) as holder, psycopg.connect(items, autocommit=True) as conn:
        # An older transaction still running keeps every snapshot's xmin below row 1's writer: a
        # cursor made for the tenant now would start below row 1, and be given it.
        holder.execute("SELECT pg_current_xact_id()")
        conn.execute("INSERT INTO items VALUES (1, 7, 'before')")  # on the route, not yet claimed
        conn.execute("SELECT webhooks.create_webhook('t42', 'https://e.com/t42', %s)",
                     (Jsonb([{"table": "items", "where": "tenant = 42"}]),))
        assert conn.execute("SELECT count(*) FROM webhooks.cursors k JOIN webhooks.webhooks w ON w.id = k.webhook_id"
                            " WHERE w.name = 't42'").fetchone() == (0,)
        conn.execute("INSERT INTO items VALUES (2, 7, 'filtered')")
        conn.execute("INSERT INTO items VALUES (3, 42, 'filtered')")
        time.sleep(1.2)  # row 1 is past the cursors' patience: given ahead of the holder
        got = drain(conn, 7)
        holder.rollback()
        assert sorted(got) == sorted([("a", "INSERT", n) for n in (1, 2, 3)] + [("b", "INSERT", n) for n in (1, 2, 3)]
                                     + [("t42", "INSERT", 3)])
        conn.execute(UPDATE, (Jsonb({"events": [{"table": "items"}]}), "t42"))  # the filter goes
        conn.execute("INSERT INTO items VALUES (4, 7, 'routed again')")
        got = drain(conn, 3)
        assert sorted(got) == [("a", "INSERT", 4), ("b", "INSERT", 4), ("t42", "INSERT", 4)]
        assert conn.execute(ROUTED).fetchone()[0] == 2  # rows 1 and 4


def test_unsubscribed_disabled_paused_and_deleted_webhooks(items: str) -> None:
    with psycopg.connect(items, autocommit=True) as conn:
        conn.execute(UPDATE, (Jsonb({"enabled": False}), "a"))
        conn.execute("SELECT webhooks.pause_webhook(id, 'maintenance') FROM webhooks.webhooks WHERE name = 'b'")
        conn.execute("INSERT INTO items VALUES (1, 1, 'x')")
        assert claim_all(conn) == []
        conn.execute(UPDATE, (Jsonb({"enabled": True}), "a"))
        conn.execute("SELECT webhooks.resume_webhook(id) FROM webhooks.webhooks WHERE name = 'b'")
        conn.execute("INSERT INTO items VALUES (2, 1, 'x')")
        assert sorted(drain(conn, 3)) == [("a", "INSERT", 2), ("b", "INSERT", 1), ("b", "INSERT", 2)]
        conn.execute(UPDATE, (Jsonb({"events": [{"table": "items", "operations": ["DELETE"]}]}), "b"))
        conn.execute("INSERT INTO items VALUES (3, 1, 'x')")
        conn.execute("DELETE FROM items WHERE id = 3")
        assert sorted(drain(conn, 3)) == [("a", "DELETE", 3), ("a", "INSERT", 3), ("b", "DELETE", 3)]
        conn.execute("SELECT webhooks.delete_webhook(id) FROM webhooks.webhooks WHERE name = 'a'")
        assert conn.execute("SELECT count(*) FROM webhooks.cursors c WHERE NOT EXISTS"
                            " (SELECT 1 FROM webhooks.webhooks w WHERE w.id = c.webhook_id)").fetchone() == (0,)
        conn.execute("DELETE FROM items WHERE id = 2")
        assert drain(conn, 1) == [("b", "DELETE", 2)]


def test_a_long_transaction_delays_others_changes_by_the_patience(items: str) -> None:
    with psycopg.connect(items) as holder, psycopg.connect(items, autocommit=True) as conn:
        holder.execute("INSERT INTO items VALUES (100, 1, 'held open')")
        written = time.monotonic()
        conn.execute("INSERT INTO items VALUES (1, 1, 'x')")
        assert claim_all(conn) == []  # under a second old, behind a running writer: not yet
        got = drain(conn, 2, seconds=10)
        assert 0.9 <= time.monotonic() - written < 5
        assert sorted(got) == [("a", "INSERT", 1), ("b", "INSERT", 1)]
        holder.commit()
        got = drain(conn, 2, seconds=10)
        time.sleep(1.2)
        got += claim_all(conn)
        assert sorted(got) == [("a", "INSERT", 100), ("b", "INSERT", 100)]  # 1 passed, not given again


def test_changes_captured_before_the_upgrade_keep_the_fan_out(items: str) -> None:
    """A trigger 0.6.0 made (no route argument) fans its changes out; after the triggers are
    rebuilt, they take the route; each change is given once."""
    with psycopg.connect(items, autocommit=True) as conn:
        hooks = conn.execute("SELECT array_agg(id ORDER BY id)::text FROM webhooks.webhooks").fetchone()
        assert hooks is not None
        conn.execute("DROP TRIGGER webhooks_capture_insert ON items")
        conn.execute("CREATE TRIGGER webhooks_capture_insert AFTER INSERT ON items REFERENCING NEW TABLE AS new_rows"
                     f" FOR EACH STATEMENT EXECUTE FUNCTION webhooks._capture_statement('{hooks[0]}')")
        conn.execute("INSERT INTO items VALUES (1, 1, 'old trigger')")
        assert conn.execute(ROUTED).fetchone() == (0, 1)
        conn.execute("SELECT webhooks.refresh_triggers()")
        conn.execute("INSERT INTO items VALUES (2, 1, 'new trigger')")
        assert conn.execute(ROUTED).fetchone() == (1, 1)
        got = drain(conn, 4)
    assert sorted(got) == [("a", "INSERT", 1), ("a", "INSERT", 2), ("b", "INSERT", 1), ("b", "INSERT", 2)]


@pytest.mark.parametrize("role", ["webhooks_publisher", "webhooks_admin", "webhooks_runner", "webhooks_viewer"])
def test_no_role_can_read_or_make_a_table_route(items: str, role: str) -> None:
    with psycopg.connect(items, autocommit=True) as conn:
        conn.execute(f"SET ROLE {role}")
        for sql in ("SELECT * FROM webhooks.table_routes", "INSERT INTO webhooks.table_routes (relid, operation)"
                    " VALUES (1, 'INSERT')", "SELECT webhooks._table_route('items'::regclass, 'INSERT')",
                    "SELECT webhooks._sync_route_cursors(1, '{}')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)


def test_a_table_owner_cannot_point_its_writes_at_another_route(items: str) -> None:
    """An application role owning a table may create triggers on it, but not one that runs the
    capture function with arguments of its choosing (another table's route, another webhook):
    the function is not theirs to call."""
    with psycopg.connect(items, autocommit=True) as conn:
        route = conn.execute("SELECT route FROM webhooks.table_routes WHERE relid = 'items'::regclass"
                             " AND operation = 'INSERT'").fetchone()
        assert route is not None
        conn.execute("CREATE ROLE app_owner LOGIN")
        conn.execute("GRANT CREATE ON SCHEMA public TO app_owner")
        conn.execute("SET ROLE app_owner")
        conn.execute("CREATE TABLE mine (id int PRIMARY KEY)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TRIGGER forged AFTER INSERT ON mine REFERENCING NEW TABLE AS new_rows"
                         f" FOR EACH STATEMENT EXECUTE FUNCTION webhooks._capture_statement('{{}}', '{route[0]}')")
        conn.execute("INSERT INTO mine VALUES (1)")
        conn.execute("RESET ROLE")
        assert claim_all(conn) == []


async def test_a_runner_delivers_one_row_changes_once(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, tenant int NOT NULL, v text)")
    async with receiver() as rx:
        create_receiving_webhook(db, rx.url)
        async with running(runner_config(db)):
            with psycopg.connect(db, autocommit=True) as conn:
                for n in range(50):
                    conn.execute("INSERT INTO items VALUES (%s, 1, 'x')", (n,))
            requests = await rx.wait_for(50, timeout=30)
    ids = sorted(int(r.payload["record"]["id"]) for r in requests)
    assert ids == list(range(50))
