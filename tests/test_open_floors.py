"""claim() beside a snapshot another session holds open: a drained webhook is not scanned in time
order (its open floor, sql/functions/027_open_floors.sql), and no work is ever skipped for it.

The floor of a session rises at most every 100 ms and only once every transaction that may
still commit a lower id has ended, so the tests pause a little between claims (bounded sleeps,
never a timing assert) to let it rise as far as it can, then show that what was out of sight
(uncommitted, leased, retried, paused) is still handed out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from outbox_helpers import create_webhook, scalar
from psycopg.types.json import Jsonb

FLOOR_INTERVAL = 0.12  # a little over the 100 ms between two raises of a session's floors


def claim(conn: psycopg.Connection, batch: int = 200) -> list[tuple[int, int, Any]]:
    return [(r[0], r[1], r[2]) for r in conn.execute(
        "SELECT delivery_id, attempt, webhook_id FROM webhooks.claim(%s)", (batch,))]


def complete(conn: psycopg.Connection, leased: list[tuple[int, int, Any]], status: int = 200) -> None:
    conn.execute("SELECT webhooks.complete(%s)", (Jsonb([
        {"delivery_id": d, "attempt": a, "status_code": status, "latency_ms": 1} for d, a, _ in leased]),))


def settle(conn: psycopg.Connection, rounds: int = 3) -> list[tuple[int, int, Any]]:
    """Claim and deliver everything due, pausing so the floors rise; returns what was handed out."""
    got: list[tuple[int, int, Any]] = []
    for _ in range(rounds):
        time.sleep(FLOOR_INTERVAL)
        for _ in range(50):  # bounded: every call leases up to 200
            leased = claim(conn)
            if not leased:
                break
            got += leased
            complete(conn, leased)
    return got


INDEXES = ("webhooks.deliveries_webhook_due", "webhooks.deliveries_webhook_leased", "webhooks.deliveries_webhook_open",
           "webhooks.captures_fan_out_pending")
ONE_ROW_WRITES = "DO $$ BEGIN FOR i IN %s..%s LOOP INSERT INTO bulk VALUES (i, i); END LOOP; END $$"
TWO_ROW_WRITES = "DO $$ BEGIN FOR i IN %s..%s LOOP INSERT INTO bulk VALUES (2 * i, i), (2 * i + 1, i); END LOOP; END $$"


def index_entries_read(conn: psycopg.Connection) -> dict[str, int]:
    """Index entries the session's scans of each index returned so far (not yet reported to the
    statistics, which is why differences are compared), dead ones included."""
    return {i: int(scalar(conn, "SELECT coalesce(pg_stat_get_xact_tuples_returned(to_regclass(%s)), 0)", i))
            for i in INDEXES}


@pytest.fixture
def holder(db: str) -> Iterator[psycopg.Connection]:
    """A session idle in a REPEATABLE READ transaction: its snapshot keeps every dead row version."""
    with psycopg.connect(db) as h:
        h.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        h.execute("SELECT 1").fetchone()
        yield h
        h.rollback()


@pytest.mark.parametrize("writes", ["one statement", "one-row statements"])
def test_a_drained_outbox_is_not_scanned_past_its_dead_entries(db, conn, table, holder, writes) -> None:
    create_webhook(conn)
    if writes == "one statement":
        conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 2000) g")
    else:  # 2,000 captures, each updated once when fanned out
        conn.execute(ONE_ROW_WRITES % (1, 2000))
    assert len(settle(conn)) == 2000
    time.sleep(FLOOR_INTERVAL)
    claim(conn)  # the floors rise past the last ids
    conn.execute("BEGIN")
    try:
        before = index_entries_read(conn)
        assert claim(conn) == []
        assert scalar(conn, "SELECT webhooks.next_due_in()") is None
        read = {i: n - before[i] for i, n in index_entries_read(conn).items()}
    finally:
        conn.execute("COMMIT")
    # 2,000 deliveries, each pending then leased: 4,000 dead entries the snapshot keeps (and as
    # many captures as statements, each with a dead entry from before its fan-out).
    assert read["webhooks.deliveries_webhook_due"] == 0
    assert read["webhooks.deliveries_webhook_leased"] == 0
    assert read["webhooks.deliveries_webhook_open"] < 50
    assert read["webhooks.captures_fan_out_pending"] < 50


def test_deliveries_a_transaction_commits_late_are_claimed(db, conn, table) -> None:
    hook = create_webhook(conn)
    conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 10) g")
    with psycopg.connect(db) as late:
        # `late` takes the lowest ids (a test event, then the fan-out of the 10 rows) and keeps
        # its transaction open while later deliveries are made, claimed and delivered.
        first = scalar(late, "SELECT webhooks.send_test(%s)", hook)
        assert scalar(late, "SELECT webhooks._fan_out(1000)") == 10
        for _ in range(3):
            conn.execute("SELECT webhooks.send_test(%s)", (hook,))
        later = settle(conn)
        assert len(later) == 3 and min(d for d, _, _ in later) > first
        late.commit()
    got = settle(conn)
    assert sorted(d for d, _, _ in got) == list(range(first, first + 11))
    assert scalar(conn, "SELECT count(*) FROM webhooks.deliveries WHERE status <> 'delivered'") == 0


def test_a_capture_committed_late_is_fanned_out_and_delivered(db, conn, table, holder) -> None:
    # Two rows a statement: fanned out (a one-row change goes through its route's cursors, 0.7.0).
    create_webhook(conn)
    with psycopg.connect(db) as late:
        late.execute("INSERT INTO bulk VALUES (0, 0), (-1, 0)")  # its capture takes the lowest id
        conn.execute(TWO_ROW_WRITES % (1, 150))  # 150 captures fanned out while it is open
        assert len(settle(conn)) == 300
        late.commit()
    got = settle(conn)
    assert len(got) == 2
    assert scalar(conn, "SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'") == 302


def test_released_retried_and_paused_work_is_claimed_after_the_rest_drains(db, conn, table, holder) -> None:
    hook = create_webhook(conn)
    paused = create_webhook(conn)
    conn.execute("SELECT webhooks.pause_webhook(%s)", (paused,))
    conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 600) g")
    first = claim(conn, 10)
    assert len(first) == 10 and {w for _, _, w in first} == {hook}
    conn.execute("SELECT webhooks.release(%s)", (Jsonb([{"delivery_id": d, "attempt": a} for d, a, _ in first[:8]]),))
    complete(conn, first[8:], status=500)  # two failures: retried later, the circuit stays closed
    # Retries due long ago: below every floor a timestamp could give.
    conn.execute("UPDATE webhooks.deliveries SET next_attempt_at = '2000-01-01' WHERE id = ANY (%s)",
                 ([d for d, _, _ in first[8:]],))
    got = settle(conn, rounds=4)
    assert {d for d, _, _ in first} <= {d for d, _, _ in got}
    assert {w for _, _, w in got} == {hook}
    assert len(got) == 600  # the 590 never claimed, the 8 released and the 2 retried
    conn.execute("SELECT webhooks.resume_webhook(%s)", (paused,))
    assert len(settle(conn)) == 600
    assert scalar(conn, "SELECT count(*) FROM webhooks.deliveries WHERE status <> 'delivered'") == 0


def test_an_expired_lease_is_claimed_again_after_the_floors_rise(db, conn, table, holder) -> None:
    create_webhook(conn)
    conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 300) g")
    stalled = claim(conn, 1)  # a runner that dies with its lease
    rest = settle(conn)
    assert len(rest) == 299
    conn.execute("UPDATE webhooks.deliveries SET next_attempt_at = now() - interval '1 second' WHERE id = %s",
                 (stalled[0][0],))
    again = settle(conn)
    assert [(d, a) for d, a, _ in again] == [(stalled[0][0], 2)]


def test_a_forged_floor_is_ignored(db, conn, table) -> None:
    hook = create_webhook(conn)
    conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 5) g")
    # Floors far above every id, as the session itself would store them but for the signature.
    forged = "0" * 32 + "|" + json.dumps({"f": {str(hook): 9_000_000_000}, "t": "2000-01-01T00:00:00Z"})
    for value in (forged, "not even json", "|"):
        conn.execute("SELECT set_config('pgwebhooks.open_floors', %s, false)", (value,))
        assert scalar(conn, "SELECT webhooks.next_due_in()") == 0
    conn.execute("SELECT set_config('pgwebhooks.open_floors', %s, false)", (forged,))
    assert len(claim(conn)) == 5


def test_a_repeatable_read_claim_uses_the_floors_but_does_not_raise_them(db, conn, table, holder) -> None:
    create_webhook(conn)
    conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(1, 50) g")
    with psycopg.connect(db) as rr:
        rr.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        got = claim(rr)
        rr.commit()
        assert len(got) == 50
        complete(conn, got)
        conn.execute("INSERT INTO bulk SELECT g, g FROM generate_series(51, 60) g")
        time.sleep(FLOOR_INTERVAL)
        rr.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert len(claim(rr)) == 10
        rr.commit()


def test_held_rows_released_after_the_floors_rise_are_delivered(db, conn, table, holder) -> None:
    hook = scalar(conn, "SELECT id FROM webhooks.create_webhook('held', 'https://receiver.example/hook', %s)",
                  Jsonb([{"table": "bulk", "where": "100 / v > 1"}]))
    conn.execute(ONE_ROW_WRITES % (0, 0))  # v = 0: its filter fails, the row is held
    conn.execute(ONE_ROW_WRITES % (1, 40))
    assert len(settle(conn)) == 40
    assert scalar(conn, "SELECT count(*) FROM webhooks.held_rows") == 1
    conn.execute("SELECT webhooks.update_webhook(%s, %s)",
                 (hook, Jsonb({"events": [{"table": "bulk", "where": "v >= 0"}]})))
    assert scalar(conn, "SELECT queued FROM webhooks.release_held(%s)", hook) == 1
    assert len(settle(conn)) == 1


def test_a_sequence_set_back_drops_the_floors(db, conn, table, holder) -> None:
    create_webhook(conn)
    conn.execute(ONE_ROW_WRITES % (1, 300))
    assert len(settle(conn)) == 300
    # The outbox emptied and its ids started again (as a restore or a reinstall may leave them):
    # the new rows are below every floor this session raised.
    conn.execute("TRUNCATE webhooks.deliveries, webhooks.delivery_attempts, webhooks.captures, webhooks.events"
                 " RESTART IDENTITY")
    conn.execute(ONE_ROW_WRITES % (301, 310))
    assert len(claim(conn)) == 10
