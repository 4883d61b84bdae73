"""The outbox's blocks (sql/functions/073_blocks.sql): maintain() closes a block once its first row is
older than the roll interval, and empties a whole block once all of its work is done and past the
retention. Nothing unfinished goes, nothing a paused webhook's cursor has yet to pass, nothing
written late into a closed block; writers never wait for an emptying; no role reaches a block but
through its table. Old rows are made old by moving their timestamps back, never by waiting."""

from __future__ import annotations

import time

import psycopg
import pytest
from helpers import create_table, create_webhook

BLOCK = 1 << 36


def _age(conn: psycopg.Connection, by: str = "30 days") -> None:
    conn.execute("UPDATE webhooks.deliveries SET created_at = created_at - %s::interval,"
                 " completed_at = completed_at - %s::interval", (by, by))
    conn.execute("UPDATE webhooks.captures SET occurred_at = occurred_at - %s::interval", (by,))


def _answer(conn: psycopg.Connection, status: dict[str, int] | None = None, default: int = 200) -> int:
    """Claim everything due and report each webhook's status (`status` by webhook id, else `default`)."""
    total = 0
    for _ in range(50):
        claimed = conn.execute("SELECT delivery_id, attempt, webhook_id FROM webhooks.claim(200)").fetchall()
        if not claimed:
            return total
        total += len(claimed)
        results = [{"delivery_id": d, "attempt": a, "status_code": (status or {}).get(str(w), default)}
                   for d, a, w in claimed]
        conn.execute("SELECT count(*) FROM webhooks.complete(%s::jsonb)", (psycopg.types.json.Jsonb(results),))
    pytest.fail("the outbox did not drain in 50 claims")


def _maintain(conn: psycopg.Connection) -> tuple[int, int, int]:
    """maintain() until nothing more remains (at most 20 calls): the rows it removed."""
    totals = [0, 0, 0]
    for _ in range(20):
        row = conn.execute("SELECT deliveries, attempts, captures, more FROM webhooks.maintain()").fetchone()
        assert row is not None
        totals = [t + v for t, v in zip(totals, row[:3], strict=True)]
        if not row[3]:
            return totals[0], totals[1], totals[2]
    pytest.fail("maintain() still had more after 20 calls")


def _blocks(conn: psycopg.Connection, table: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM webhooks._blocks(%s)", (table,))]


def _held(conn: psycopg.Connection) -> dict[tuple[str, int], set]:
    """webhooks.outbox_blocks as the operator reads it: the closed blocks some webhook keeps."""
    rows = conn.execute("SELECT family, block, held_by FROM webhooks.outbox_blocks"
                        " WHERE held_by IS NOT NULL").fetchall()
    return {(family, block): set(held) for family, block, held in rows}


def _one_row_writes(conn: psycopg.Connection, count: int, label: str = "w") -> None:
    for i in range(count):
        conn.execute("INSERT INTO items (label) VALUES (%s)", (f"{label}{i}",))


def _delivered_and_aged(db: str, conn: psycopg.Connection, count: int) -> None:
    """One webhook on the test table, `count` one-row changes delivered, and all of it aged past
    the retention: a closed block that is done, once rolled."""
    create_table(db)
    create_webhook(db, "http://127.0.0.1:9/hook")
    _one_row_writes(conn, count)
    assert _answer(conn) == count
    _age(conn)


def test_a_finished_block_goes_whole_and_writes_go_on_in_the_next(db: str, conn: psycopg.Connection) -> None:
    create_table(db)
    create_webhook(db, "http://127.0.0.1:9/hook")
    _one_row_writes(conn, 30)
    conn.execute("INSERT INTO items (label) SELECT 'bulk' || g FROM generate_series(1, 20) g")  # events rows
    assert _answer(conn) == 50
    _age(conn)
    last_old = conn.execute("SELECT max(id) FROM webhooks.deliveries").fetchone()[0]

    # The block's first row is 30 days old: it is closed, found done, emptied and dropped.
    assert _maintain(conn) == (50, 50, 31)
    for table in ("captures", "events", "deliveries", "delivery_attempts"):
        assert conn.execute(f"SELECT count(*) FROM webhooks.{table}").fetchone() == (0,), table
        assert f"{table}_0" not in _blocks(conn, table)  # emptied, then dropped by a later call
        assert f"{table}_2" in _blocks(conn, table)  # created ahead

    # Writes go on, in block 1, ids still growing; they are delivered as before.
    _one_row_writes(conn, 5, "new")
    assert _answer(conn) == 5
    ids = conn.execute("SELECT min(id), count(*) FROM webhooks.deliveries WHERE status = 'delivered'").fetchone()
    assert ids[0] >= BLOCK > last_old and ids[1] == 5
    # A block that is not past the retention stays.
    assert _maintain(conn) == (0, 0, 0)
    assert conn.execute("SELECT count(*) FROM webhooks.deliveries").fetchone() == (5,)
    # What the operator sees: block 1 current with its 5 deliveries, block 2 ahead, nothing held.
    seen = conn.execute("SELECT family, block, first_id, state, held_by, first_at IS NOT NULL, bytes > 0"
                        " FROM webhooks.outbox_blocks ORDER BY family, block NULLS LAST").fetchall()
    assert seen == [("captures", 1, BLOCK, "current", None, True, True),
                    ("captures", 2, 2 * BLOCK, "ahead", None, False, True),
                    ("captures", None, None, "default", None, False, True),
                    ("deliveries", 1, BLOCK, "current", None, True, True),
                    ("deliveries", 2, 2 * BLOCK, "ahead", None, False, True),
                    ("deliveries", None, None, "default", None, False, True)]


def test_unfinished_work_and_a_paused_webhooks_changes_keep_their_block(db: str, conn: psycopg.Connection) -> None:
    create_table(db)
    retrying = create_webhook(db, "http://127.0.0.1:9/retrying", max_retries=5)
    paused = create_webhook(db, "http://127.0.0.1:9/paused")
    healthy = create_webhook(db, "http://127.0.0.1:9/healthy")
    conn.execute("SELECT webhooks.pause_webhook(%s)", (paused["id"],))
    _one_row_writes(conn, 3)  # fewer failures than open the retrying webhook's circuit (5)
    # The healthy webhook's deliveries finish; the retrying one's fail once and wait for a retry.
    assert _answer(conn, {str(retrying["id"]): 500}) == 6
    _age(conn)

    removed = _maintain(conn)
    # Only the healthy webhook's finished deliveries go (the DELETE pass, inside the kept block).
    assert removed == (3, 3, 0)
    assert "deliveries_0" in _blocks(conn, "deliveries") and "captures_0" in _blocks(conn, "captures")
    # The operator is told which webhooks keep which block: the retrying and the paused webhook
    # (whose changes wait as pending deliveries), in both families. The healthy webhook keeps nothing.
    keepers = {retrying["id"], paused["id"]}
    assert _held(conn) == {("deliveries", 0): keepers, ("captures", 0): keepers}
    # Both keep everything they still need: the retries and the paused webhook's changes.
    conn.execute("UPDATE webhooks.deliveries SET next_attempt_at = now() WHERE status = 'pending'")
    conn.execute("SELECT webhooks.resume_webhook(%s)", (paused["id"],))
    assert _answer(conn) == 6
    delivered = conn.execute("SELECT webhook_id::text, count(*) FROM webhooks.deliveries WHERE status = 'delivered'"
                             " GROUP BY 1").fetchall()
    assert dict(delivered) == {str(retrying["id"]): 3, str(paused["id"]): 3}
    assert _held(conn) == {}
    # Once done and old, the block goes whole.
    _age(conn)
    assert _maintain(conn)[0] == 6
    assert conn.execute("SELECT count(*) FROM webhooks.captures").fetchone() == (0,)
    assert healthy["id"]


def test_the_operator_sees_which_paused_webhook_keeps_a_block(db: str, conn: psycopg.Connection) -> None:
    """Changes a paused webhook has not been handed yet (its cursor has not passed them) keep their
    captures' block; webhooks.outbox_blocks names that webhook, and not its healthy neighbour."""
    create_table(db)
    paused = create_webhook(db, "http://127.0.0.1:9/paused")
    conn.execute("SELECT webhooks.pause_webhook(%s)", (paused["id"],))
    _one_row_writes(conn, 3)
    conn.execute("SELECT webhooks._roll_blocks('0')")
    assert _held(conn) == {}  # closed, but within the retention: kept by the retention itself
    _age(conn)
    assert _maintain(conn) == (0, 0, 0)
    assert _held(conn) == {("captures", 0): {paused["id"]}}
    create_webhook(db, "http://127.0.0.1:9/healthy")
    _one_row_writes(conn, 2, "later")
    assert _answer(conn) == 2  # the neighbour's; the paused webhook's wait
    assert _held(conn) == {("captures", 0): {paused["id"]}}
    conn.execute("SELECT webhooks.delete_webhook(%s)", (paused["id"],))
    assert _held(conn) == {}


def test_the_operators_view_leaves_out_a_block_dropped_while_it_reads(db: str, conn: psycopg.Connection) -> None:
    """A reader whose snapshot still lists a block that maintain() has since dropped (here a
    REPEATABLE READ transaction begun before the drop) is shown the others, not an error."""
    _delivered_and_aged(db, conn, 3)
    with psycopg.connect(db) as reader:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM webhooks.webhooks").fetchone()  # the snapshot, before the drop
        _maintain(conn)
        assert "deliveries_0" not in _blocks(conn, "deliveries")
        seen = reader.execute("SELECT family, block FROM webhooks.outbox_blocks").fetchall()
        assert ("deliveries", 0) not in seen and ("deliveries", 1) in seen


def test_blocks_go_whole_when_maintain_is_a_prepared_statement(db: str, conn: psycopg.Connection) -> None:
    """The runner's connection prepares a query it has run 5 times: its calls are still their own
    transactions, and still empty blocks."""
    create_table(db)
    create_webhook(db, "http://127.0.0.1:9/hook")
    for _ in range(8):
        conn.execute("SELECT * FROM webhooks.maintain()", prepare=True)
    _one_row_writes(conn, 4)
    assert _answer(conn) == 4
    _age(conn)
    conn.execute("SELECT * FROM webhooks.maintain()", prepare=True)  # closes the block, empties its deliveries
    assert "deliveries_0" not in _blocks(conn, "deliveries")
    conn.execute("SELECT * FROM webhooks.maintain()", prepare=True)
    assert "captures_0" not in _blocks(conn, "captures")


def test_a_change_written_late_into_a_closed_block_is_kept(db: str, conn: psycopg.Connection) -> None:
    _delivered_and_aged(db, conn, 5)
    # A writer whose capture took its id (and its block) before the roll, and commits after the
    # emptying was decided: maintain() must not take its row, nor wait for it.
    with psycopg.connect(db) as writer:
        writer.execute("INSERT INTO items (label) VALUES ('late')")
        started = time.monotonic()
        removed = _maintain(conn)
        assert time.monotonic() - started < 5
        writer.commit()
    # The deliveries' block went (nothing of the writer's is there); the captures' block stayed.
    assert removed[0] == 5 and "captures_0" in _blocks(conn, "captures")
    claimed = conn.execute("SELECT body::jsonb -> 'record' ->> 'label' FROM webhooks.claim(10)").fetchall()
    assert claimed == [("late",)]


def test_writers_and_publishers_never_wait_for_an_emptied_block(db: str, conn: psycopg.Connection) -> None:
    create_table(db)
    create_webhook(db, "http://127.0.0.1:9/hook")
    conn.execute("SELECT webhooks.create_event_type('order.completed')")
    _one_row_writes(conn, 5)
    assert _answer(conn) == 5
    _age(conn)
    conn.execute("SELECT webhooks._roll_blocks('1 day')")
    with psycopg.connect(db) as maintainer, psycopg.connect(db, autocommit=True) as writer:
        # The emptying's TRUNCATE, its locks held (as a slow commit would).
        assert maintainer.execute("SELECT webhooks._truncate_blocks(ARRAY['captures_0', 'events_0', 'deliveries_0',"
                                  " 'delivery_attempts_0'], 'SELECT true')").fetchone() == (True,)
        writer.execute("SET lock_timeout = '2s'")
        writer.execute("INSERT INTO items (label) VALUES ('during')")
        writer.execute("INSERT INTO items (label) SELECT 'bulk' || g FROM generate_series(1, 3) g")
        writer.execute("SELECT webhooks.publish('order.completed', '{\"n\": 1}')")
        maintainer.commit()
    assert conn.execute("SELECT count(*) FROM webhooks.captures").fetchone() == (3,)


def test_maintain_inside_a_longer_transaction_leaves_blocks_alone(db: str, conn: psycopg.Connection) -> None:
    """Its locks would last as long as the caller's transaction: it deletes row by row instead."""
    _delivered_and_aged(db, conn, 5)
    with psycopg.connect(db) as caller:
        caller.execute("SELECT 1")
        time.sleep(0.05)  # an application's work in the same transaction
        assert caller.execute("SELECT deliveries, captures FROM webhooks.maintain()").fetchone() == (5, 5)
        caller.commit()
    assert _blocks(conn, "deliveries")[0] == "deliveries_0"
    assert conn.execute("SELECT webhooks._roll_blocks('1 day')").fetchone() == (0,)  # nothing left to roll


@pytest.mark.parametrize("role", ["webhooks_admin", "webhooks_runner", "webhooks_publisher", "webhooks_viewer",
                                  "webhooks_capture", "app_writer_blocks"])
def test_no_role_reaches_a_block_but_through_its_table(conn: psycopg.Connection, role: str) -> None:
    if role == "app_writer_blocks":  # an application's own role, as the writers of watched tables have
        conn.execute("DO $$ BEGIN CREATE ROLE app_writer_blocks; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    conn.execute(f"SET ROLE {role}")
    try:
        for block in ("deliveries_0", "deliveries_1", "captures_default", "events_1", "delivery_attempts_0"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT count(*) FROM webhooks.{block}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"TRUNCATE webhooks.{block}")
        # The operator's view of them is for who operates: admin and viewer.
        if role in ("webhooks_admin", "webhooks_viewer"):
            conn.execute("SELECT count(*) FROM webhooks.outbox_blocks").fetchone()
        else:
            for query in ("SELECT * FROM webhooks.outbox_blocks", "SELECT * FROM webhooks.get_outbox_blocks()"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(query)
        # Its totals for /metrics: the runner too, and nobody else.
        if role in ("webhooks_admin", "webhooks_viewer", "webhooks_runner"):
            conn.execute("SELECT count(*) FROM webhooks.runner_outbox()").fetchone()
        else:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM webhooks.runner_outbox()")
        for call in ("webhooks._empty_blocks(now())", "webhooks._roll_blocks('0')",
                     "webhooks._truncate_blocks(ARRAY['deliveries_1'], 'SELECT true')",
                     "webhooks._drop_blocks(ARRAY['deliveries_1'])", "webhooks._create_block('deliveries', 9)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT {call}")
    finally:
        conn.execute("RESET ROLE")


def test_ids_past_every_block_created_ahead_are_still_written_and_sent(db: str, conn: psycopg.Connection) -> None:
    """maintain() never ran for a long time: the DEFAULT block takes what no block covers."""
    create_table(db)
    create_webhook(db, "http://127.0.0.1:9/hook")
    conn.execute("SELECT setval('webhooks.captures_id_seq', %s)", (10 * BLOCK,))
    conn.execute("SELECT setval('webhooks.deliveries_id_seq', %s)", (10 * BLOCK,))
    _one_row_writes(conn, 3)
    assert _answer(conn) == 3
    where = conn.execute("SELECT DISTINCT tableoid::regclass::text FROM webhooks.deliveries").fetchall()
    assert where == [("webhooks.deliveries_default",)]
    _age(conn)
    # maintain() rolls on from there; the DELETE pass takes the old rows of the DEFAULT block.
    assert _maintain(conn) == (3, 3, 3)
    _one_row_writes(conn, 2, "after")
    assert _answer(conn) == 2


def test_the_delete_pass_steps_over_the_gap_between_blocks(db: str, conn: psycopg.Connection) -> None:
    create_table(db)
    stuck = create_webhook(db, "http://127.0.0.1:9/stuck", max_retries=5)
    create_webhook(db, "http://127.0.0.1:9/healthy")
    _one_row_writes(conn, 3)
    assert _answer(conn, {str(stuck["id"]): 500}) == 6  # block 0 keeps a retry
    _age(conn)
    conn.execute("SELECT webhooks._roll_blocks('0')")
    _one_row_writes(conn, 3, "b")
    assert _answer(conn, {str(stuck["id"]): 500}) == 6  # so does block 1
    _age(conn)
    # Windows of 5,000 ids over a gap of 2^36 would take millions of steps; maintain() takes one.
    started = time.monotonic()
    row = conn.execute("SELECT deliveries, more FROM webhooks.maintain(batch_size => 10)").fetchone()
    assert row == (6, False) and time.monotonic() - started < 5



def test_a_block_found_not_done_under_its_lock_gives_the_lock_back(db: str, conn: psycopg.Connection) -> None:
    """A row that landed late makes the check under the lock fail: the lock must go at once, not
    at the end of maintain()'s transaction, or every claim reading the block queues behind it."""
    _delivered_and_aged(db, conn, 3)
    blocks = "ARRAY['deliveries_0', 'delivery_attempts_0']"
    locked = ("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND mode = 'AccessExclusiveLock'"
              " AND relation = 'webhooks.deliveries_0'::regclass")
    with psycopg.connect(db) as maintainer:
        assert maintainer.execute(f"SELECT webhooks._truncate_blocks({blocks}, 'SELECT false')").fetchone() == (False,)
        assert maintainer.execute(locked).fetchone() == (0,)
        # A check that answers nothing is no "done" either.
        unknown = f"SELECT webhooks._truncate_blocks({blocks}, 'SELECT NULL::boolean')"
        assert maintainer.execute(unknown).fetchone() == (False,)
        assert maintainer.execute("SELECT count(*) FROM webhooks.deliveries_0").fetchone() == (3,)
        assert maintainer.execute(f"SELECT webhooks._truncate_blocks({blocks}, 'SELECT true')").fetchone() == (True,)
        assert maintainer.execute(locked).fetchone() == (1,)  # emptied: held until its commit, as it must be
        maintainer.rollback()
    assert conn.execute("SELECT count(*) FROM webhooks.deliveries").fetchone() == (3,)
