"""A table owner's cast to json must never run with the outbox's rights, even when the writer's
snapshot is older than the table's columns.

The capture decides whether to take a row's image read-only by reading pg_attribute through a
snapshot, while row_to_json follows the table's current columns. A REPEATABLE READ or SERIALIZABLE
writer keeps its first snapshot: its owner can take that snapshot, add a column of a forging type
from a second session, and then write. These tests are that attack, from the owner's seat,
through both trigger kinds (statement, and row for partitioned tables), and a neighbour who
must still get exactly his events.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

OWNER = "pgwh_snapshot_owner"

FORGING_TYPE = """
CREATE TYPE app.money_t AS ENUM ('low', 'high');
CREATE FUNCTION app.forge(app.money_t) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count, record)
    VALUES ('INSERT', 0, 'public', 'payments', ARRAY[%(victim)L]::uuid[], 1, '{"forged": true}');
    RETURN to_json($1::text);
END $$;
CREATE CAST (app.money_t AS json) WITH FUNCTION app.forge(app.money_t);
"""

# The owner's tables: built-in columns only, so today they take the direct path.
TABLES = {
    "plain": "CREATE TABLE app.ledger (id int PRIMARY KEY, note text)",
    "partitioned": "CREATE TABLE app.ledger (id int PRIMARY KEY, note text) PARTITION BY RANGE (id);"
                   " CREATE TABLE app.ledger_low PARTITION OF app.ledger FOR VALUES FROM (0) TO (1000)",
}

# How the owner brings the forging type into the table after the writer took its snapshot.
ALTERS = {
    "add column": "ALTER TABLE app.ledger ADD COLUMN value app.money_t DEFAULT 'low'",
    "change a column's type": "ALTER TABLE app.ledger ALTER COLUMN note TYPE app.money_t USING 'low'",
}

WRITES = {
    # 'low' is a note before the ALTER and a money_t after it; a NULL would never reach the cast.
    "INSERT": "INSERT INTO app.ledger (id, note) VALUES (7, 'low')",
    "UPDATE": "UPDATE app.ledger SET id = id WHERE id = 1",
    "DELETE": "DELETE FROM app.ledger WHERE id = 1",
    "INSERT of two rows": "INSERT INTO app.ledger (id, note) VALUES (8, 'low'), (9, 'low')",
}


@pytest.fixture
def owner(db: str) -> Iterator[str]:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {OWNER}")
        conn.execute(f"CREATE ROLE {OWNER} LOGIN")
        conn.execute(f"CREATE SCHEMA app AUTHORIZATION {OWNER}")
    yield make_conninfo(db, user=OWNER)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DROP SCHEMA app CASCADE")
        conn.execute(f"DROP OWNED BY {OWNER}")
        conn.execute(f"DROP ROLE {OWNER}")


def _create(conn: psycopg.Connection, name: str, table: str) -> str:
    row = conn.execute("SELECT id FROM webhooks.create_webhook(%s, 'https://example.com/h', %s)",
                       (name, Jsonb([{"table": table}]))).fetchone()
    assert row is not None
    return str(row[0])


def _victim_and_ledger(db: str, owner: str, table: str) -> str:
    with psycopg.connect(db, autocommit=True) as su:
        su.execute("CREATE TABLE public.payments (id int PRIMARY KEY)")
        victim = _create(su, "payments", "payments")
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(FORGING_TYPE.replace("%(victim)L", f"'{victim}'"))
        conn.execute(TABLES[table])
        conn.execute("INSERT INTO app.ledger (id, note) VALUES (1, 'one')")
    with psycopg.connect(db, autocommit=True) as su:
        _create(su, "ledger", "app.ledger")
    return victim


# A column's new type rewrites the table, and a rewrite is not MVCC-safe: to the old snapshot the
# table is then empty, so an UPDATE or DELETE finds no row to capture. Those pairs test nothing.
ATTACKS = [(alter, write) for alter in sorted(ALTERS) for write in sorted(WRITES)
           if alter == "add column" or write.startswith("INSERT")]


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize(("alter", "write"), ATTACKS)
def test_a_snapshot_older_than_the_columns_cannot_forge(
        db: str, owner: str, isolation: str, table: str, alter: str, write: str) -> None:
    victim = _victim_and_ledger(db, owner, table)
    with psycopg.connect(owner, autocommit=True) as writer, psycopg.connect(owner, autocommit=True) as other:
        writer.execute(WRITES["INSERT"].replace("7", "500"))  # the capture's plans are cached
        writer.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        writer.execute("SELECT 1")  # the snapshot, taken before the table changes
        other.execute(ALTERS[alter])
        with pytest.raises(psycopg.Error) as err:
            writer.execute(WRITES[write])
        # The forging INSERT ran read-only: the write fails, as it does under READ COMMITTED.
        assert err.value.sqlstate == "25006", str(err.value)
        writer.execute("ROLLBACK")
    with psycopg.connect(db, autocommit=True) as su:
        forged = su.execute("SELECT count(*) FROM webhooks.captures WHERE %s = ANY (webhook_ids)"
                            " OR record::text LIKE '%%forged%%'", (victim,)).fetchone()
        assert forged == (0,)
        # Only the warm-up write was captured: the failed one was rolled back whole.
        assert su.execute("SELECT count(*) FROM webhooks.captures").fetchone() == (1,)


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("table", sorted(TABLES))
def test_a_neighbour_writing_under_repeatable_read_gets_exactly_his_events(
        db: str, owner: str, isolation: str, table: str) -> None:
    """The read-only way is the only one these isolation levels take: its images must be the
    direct path's, one row or many, every operation."""
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(TABLES[table])
    with psycopg.connect(db, autocommit=True) as su:
        _create(su, "ledger", "app.ledger")
    with psycopg.connect(owner, autocommit=True) as writer:
        with writer.transaction():
            writer.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            writer.execute("INSERT INTO app.ledger VALUES (1, 'one')")
            writer.execute("INSERT INTO app.ledger VALUES (2, 'two'), (3, 'three')")
            writer.execute("UPDATE app.ledger SET note = note || '!' WHERE id <= 2")
            writer.execute("DELETE FROM app.ledger WHERE id = 3")
        # A READ COMMITTED write beside them takes the direct path and reads the same.
        writer.execute("UPDATE app.ledger SET note = 'uno' WHERE id = 1")
    with psycopg.connect(db, autocommit=True) as su:
        bodies = [r[0] for r in su.execute("SELECT body::jsonb FROM webhooks.claim(100) ORDER BY delivery_id")]
    seen = [(b["event"], b["record"], b.get("old_record")) for b in bodies]
    assert sorted(seen, key=str) == sorted([
        ("INSERT", {"id": 1, "note": "one"}, None),
        ("INSERT", {"id": 2, "note": "two"}, None),
        ("INSERT", {"id": 3, "note": "three"}, None),
        ("UPDATE", {"id": 1, "note": "one!"}, {"id": 1, "note": "one"}),
        ("UPDATE", {"id": 2, "note": "two!"}, {"id": 2, "note": "two"}),
        ("DELETE", {"id": 3, "note": "three"}, {"id": 3, "note": "three"}),
        ("UPDATE", {"id": 1, "note": "uno"}, {"id": 1, "note": "one!"}),
    ], key=str)
