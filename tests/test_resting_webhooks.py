"""Webhooks at rest (sql/functions/044_resting_webhooks.sql): a webhook without unfinished
deliveries is not probed by claim() or next_due_in(), and never comes to rest while a delivery
of it may still commit."""

from __future__ import annotations

import psycopg
import pytest
from helpers import create_table, eventually, insert, receiver, runner_config, running
from helpers import create_webhook as create_receiving_webhook
from outbox_helpers import create_webhook, scalar
from psycopg.types.json import Jsonb


def states(conn: psycopg.Connection) -> dict[str, str]:
    return {str(w): s for w, s in conn.execute("SELECT webhook_id, work_state FROM webhooks.endpoints")}


def unrested(conn: psycopg.Connection) -> list[str]:
    return sorted(str(w) for (w,) in conn.execute("SELECT webhook_id FROM webhooks._unrested()"))


def rest(conn: psycopg.Connection, times: int = 1) -> None:
    for _ in range(times):
        conn.execute("SELECT webhooks._rest_webhooks(webhooks._open_floors(), true)")


def test_a_webhook_comes_to_rest_in_three_steps_and_wakes_on_its_next_delivery(conn, table) -> None:
    conn.execute("CREATE TABLE other (id int PRIMARY KEY)")
    hook = str(create_webhook(conn))
    other = str(create_webhook(conn, table="other"))
    assert states(conn) == {hook: "open", other: "open"}
    rest(conn)
    assert states(conn) == {hook: "emptied", other: "emptied"}
    assert scalar(conn, "SELECT count(*) FROM webhooks.endpoints WHERE work_horizon IS NULL") == 2
    rest(conn)
    assert scalar(conn, "SELECT count(*) FROM webhooks.endpoints WHERE work_horizon IS NOT NULL") == 2
    rest(conn)
    assert states(conn) == {hook: "idle", other: "idle"}

    conn.execute("INSERT INTO bulk VALUES (1, 1)")
    claimed = conn.execute("SELECT webhook_id FROM webhooks.claim(10)").fetchall()
    assert [str(w) for (w,) in claimed] == [hook]
    assert unrested(conn) == [hook]  # woken by its delivery
    # The wake opens it; leased is unfinished, so it stays open until the result is in.
    rest(conn, 3)
    assert states(conn) == {hook: "open", other: "idle"}
    assert scalar(conn, "SELECT count(*) FROM webhooks._wakes") == 0


def test_no_rest_while_a_transaction_that_read_open_may_still_commit_a_delivery(db, conn, table) -> None:
    """The race the horizon is for: the writer reads the row while it is 'open' (and so changes
    nothing), then stays open while the other steps run. A rest that skipped the horizon (or
    took it from the first step) strands its delivery: nothing would ever claim it."""
    hook = str(create_webhook(conn))
    with psycopg.connect(db) as writer:
        delivery = scalar(writer, "SELECT webhooks.send_test(%s)", hook)
        assert states(conn)[hook] == "open"
        rest(conn, 6)
        # Emptied (its delivery is not visible), but its horizon is above the writer's id.
        assert states(conn)[hook] == "emptied"
        writer.commit()
    rest(conn)
    assert states(conn)[hook] == "open"
    assert [d for (d,) in conn.execute("SELECT delivery_id FROM webhooks.claim(10)")] == [delivery]


def test_a_writer_that_reads_the_mark_wakes_the_webhook_without_waiting(db, conn, table) -> None:
    hook = str(create_webhook(conn))
    rest(conn, 2)
    assert states(conn)[hook] == "emptied"
    with psycopg.connect(db) as writer:
        writer.execute("SET lock_timeout = '200ms'")  # waiting on anyone would be an error
        delivery = scalar(writer, "SELECT webhooks.send_test(%s)", hook)
        # The writer's wake is not visible yet: rest may go on to idle meanwhile.
        rest(conn, 3)
        assert unrested(conn) == []
        writer.commit()
    assert unrested(conn) == [hook]
    assert [d for (d,) in conn.execute("SELECT delivery_id FROM webhooks.claim(10)")] == [delivery]
    rest(conn)
    assert states(conn)[hook] == "open"


def test_an_open_transaction_that_woke_a_webhook_blocks_no_claim(db, conn, table) -> None:
    """An admin's send_test left open, and a claim of another runner left open, both having woken
    the same webhooks: a third claim fans out new changes for them without waiting on either."""
    conn.execute("CREATE TABLE other (id int PRIMARY KEY)")
    hooks = sorted([str(create_webhook(conn)), str(create_webhook(conn, table="other"))])
    rest(conn, 3)
    assert set(states(conn).values()) == {"idle"}
    with psycopg.connect(db) as admin, psycopg.connect(db) as runner, psycopg.connect(db) as third:
        for hook in hooks:
            admin.execute("SELECT webhooks.send_test(%s)", (hook,))
        # Two rows a statement: fanned out, not left on a route behind the open send_test (a
        # one-row change would wait the cursors' patience, 041_cursors.sql).
        conn.execute("INSERT INTO bulk VALUES (1, 1), (11, 1)")
        conn.execute("INSERT INTO other VALUES (1), (11)")
        assert len(runner.execute("SELECT * FROM webhooks.claim(10)").fetchall()) == 4
        conn.execute("INSERT INTO bulk VALUES (2, 2), (12, 2)")
        conn.execute("INSERT INTO other VALUES (2), (12)")
        third.execute("SET lock_timeout = '200ms'")
        claimed = third.execute("SELECT webhook_id FROM webhooks.claim(10)").fetchall()
        assert sorted(str(w) for (w,) in claimed) == sorted(hooks * 2)
        third.commit()
        runner.commit()
        admin.commit()
    rest(conn)
    assert set(states(conn).values()) == {"open"}
    assert len(conn.execute("SELECT * FROM webhooks.claim(10)").fetchall()) == 2  # the two tests


def test_a_rolled_back_delivery_leaves_the_webhook_to_rest(db, conn, table) -> None:
    hook = str(create_webhook(conn))
    rest(conn, 3)
    with psycopg.connect(db) as writer:
        writer.execute("SELECT webhooks.send_test(%s)", (hook,))
        writer.rollback()
    assert states(conn)[hook] == "idle"
    assert conn.execute("SELECT * FROM webhooks.claim(10)").fetchall() == []


def test_claim_does_not_probe_webhooks_at_rest(conn, table) -> None:
    """200 idle webhooks beside one with work, with statistics taken while all were open (the
    planner then preferred walking every webhook): the due-work probe runs for one webhook."""
    conn.execute("CREATE TABLE quiet (id int PRIMARY KEY)")
    for _ in range(200):
        create_webhook(conn, table="quiet")
    busy = str(create_webhook(conn))
    conn.execute("ANALYZE webhooks.endpoints")
    rest(conn, 3)
    conn.execute("INSERT INTO bulk VALUES (1, 1)")
    conn.execute("SELECT webhooks._fan_out(100), webhooks._fill_from_cursors(100)")
    assert unrested(conn) == [busy]
    conn.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
    plan = scalar(conn, "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM webhooks._due_webhooks('{}', '{}')")

    def loops(node: dict, relation: str) -> int:
        own = node.get("Actual Loops", 0) if node.get("Relation Name") == relation else 0
        return max([own] + [loops(child, relation) for child in node.get("Plans", [])])

    assert loops(plan[0]["Plan"], "webhooks") == 1  # settings read for the one webhook with work
    assert [str(w) for (w,) in conn.execute("SELECT id FROM webhooks._due_webhooks('{}', '{}')")] == [busy]


def test_next_due_in_sees_work_of_a_webhook_woken_since(conn, table) -> None:
    create_webhook(conn)
    rest(conn, 3)
    assert scalar(conn, "SELECT webhooks.next_due_in()") is None
    conn.execute("INSERT INTO bulk VALUES (1, 1)")
    assert scalar(conn, "SELECT webhooks.next_due_in()") == 0  # a capture to fan out
    conn.execute("SELECT webhooks._fan_out(100)")
    assert scalar(conn, "SELECT webhooks.next_due_in()") == 0  # its delivery is due


@pytest.mark.parametrize("role", ["webhooks_runner", "webhooks_admin", "webhooks_publisher", "webhooks_viewer"])
def test_no_role_may_move_a_webhook_to_rest_or_open_it(conn, table, role: str) -> None:
    hook = str(create_webhook(conn))
    conn.execute(f"SET ROLE {role}")
    try:
        for call in ("SELECT webhooks._rest_webhooks('{}', true)",
                     "SELECT * FROM webhooks._unrested()",
                     f"INSERT INTO webhooks._wakes VALUES ('{hook}')",
                     "DELETE FROM webhooks._wakes",
                     f"UPDATE webhooks.endpoints SET work_state = 'idle' WHERE webhook_id = '{hook}'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(call)
    finally:
        conn.execute("RESET ROLE")
    assert states(conn)[hook] == "open"


@pytest.mark.parametrize("gate", ["99999999999", "infinity", "not a time", "1e400"])
def test_a_session_that_never_rests_harms_no_one(db, conn, table, gate: str) -> None:
    """A runner may set the session's gate so its own claims never sweep (a time far ahead), or
    set it to anything at all: others still rest webhooks, and its claims still work and still
    find a webhook woken by a new delivery."""
    hook = str(create_webhook(conn))
    with psycopg.connect(db, autocommit=True) as lazy:
        lazy.execute("SELECT set_config('pgwebhooks.rested_at', %s, false)", (gate,))
        lazy.execute("SELECT set_config('pgwebhooks.endpoints_checked_at', %s, false)", (gate,))
        lazy.execute("SELECT count(*) FROM webhooks.claim(10)")
        rest(conn, 3)
        assert states(conn)[hook] == "idle"
        conn.execute("INSERT INTO bulk VALUES (1, 1)")
        assert [str(w) for (w,) in lazy.execute("SELECT webhook_id FROM webhooks.claim(10)")] == [hook]


def test_an_endpoints_row_lost_is_added_back(conn, table) -> None:
    hook = str(create_webhook(conn))
    conn.execute("DELETE FROM webhooks.endpoints")
    rest(conn)
    assert list(states(conn)) == [hook]


async def test_the_runner_delivers_to_webhooks_that_came_to_rest(db: str) -> None:
    """End to end with the runner: twenty webhooks deliver, all come to rest, and a new change
    for one of them, and a published event for another, still arrive."""
    create_table(db)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT webhooks.create_event_type('tenant.changed')")
    async with receiver() as rx:
        hooks = [create_receiving_webhook(db, rx.url, name=f"tenant-{n}") for n in range(19)]
        published = create_receiving_webhook(db, rx.url, name="events",
                                             events=Jsonb([{"event_type": "tenant.changed"}]))
        async with running(runner_config(db)):
            insert(db, 1)
            await rx.wait_for(19, timeout=20)
            with psycopg.connect(db, autocommit=True) as conn:
                def all_idle() -> bool:
                    return scalar(conn, "SELECT count(*) FROM webhooks.endpoints WHERE work_state <> 'idle'") == 0
                assert await eventually(all_idle, timeout=20)
                conn.execute("INSERT INTO items (label) VALUES ('late')")
                conn.execute("SELECT webhooks.publish('tenant.changed', '{\"n\": 1}')")
            requests = await rx.wait_for(19 + 19 + 1, timeout=20)
    late = [r.payload for r in requests[19:]]
    assert sorted(p["webhook_id"] for p in late) == sorted([str(h["id"]) for h in hooks] + [str(published["id"])])
