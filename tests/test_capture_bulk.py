"""Capture is transactional and set-based; claim() shares work without handing anything out twice.

Counts are taken through the public API where possible: every captured change is drained with
webhooks.claim() into a temporary table (`claimed`) and counted there, so the tests hold however
the outbox lays out its rows. Only "the payload is stored once" looks at the outbox's own tables
(`stored_row_images`).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

BULK = 100_000


@pytest.fixture
def table(conn: psycopg.Connection) -> str:
    conn.execute("CREATE TABLE bulk (id int PRIMARY KEY, v int NOT NULL)")
    return "bulk"


def create_webhook(conn: psycopg.Connection, operations: list[str] | None = None, table: str = "bulk") -> Any:
    event: dict[str, Any] = {"table": table}
    if operations is not None:
        event["operations"] = operations
    row = conn.execute(
        "SELECT id FROM webhooks.create_webhook(%s, 'https://receiver.example/hook', %s)",
        (f"hook-{uuid.uuid4().hex[:8]}", Jsonb([event])),
    ).fetchone()
    assert row is not None
    return row[0]


def scalar(conn: psycopg.Connection, sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def drain(conn: psycopg.Connection, batch: int = 10_000, max_calls: int = 100) -> int:
    """Claim everything that is due into the temp table `claimed`; returns how many were claimed.

    Bounded: at most `max_calls` claim() calls and 120 seconds.
    """
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS claimed (delivery_id bigint, attempt int, webhook_id uuid,"
        " event_id text, operation text, schema_name text, table_name text, record jsonb, old_record jsonb)"
    )
    total = 0
    deadline = time.monotonic() + 120
    for _ in range(max_calls):
        cur = conn.execute(
            "INSERT INTO claimed SELECT delivery_id, attempt, webhook_id, b->>'id', b->>'event', b->>'schema',"
            " b->>'table', b->'record', b->'old_record'"
            " FROM webhooks.claim(%s) c, LATERAL (SELECT c.body::jsonb AS b) p",
            (batch,),
        )
        total += cur.rowcount
        if cur.rowcount == 0:
            return total
        assert time.monotonic() < deadline, "draining the outbox took too long"
    pytest.fail(f"the outbox was not drained in {max_calls} claims")


def stored_row_images(conn: psycopg.Connection) -> int:
    """How many row images the outbox holds (the one look at its internal layout)."""
    return scalar(
        conn,
        "SELECT (SELECT count(*) FROM webhooks.events)"
        " + (SELECT count(*) FROM webhooks.captures WHERE record IS NOT NULL OR old_record IS NOT NULL)",
    )


def claimed_stats(conn: psycopg.Connection) -> tuple[int, int, int]:
    """(deliveries, distinct deliveries, distinct events) claimed so far."""
    return conn.execute(
        "SELECT count(*), count(DISTINCT delivery_id), count(DISTINCT event_id) FROM claimed"
    ).fetchone()


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


# --- transactions -------------------------------------------------------------------------------


class Boom(Exception):
    pass


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


def collect_notifies(listener: psycopg.Connection, timeout: float = 2.0) -> list[psycopg.Notify]:
    # Bounded both ways: at most `timeout` seconds, at most 50 notifications.
    return list(listener.notifies(timeout=timeout, stop_after=50))


@pytest.fixture
def listener(db: str):
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("LISTEN webhooks")
        yield c


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


# --- UPDATE pairing -----------------------------------------------------------------------------


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


# --- concurrent claim ---------------------------------------------------------------------------


def test_claim_skips_rows_locked_by_an_open_transaction(db, conn, table) -> None:
    create_webhook(conn)
    conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 50) g")
    # Deliveries are made from captures lazily (claim() fans out); make them all now, committed:
    # this test is about deliveries locked by another claimer's open transaction.
    if scalar(conn, "SELECT to_regprocedure('webhooks._fan_out(integer)') IS NOT NULL"):
        assert scalar(conn, "SELECT webhooks._fan_out(1000)") == 50

    with psycopg.connect(db) as a, psycopg.connect(db) as b:
        # A claim that waited instead of skipping would wait on `a`, idle until it commits below:
        # the lock timeout turns that wait into an error, with no clock to read.
        b.execute("SET lock_timeout = '200ms'")
        got_a = {r[0] for r in a.execute("SELECT delivery_id FROM webhooks.claim(30)")}
        got_b = {r[0] for r in b.execute("SELECT delivery_id FROM webhooks.claim(30)")}
        assert len(got_a) == 30
        assert len(got_b) == 20
        assert not got_a & got_b
        a.commit()
        b.commit()
    assert drain(conn) == 0  # all 50 are leased now


def test_claim_does_not_block_on_an_open_claim_transaction(db, conn, table) -> None:
    create_webhook(conn)
    conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 50) g")
    with psycopg.connect(db) as a, psycopg.connect(db) as b:
        b.execute("SET lock_timeout = '200ms'")  # waiting on `a` would be an error, as above
        got_a = {r[0] for r in a.execute("SELECT delivery_id FROM webhooks.claim(30)")}
        got_b = {r[0] for r in b.execute("SELECT delivery_id FROM webhooks.claim(30)")}
        assert len(got_a) == 30
        assert len(got_b) <= 20
        assert not got_a & got_b
        a.commit()
        b.commit()
    rest = drain(conn)
    assert len(got_a) + len(got_b) + rest == 50


@pytest.mark.parametrize("fanned_out", [True, False], ids=["deliveries-ready", "from-capture"])
def test_concurrent_claims_never_share_a_delivery_and_drain_everything(db, conn, table, fanned_out: bool) -> None:
    total = 2_000
    create_webhook(conn)
    conn.execute(f"INSERT INTO bulk SELECT g, g FROM generate_series(1, {total}) g")
    if fanned_out and scalar(conn, "SELECT to_regprocedure('webhooks._fan_out(integer)') IS NOT NULL"):
        assert scalar(conn, "SELECT webhooks._fan_out(%s)", total) == total

    out: dict[str, list[set[int]]] = {"a": [], "b": []}
    events: dict[str, list[int]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    deadline = time.monotonic() + 60
    stop = threading.Event()

    def decide() -> None:  # run by one thread once both have finished a round
        if (not out["a"][-1] and not out["b"][-1]) or time.monotonic() > deadline:
            stop.set()

    start = threading.Barrier(2, timeout=10)
    both_claimed = threading.Barrier(2, timeout=10)
    round_done = threading.Barrier(2, action=decide, timeout=10)

    def worker(name: str) -> None:
        try:
            with psycopg.connect(db) as c:
                c.execute("SET lock_timeout = '5s'")
                c.commit()
                for _ in range(200):  # bounded rounds; each claims up to 97 in one open transaction
                    start.wait()
                    rows = c.execute(
                        "SELECT delivery_id, (body::jsonb->'record'->>'id')::int FROM webhooks.claim(97)"
                    ).fetchall()
                    both_claimed.wait()  # both claims are done while both transactions are still open
                    c.commit()
                    out[name].append({r[0] for r in rows})
                    events[name].extend(r[1] for r in rows)
                    round_done.wait()
                    if stop.is_set():
                        break
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
            for b in (start, both_claimed, round_done):
                b.abort()

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "claim workers did not finish"
    assert not errors, errors
    assert stop.is_set(), "the outbox was not drained within the rounds allowed"

    rounds = list(zip(out["a"], out["b"], strict=True))
    for got_a, got_b in rounds:
        assert not got_a & got_b
    claimed = {name: [i for ids in rs for i in ids] for name, rs in out.items()}
    # Both took part, nobody got anything twice, and together they drained the outbox.
    if fanned_out:
        # With deliveries ready, simultaneous claims really share them. (From a capture not yet
        # fanned out they need not: the claimer fanning it out holds it until it commits.)
        assert any(got_a and got_b for got_a, got_b in rounds), "the two claimers never both got work"
    assert len(claimed["a"]) == len(set(claimed["a"]))
    assert len(claimed["b"]) == len(set(claimed["b"]))
    assert not set(claimed["a"]) & set(claimed["b"])
    assert len(claimed["a"]) + len(claimed["b"]) == total
    assert sorted(events["a"] + events["b"]) == list(range(1, total + 1))
    assert drain(conn) == 0
