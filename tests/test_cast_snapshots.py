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


# -- the probe folded into a table's own capture function (_table_capture_function) --------------------
# Its answer lives in the writer's cached plan. These are the ways an owner could try to make that
# plan keep "built-in only" after a forging type came into the table.


def _function_of(conn: psycopg.Connection, table: str) -> str:
    row = conn.execute("SELECT tgfoid::regproc::text FROM pg_trigger WHERE tgrelid = %s::regclass"
                       " AND tgname = 'webhooks_capture_insert'", (table,)).fetchone()
    assert row is not None
    return str(row[0])


def _forged(db: str, victim: str) -> int:
    with psycopg.connect(db, autocommit=True) as su:
        row = su.execute("SELECT count(*) FROM webhooks.captures WHERE %s = ANY (webhook_ids)"
                         " OR record::text LIKE '%%forged%%'", (victim,)).fetchone()
    assert row is not None
    return int(row[0])


def _refused(conn: psycopg.Connection, statement: str) -> None:
    with pytest.raises(psycopg.Error) as err:
        conn.execute(statement)
    assert err.value.sqlstate == "25006", str(err.value)  # the forging INSERT ran read-only


def test_each_watched_table_gets_its_own_folded_capture_function(db: str, owner: str) -> None:
    _victim_and_ledger(db, owner, "plain")
    with psycopg.connect(db, autocommit=True) as su:
        relid = su.execute("SELECT 'app.ledger'::regclass::oid").fetchone()[0]  # type: ignore[index]
        assert _function_of(su, "app.ledger") == f"webhooks._capture_table_{relid}"
        source, owner_name, definer = su.execute(
            "SELECT prosrc, proowner::regrole::text, prosecdef FROM pg_proc WHERE oid = %s::regproc",
            (f"webhooks._capture_table_{relid}",)).fetchone()  # type: ignore[misc]
        assert (owner_name, definer) == ("webhooks_capture", True)
        assert source.count(f"webhooks._guarded_columns({relid}::pg_catalog.regclass)") == 3
        assert "/*probe*/" not in source
        # Unwatched: the trigger and its function go.
        su.execute("SELECT webhooks.delete_webhook(id) FROM webhooks.webhooks WHERE name = 'ledger'")
        assert su.execute("SELECT count(*) FROM pg_proc WHERE proname = %s",
                          (f"_capture_table_{relid}",)).fetchone() == (0,)


def test_a_column_added_from_another_session_replans_the_writer(db: str, owner: str) -> None:
    victim = _victim_and_ledger(db, owner, "plain")
    with psycopg.connect(owner, autocommit=True) as writer, psycopg.connect(owner, autocommit=True) as other:
        for i in range(10):  # past the plan cache's five custom plans: the generic plan is kept
            writer.execute("INSERT INTO app.ledger VALUES (%s, 'low')", (100 + i,))
        other.execute(ALTERS["add column"])
        _refused(writer, "INSERT INTO app.ledger VALUES (7, 'low')")
        other.execute("ALTER TABLE app.ledger DROP COLUMN value")
        writer.execute("INSERT INTO app.ledger VALUES (8, 'low')")  # built-in only again: captured
        other.execute(ALTERS["change a column's type"])
        _refused(writer, "INSERT INTO app.ledger VALUES (9, 'low')")
    assert _forged(db, victim) == 0


def test_a_column_added_in_the_writers_own_transaction_or_rolled_back_replans(db: str, owner: str) -> None:
    victim = _victim_and_ledger(db, owner, "plain")
    with psycopg.connect(owner, autocommit=True) as writer:
        for i in range(10):
            writer.execute("INSERT INTO app.ledger VALUES (%s, 'x')", (100 + i,))
        writer.execute("BEGIN")
        writer.execute(ALTERS["add column"])
        _refused(writer, "INSERT INTO app.ledger VALUES (7, 'x')")
        writer.execute("ROLLBACK")
        # The forging column kept, then dropped inside a transaction that rolls back: the plan
        # made while it was gone must not outlive the rollback.
        writer.execute(ALTERS["add column"])
        writer.execute("BEGIN")
        writer.execute("ALTER TABLE app.ledger DROP COLUMN value")
        for i in range(10):
            writer.execute("INSERT INTO app.ledger VALUES (%s, 'x')", (200 + i,))
        writer.execute("ROLLBACK")
        _refused(writer, "INSERT INTO app.ledger VALUES (8, 'x')")
        # ... and the same with a savepoint.
        writer.execute("BEGIN")
        writer.execute("SAVEPOINT s")
        writer.execute("ALTER TABLE app.ledger DROP COLUMN value")
        writer.execute("INSERT INTO app.ledger VALUES (300, 'x')")
        writer.execute("ROLLBACK TO SAVEPOINT s")
        _refused(writer, "INSERT INTO app.ledger VALUES (9, 'x')")
        writer.execute("ROLLBACK")
    assert _forged(db, victim) == 0


def test_a_plan_made_under_an_old_snapshot_never_serves_a_later_write(db: str, owner: str) -> None:
    """A REPEATABLE READ write that never reaches the cast (it writes NULL there) plans with a
    snapshot older than the forging column; the same session's next READ COMMITTED write must
    still take its images read-only."""
    victim = _victim_and_ledger(db, owner, "plain")
    with psycopg.connect(owner, autocommit=True) as writer, psycopg.connect(owner, autocommit=True) as other:
        writer.execute("INSERT INTO app.ledger VALUES (100, 'x')")
        writer.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        writer.execute("SELECT 1")
        other.execute("ALTER TABLE app.ledger ADD COLUMN value app.money_t")  # NULL: no cast runs
        for i in range(10):
            writer.execute("INSERT INTO app.ledger (id) VALUES (%s)", (200 + i,))
        writer.execute("COMMIT")
        _refused(writer, "INSERT INTO app.ledger VALUES (7, 'x', 'low')")
    assert _forged(db, victim) == 0


def test_a_tables_function_on_another_table_probes_as_before(db: str, owner: str) -> None:
    """A restored dump keeps the functions, and its tables get new oids: a function called by a
    table that is not its own must not trust its folded answer."""
    victim = _victim_and_ledger(db, owner, "plain")
    with psycopg.connect(db, autocommit=True) as su:
        ledger_fn = _function_of(su, "app.ledger")
        hook = su.execute("SELECT id FROM webhooks.webhooks WHERE name = 'ledger'").fetchone()[0]  # type: ignore[index]
        su.execute("CREATE TABLE app.copy (id int PRIMARY KEY, value app.money_t)")
        su.execute("CREATE TABLE app.plain_copy (id int PRIMARY KEY, note text)")
        for table in ("app.copy", "app.plain_copy"):
            su.execute(f"CREATE TRIGGER webhooks_capture_insert AFTER INSERT ON {table} REFERENCING NEW TABLE"
                       f" AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {ledger_fn}('{{{hook}}}')")
        su.execute(f"GRANT ALL ON app.copy, app.plain_copy TO {OWNER}")
    with psycopg.connect(owner, autocommit=True) as writer:
        for i in range(10):
            writer.execute("INSERT INTO app.ledger VALUES (%s, 'x')", (100 + i,))
        _refused(writer, "INSERT INTO app.copy VALUES (1, 'low')")
        writer.execute("INSERT INTO app.plain_copy VALUES (1, 'kept')")
    assert _forged(db, victim) == 0
    with psycopg.connect(db, autocommit=True) as su:
        bodies = [r[0] for r in su.execute("SELECT body::jsonb FROM webhooks.claim(100)")]
    assert {(b["table"], (b["record"] or {}).get("id")) for b in bodies} == {
        *{("ledger", 100 + i) for i in range(10)}, ("plain_copy", 1)}


def test_refresh_drops_the_functions_of_dropped_tables(db: str, owner: str) -> None:
    _victim_and_ledger(db, owner, "plain")
    with psycopg.connect(db, autocommit=True) as su:
        relid = su.execute("SELECT 'app.ledger'::regclass::oid").fetchone()[0]  # type: ignore[index]
        su.execute("DROP TABLE app.ledger")
        su.execute("SELECT webhooks.refresh_triggers()")
        assert su.execute("SELECT count(*) FROM pg_proc WHERE proname = %s",
                          (f"_capture_table_{relid}",)).fetchone() == (0,)


@pytest.mark.parametrize("grant", ["webhooks_publisher", "webhooks_admin", "webhooks_runner", "webhooks_viewer"])
def test_no_role_can_put_a_tables_capture_function_on_its_own_table(db: str, owner: str, grant: str) -> None:
    """A table's copy is made while pgwebhooks runs, after migrate took EXECUTE from PUBLIC: on
    a table of its own, with a victim's webhook as argument, it would forge that webhook's events."""
    victim = _victim_and_ledger(db, owner, "plain")
    with psycopg.connect(db, autocommit=True) as su:
        ledger_fn = _function_of(su, "app.ledger")
        su.execute(f"GRANT {grant} TO {OWNER}")
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute("CREATE TABLE app.mine (id int PRIMARY KEY)")
        with pytest.raises(psycopg.Error) as err:
            conn.execute("CREATE TRIGGER evil AFTER INSERT ON app.mine REFERENCING NEW TABLE AS new_rows"
                         f" FOR EACH STATEMENT EXECUTE FUNCTION {ledger_fn}('{{{victim}}}')")
        assert err.value.sqlstate == "42501", str(err.value)
        conn.execute("INSERT INTO app.mine VALUES (1)")
    assert _forged(db, victim) == 0
