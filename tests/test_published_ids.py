"""A published event's id (its webhook-id) is drawn when publish() runs and stored with the event
(migration 0021). It must be what publish() returned at every attempt, replay and listing; an
event published before the upgrade keeps its derived id; a copy of the database sends the events
it inherited under the original's ids and its own under new ones; and no role can choose or
rewrite an id."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from helpers import FUZZ, database_copy, receiver, runner_config, running
from helpers import create_webhook as create_receiving_webhook
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb
from receivers import Reply
from standardwebhooks.webhooks import Webhook

from conftest import Server

PUBLISH = "SELECT webhooks.publish('order.created', %s)"


@pytest.fixture
def events(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute("SELECT webhooks.create_event_type('order.created')")
    conn.execute("SELECT webhooks.create_webhook('w', 'https://e.com/x', '[{\"event_type\": \"order.created\"}]')")
    conn.commit()
    return conn


def publish(conn: psycopg.Connection, data: object) -> uuid.UUID:
    row = conn.execute(PUBLISH, (Jsonb(data),)).fetchone()
    assert row is not None
    return row[0]


def sent_ids(conn: psycopg.Connection) -> list[tuple[str, uuid.UUID]]:
    """(data's n, webhook-id) of what one claim() hands out, in delivery order."""
    rows = conn.execute("SELECT body::jsonb -> 'data' ->> 'n', headers ->> 'webhook-id' FROM webhooks.claim(100)"
                        " ORDER BY delivery_id").fetchall()
    return [(n, uuid.UUID(i)) for n, i in rows]


async def test_every_attempt_and_replay_sends_the_id_publish_returned(db: str) -> None:
    """End to end: the first attempt fails, the retry and a replay succeed; each is signed under
    the id publish() returned, and the delivery log lists it."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT webhooks.create_event_type('order.created')")
    async with receiver([Reply(500), Reply(200)]) as rx:
        hook = create_receiving_webhook(db, rx.url, events=Jsonb([{"event_type": "order.created"}]),
                                        retry_schedule=["1 second"])
        with psycopg.connect(db, autocommit=True) as conn:
            returned = publish(conn, {"n": 1})
        async with running(runner_config(db)):
            await rx.wait_for(2, timeout=20)
            with psycopg.connect(db, autocommit=True) as conn:
                delivery = conn.execute("SELECT delivery_id, event_id FROM webhooks.get_deliveries(%s)",
                                        (hook["id"],)).fetchone()
                assert delivery is not None and delivery[1] == returned
                conn.execute("SELECT webhooks.replay(%s)", (delivery[0],))
            requests = await rx.wait_for(3, timeout=20)
    assert [r.headers["webhook-id"] for r in requests] == [str(returned)] * 3
    for r in requests:
        Webhook(hook["secret"]).verify(r.body, dict(r.headers))  # any Standard Webhooks library accepts it


def test_an_event_published_before_the_upgrade_keeps_its_derived_id(events: psycopg.Connection) -> None:
    """0.5.2's publish() stored no id: such an event is sent under md5(salt/capture/1), as then."""
    publish(events, {"n": "old"})
    events.execute("UPDATE webhooks.captures SET published_id = NULL")  # as 0.5.2 left it
    derived = events.execute("SELECT webhooks._event_uid(id, 1) FROM webhooks.captures").fetchone()
    new = publish(events, {"n": "new"})
    assert sent_ids(events) == [("old", derived[0] if derived else None), ("new", new)]


def test_a_copy_sends_inherited_events_under_the_originals_ids_and_its_own_under_new_ones(
        server: Server, events: psycopg.Connection) -> None:
    inherited = publish(events, {"n": "inherited"})  # published, not yet fanned out when copied
    events.commit()
    name = events.info.dbname
    events.close()
    with database_copy(server, name) as copy_dsn, psycopg.connect(copy_dsn, autocommit=True) as in_copy, \
                psycopg.connect(server.dsn_for(name), autocommit=True) as original:
        own = publish(in_copy, {"n": "copy's"})
        theirs = publish(original, {"n": "original's"})
        same_capture = "SELECT max(id) FROM webhooks.captures"
        # Both number their next event alike: a derived id would be the same for both.
        assert in_copy.execute(same_capture).fetchone() == original.execute(same_capture).fetchone()
        assert sent_ids(in_copy) == [("inherited", inherited), ("copy's", own)]
        assert sent_ids(original) == [("inherited", inherited), ("original's", theirs)]
        assert own != theirs


@pytest.mark.parametrize("role", ["webhooks_publisher", "webhooks_admin", "webhooks_runner", "webhooks_viewer"])
def test_no_role_can_choose_or_rewrite_an_events_id(events: psycopg.Connection, role: str) -> None:
    returned = publish(events, {"n": 1})
    events.commit()
    events.execute(f"SET ROLE {role}")
    try:
        for call in (
            "UPDATE webhooks.captures SET published_id = gen_random_uuid()",
            "INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count,"
            " event_type, data, published_id) VALUES ('EVENT', 0, 'webhooks', 'events', '{}', 1,"
            " 'order.created', '{}', gen_random_uuid())",
            "SELECT webhooks._check_publish('order.created', '{}')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                events.execute(call)
            events.rollback()
            events.execute(f"SET ROLE {role}")
    finally:
        events.rollback()
        events.execute("RESET ROLE")
    assert sent_ids(events) == [("1", returned)]


@pytest.fixture
def publisher(events: psycopg.Connection) -> Iterator[psycopg.Connection]:
    events.execute("SET ROLE webhooks_publisher")
    yield events
    events.rollback()


# Data on both sides of publish()'s one-statement path (uncompressed and at most 512 bytes) and of
# the depth limit: nested arrays and objects around strings of any length.
# No NUL: jsonb cannot hold one (its input refuses \u0000), so no such value reaches publish().
no_nul = st.characters(codec="utf-8", exclude_characters="\x00")
leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.text(no_nul, max_size=300))
nested = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(no_nul, max_size=5), inner, max_size=3)),
                      max_leaves=12)


@settings(FUZZ, max_examples=80)
@given(inner=nested, depth=st.integers(min_value=0, max_value=70))
def test_either_path_stores_what_the_checks_accept_under_a_fresh_id(publisher: psycopg.Connection,
                                                                   inner: object, depth: int) -> None:
    """publish() takes small data in its lookup and checks the rest with _check_publish: whichever
    path a value takes, it is refused exactly when _check_event_data refuses it, and an accepted
    value is stored as given, under an id no other event has."""
    data: object = inner
    for _ in range(depth):
        data = [data]
    with publisher.transaction(force_rollback=True):
        publisher.execute("RESET ROLE")
        try:
            with publisher.transaction():
                publisher.execute("SELECT webhooks._check_event_data('data', %s)", (Jsonb(data),))
            valid = True
        except psycopg.Error as e:
            assert e.sqlstate in ("WH030", "WH031"), e
            valid = False
        publisher.execute("SET ROLE webhooks_publisher")
        try:
            with publisher.transaction():
                returned = publish(publisher, data)
        except psycopg.Error as e:
            assert not valid and e.sqlstate in ("WH030", "WH031"), e
            return
        assert valid
        publisher.execute("RESET ROLE")
        stored = publisher.execute("SELECT data = %s, (SELECT count(*) FROM webhooks.captures"
                                   " WHERE published_id = %s) FROM webhooks.captures WHERE published_id = %s",
                                   (Jsonb(data), returned, returned)).fetchone()
        assert stored == (True, 1)
