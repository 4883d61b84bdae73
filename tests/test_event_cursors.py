"""Published events through cursors (migration 0022, sql/functions/041_cursors.sql), as writers,
runners, admins and neighbours meet them: every event given once, in whatever order publishers
commit; a long transaction (in this database or another) delays others' events by the patience,
not by its length; a subscription made while a publisher is open loses nothing; disabled, paused
and deleted webhooks; routes at rest; roles that may not move a cursor."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from helpers import claimed_while_writers_commit_out_of_order, empty_database, receiver, runner_config, running
from helpers import create_webhook as create_receiving_webhook
from psycopg.types.json import Jsonb

from conftest import Server

PUBLISH = "SELECT webhooks.publish('order.created', %s)"
UPDATE = "SELECT webhooks.update_webhook(id, %s) FROM webhooks.webhooks WHERE name = %s"
CATCH_UP = "UPDATE webhooks.cursors c SET xid = x.xid, id = x.id FROM webhooks.captures x WHERE x.route = c.route"


@pytest.fixture
def events(db: str) -> Iterator[str]:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT webhooks.create_event_type('order.created')")
        conn.execute("SELECT webhooks.create_webhook('a', 'https://e.com/a', '[{\"event_type\": \"order.*\"}]')")
        conn.execute("SELECT webhooks.create_webhook('b', 'https://e.com/b', '[{\"event_type\": \"*\"}]')")
    yield db


def publish(conn: psycopg.Connection[Any], n: int) -> uuid.UUID:
    row = conn.execute(PUBLISH, (Jsonb({"n": n}),)).fetchone()
    assert row is not None
    return row[0]


def claim_all(conn: psycopg.Connection[Any]) -> list[tuple[str, int]]:
    """(webhook name, event n) of the order.created events one claim() hands out (pgwebhooks'
    own alerts, which '*' also receives, left out); everything claimed is reported delivered."""
    rows = conn.execute(
        "SELECT c.delivery_id, c.attempt, w.name, (c.body::jsonb -> 'data' ->> 'n')::int, c.body::jsonb ->> 'type'"
        " FROM webhooks.claim(1000) c JOIN webhooks.webhooks w ON w.id = c.webhook_id").fetchall()
    if rows:
        conn.execute("SELECT * FROM webhooks.complete(%s)", (Jsonb([
            {"delivery_id": d, "attempt": a, "status_code": 200} for d, a, _, _, _ in rows]),))
    return [(name, n) for _, _, name, n, kind in rows if kind == "order.created"]


def drain(conn: psycopg.Connection[Any], until: int, seconds: float = 15.0) -> list[tuple[str, int]]:
    """Claim until `until` deliveries came, or the time is up (bounded)."""
    got: list[tuple[str, int]] = []
    deadline = time.monotonic() + seconds
    while len(got) < until and time.monotonic() < deadline:
        got += claim_all(conn)
        time.sleep(0.05)
    return got


def test_every_event_is_given_once_whatever_order_publishers_commit_in(events: str) -> None:
    """Four publishers, each holding its transaction open for a while after publishing, commit
    out of xid order while a claimer runs; every event reaches both webhooks exactly once."""
    per_writer, writers = 40, 4
    got = claimed_while_writers_commit_out_of_order(events, publish, claim_all, drain, 2 * per_writer * writers,
                                                    writers, per_writer)
    expected = sorted((h, w * 1000 + i) for h in ("a", "b") for w in range(writers) for i in range(per_writer))
    assert sorted(got) == expected  # none missing, none twice


def test_a_long_transaction_delays_others_events_by_the_patience_not_its_length(events: str) -> None:
    """A transaction holding an xid in the same database (on a table of its own) keeps the
    cursors' horizon: events committed after it began go out once a second old (ahead of the
    cursor), and none twice when it ends."""
    with psycopg.connect(events) as holder, psycopg.connect(events, autocommit=True) as conn:
        holder.execute("CREATE TABLE t (x int)")
        holder.execute("INSERT INTO t VALUES (1)")  # an xid, held open
        published = time.monotonic()
        publish(conn, 1)
        publish(conn, 2)
        assert claim_all(conn) == []  # under a second old, behind a running writer: not yet
        got = drain(conn, 4, seconds=10)
        waited = time.monotonic() - published
        assert sorted(got) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
        assert 0.9 <= waited < 5, waited
        holder.commit()
        publish(conn, 3)
        got = drain(conn, 2, seconds=10)
        time.sleep(1.2)
        got += claim_all(conn)
        assert sorted(got) == [("a", 3), ("b", 3)]  # the cursor passed 1 and 2: given ahead, not again


def test_a_long_transaction_in_another_database_delays_nothing(server: Server, events: str) -> None:
    """The server's transaction ids and snapshots are shared by its databases; a writer left open
    in another one writes nothing here, so this database's events go out at once, not a second
    late (they did until 0.8.1: every event behind it waited for the patience)."""
    with empty_database(server, "neighbour") as other, psycopg.connect(other) as holder, \
            psycopg.connect(events, autocommit=True) as conn:
        holder.execute("CREATE TABLE t (x int)")
        holder.execute("INSERT INTO t VALUES (1)")  # an xid, held open
        publish(conn, 1)
        assert conn.execute("SELECT webhooks.next_due_in()").fetchone() == (0,)  # due now, not in a second
        assert sorted(claim_all(conn)) == [("a", 1), ("b", 1)]  # the first claim: no wait
        holder.commit()
        publish(conn, 2)
        got = drain(conn, 2, seconds=10)
        time.sleep(1.2)
        got += claim_all(conn)
        assert sorted(got) == [("a", 2), ("b", 2)]  # and nothing twice


def test_an_event_published_in_a_transaction_left_open_goes_once_it_commits(events: str) -> None:
    with psycopg.connect(events) as slow, psycopg.connect(events, autocommit=True) as conn:
        publish(slow, 1)  # open, holding its xid
        publish(conn, 2)
        got = drain(conn, 2, seconds=10)  # given ahead of the open one
        assert sorted(got) == [("a", 2), ("b", 2)]
        slow.commit()
        got = drain(conn, 2, seconds=10)
        time.sleep(1.2)
        got += claim_all(conn)
        assert sorted(got) == [("a", 1), ("b", 1)]


def test_a_subscription_made_while_a_publisher_is_open_loses_nothing(events: str) -> None:
    with psycopg.connect(events) as publisher, psycopg.connect(events, autocommit=True) as admin:
        publish(publisher, 1)  # before the subscription, not yet committed
        admin.execute("SELECT webhooks.create_webhook('late', 'https://e.com/late', %s)",
                      (Jsonb([{"event_type": "order.created"}]),))
        publish(publisher, 2)
        publisher.commit()
        got = drain(admin, 6)
        assert sorted(got) == [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("late", 1), ("late", 2)]
        publish(admin, 3)
        assert sorted(drain(admin, 3)) == [("a", 3), ("b", 3), ("late", 3)]


def test_disabled_paused_and_deleted_webhooks(events: str) -> None:
    with psycopg.connect(events, autocommit=True) as conn:
        conn.execute(UPDATE, (Jsonb({"enabled": False}), "a"))
        conn.execute("SELECT webhooks.pause_webhook(id, 'maintenance') FROM webhooks.webhooks WHERE name = 'b'")
        publish(conn, 1)
        assert claim_all(conn) == []
        assert conn.execute("SELECT count(*) FROM webhooks.deliveries d JOIN webhooks.webhooks w"
                            " ON w.id = d.webhook_id WHERE w.name = 'a'").fetchone() == (0,)  # disabled: nothing
        conn.execute(UPDATE, (Jsonb({"enabled": True}), "a"))
        conn.execute("SELECT webhooks.resume_webhook(id) FROM webhooks.webhooks WHERE name = 'b'")
        publish(conn, 2)
        assert sorted(drain(conn, 3)) == [("a", 2), ("b", 1), ("b", 2)]  # paused: held, then sent
        conn.execute("SELECT webhooks.delete_webhook(id) FROM webhooks.webhooks WHERE name = 'b'")
        assert conn.execute("SELECT count(*) FROM webhooks.cursors c WHERE NOT EXISTS"
                            " (SELECT 1 FROM webhooks.webhooks w WHERE w.id = c.webhook_id)").fetchone() == (0,)
        publish(conn, 3)
        assert drain(conn, 1) == [("a", 3)]


def test_a_route_comes_to_rest_and_a_publish_wakes_it(events: str) -> None:
    with psycopg.connect(events, autocommit=True) as conn:
        publish(conn, 1)
        assert len(drain(conn, 2)) == 2
        state = "SELECT route_state FROM webhooks.event_types WHERE name = 'order.created'"
        deadline = time.monotonic() + 10
        while conn.execute(state).fetchone() != ("idle",) and time.monotonic() < deadline:
            conn.execute("SELECT webhooks._rest_routes(true)")
            time.sleep(0.05)
        assert conn.execute(state).fetchone() == ("idle",)
        assert conn.execute("SELECT count(*) FROM webhooks._open_routes() o JOIN webhooks.event_types t"
                            " ON t.route = o.route WHERE t.name = 'order.created'").fetchone() == (0,)
        publish(conn, 2)
        assert conn.execute("SELECT count(*) FROM webhooks._route_wakes").fetchone() == (1,)
        assert sorted(drain(conn, 2)) == [("a", 2), ("b", 2)]


def test_maintain_keeps_an_event_until_every_cursor_has_passed_it(events: str) -> None:
    with psycopg.connect(events, autocommit=True) as conn:
        conn.execute("SELECT webhooks.pause_webhook(id, 'x') FROM webhooks.webhooks WHERE name = 'b'")
        conn.execute("UPDATE webhooks.cursors SET xid = '0', id = 0")  # as if b had not been given it yet
        publish(conn, 1)
        conn.execute("UPDATE webhooks.captures SET occurred_at = now() - interval '30 days'")
        conn.execute("UPDATE webhooks.cursors c SET xid = x.xid, id = x.id FROM webhooks.captures x,"
                     " webhooks.webhooks w WHERE w.id = c.webhook_id AND w.name = 'a' AND x.route = c.route")
        conn.execute("SELECT * FROM webhooks.maintain()")
        assert conn.execute("SELECT count(*) FROM webhooks.captures").fetchone() == (1,)  # b's cursor is behind
        conn.execute(CATCH_UP)
        conn.execute("SELECT * FROM webhooks.maintain()")
        assert conn.execute("SELECT count(*) FROM webhooks.captures").fetchone() == (0,)


@pytest.mark.parametrize("role", ["webhooks_publisher", "webhooks_admin", "webhooks_runner", "webhooks_viewer"])
def test_no_role_can_read_or_move_a_cursor(events: str, role: str) -> None:
    with psycopg.connect(events, autocommit=True) as conn:
        conn.execute(f"SET ROLE {role}")
        for sql in ("SELECT * FROM webhooks.cursors", "UPDATE webhooks.cursors SET id = 0",
                    "INSERT INTO webhooks._route_wakes VALUES (1)", "SELECT webhooks._fill_from_cursors(10)",
                    "UPDATE webhooks.event_types SET route_state = 'idle'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)


async def test_a_runner_delivers_published_events_once(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT webhooks.create_event_type('order.created')")
    async with receiver() as rx:
        create_receiving_webhook(db, rx.url, events=Jsonb([{"event_type": "order.created"}]))
        async with running(runner_config(db)):
            with psycopg.connect(db, autocommit=True) as conn:
                ids = [publish(conn, n) for n in range(50)]
            requests = await rx.wait_for(50, timeout=30)
    assert sorted(r.headers["webhook-id"] for r in requests) == sorted(str(i) for i in ids)


def test_events_published_before_the_upgrade_keep_the_fan_out(events: str) -> None:
    """An event 0.5.3's publish() left (no route, not fanned out yet) still goes, by fan-out;
    one published after the upgrade takes the cursors; each is given once."""
    with psycopg.connect(events, autocommit=True) as conn:
        conn.execute("INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids,"
                     " row_count, event_type, data, published_id) SELECT 'EVENT', 0, 'webhooks', 'events',"
                     " webhook_ids, 1, 'order.created', '{\"n\": 0}', gen_random_uuid() FROM webhooks.event_types"
                     " WHERE name = 'order.created'")
        publish(conn, 1)
        assert sorted(drain(conn, 4)) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
        time.sleep(0.3)
        assert claim_all(conn) == []


def test_the_horizon_never_passes_a_writer_the_snapshot_does_not_list(events: str) -> None:
    """Writers that took their ids after the last transaction that completed are running but not
    listed in a snapshot (they are at or past its xmax). A claim whose own transaction has an id
    (it moved a route to rest, say) must still not pass them: an earlier version took its own id
    as the horizon there, passed a later writer's committed events, and lost the first writer's."""
    with psycopg.connect(events) as first, psycopg.connect(events) as second, psycopg.connect(events) as claimer:
        publish(first, 1)
        publish(second, 2)
        first_xid = first.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        claimer.execute("SELECT pg_current_xact_id()")  # the claim's own id, after both
        horizon = claimer.execute("SELECT webhooks._cursor_horizon()::text::bigint").fetchone()
        assert first_xid is not None and horizon is not None
        assert horizon[0] <= first_xid[0]
        claimer.rollback()
        second.commit()
        first.commit()
    with psycopg.connect(events, autocommit=True) as conn:
        assert sorted(drain(conn, 4)) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]


def test_a_pattern_gives_a_cursor_on_every_type_it_matches(events: str) -> None:
    with psycopg.connect(events, autocommit=True) as conn:
        for name in ("order.paid", "order.shipped"):
            conn.execute("SELECT webhooks.create_event_type(%s)", (name,))
        cursors = ("SELECT count(*) FROM webhooks.cursors k JOIN webhooks.webhooks w ON w.id = k.webhook_id"
                   " WHERE w.name = 'a'")
        assert conn.execute(cursors).fetchone() == (3,)  # order.* matches all three
        for name in ("order.created", "order.paid", "order.shipped"):
            conn.execute("SELECT webhooks.publish(%s, %s)", (name, Jsonb({"n": 1})))
        got = conn.execute("SELECT count(*) FROM webhooks.claim(100) c JOIN webhooks.webhooks w"
                           " ON w.id = c.webhook_id WHERE w.name = 'a'").fetchone()
        assert got == (3,)
        conn.execute(UPDATE, (Jsonb({"events": [{"event_type": "order.paid"}]}), "a"))
        assert conn.execute(cursors).fetchone() == (1,)
