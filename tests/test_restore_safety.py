"""The restore check as an attacker (or an unlucky application) meets it in a copy of the
database: an open transaction that published must not stall every claim and publish, and a
session setting `pgwebhooks.identity_checked` by hand must not skip the check."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from helpers import database_copy

from conftest import Server

LATEST_SALT = "SELECT first_capture_id, salt FROM webhooks._salts ORDER BY first_capture_id DESC LIMIT 1"


@pytest.fixture
def clone(server: Server, conn: psycopg.Connection) -> Iterator[tuple[str, tuple[int, uuid.UUID]]]:
    """A copy (CREATE DATABASE ... TEMPLATE) of a database that has sent an event, and the salt
    the original used."""
    conn.execute("SELECT webhooks.create_event_type('order.created')")
    conn.execute("SELECT webhooks.create_webhook('w', 'https://e.com/x', '[{\"event_type\": \"order.created\"}]')")
    conn.execute("SELECT webhooks.publish('order.created', '{\"n\": 0}')")
    assert len(conn.execute("SELECT * FROM webhooks.claim()").fetchall()) == 1
    conn.commit()
    before = conn.execute(LATEST_SALT).fetchone()
    assert before is not None
    name = conn.info.dbname
    conn.close()
    with database_copy(server, name, "clone") as copy:
        yield copy, before


def test_an_open_transaction_that_published_in_a_copy_blocks_no_claim_or_publish(
        clone: tuple[str, tuple[int, uuid.UUID]]) -> None:
    dsn, before = clone
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as other:
        # The first to look (a runner's claim) records the copy's new salt, publishes, and keeps its
        # transaction open.
        assert holder.execute("SELECT * FROM webhooks.claim()").fetchall() == []
        held_id = holder.execute("SELECT webhooks.publish('order.created', '{\"n\": 1}')").fetchone()[0]
        # A wait would be an error here, not a slow test.
        other.execute("SET lock_timeout = '2s'")
        other.execute("SET statement_timeout = '10s'")
        assert other.execute("SELECT * FROM webhooks.claim()").fetchall() == []
        other_id = other.execute("SELECT webhooks.publish('order.created', '{\"n\": 2}')").fetchone()[0]
        # Nothing yet: the holder's transaction is running below the other's event (which goes
        # ahead of it once a second old, 041_cursors.sql) ...
        assert other.execute("SELECT * FROM webhooks.claim()").fetchall() == []
        # ... and a runner asking when to claim again is told to wait until then, not to spin.
        assert 0 < other.execute("SELECT webhooks.next_due_in()").fetchone()[0] <= 1
        holder.commit()
        sent = other.execute("SELECT headers ->> 'webhook-id' FROM webhooks.claim() ORDER BY delivery_id").fetchall()
        # The ids publish() returned are the ids sent, in both sessions; the copy has its new salt
        # (for row changes: a published event's id is drawn and stored when it is published).
        assert [uuid.UUID(r[0]) for r in sent] == [held_id, other_id]
        after = other.execute(LATEST_SALT).fetchone()
        assert after is not None and after[1] != before[1] and after[0] > before[0]


def test_setting_the_session_flag_by_hand_does_not_skip_the_check(
        clone: tuple[str, tuple[int, uuid.UUID]]) -> None:
    dsn, before = clone
    with psycopg.connect(dsn, autocommit=True) as c:
        # 'on' is what the check itself used to set.
        c.execute("SELECT set_config('pgwebhooks.identity_checked', 'on', false)")
        c.execute("SELECT webhooks.publish('order.created', '{\"n\": 3}')")
        c.execute("SELECT * FROM webhooks.claim()")
        after = c.execute(LATEST_SALT).fetchone()
        assert after is not None and after[1] != before[1], "the copy kept the original's salt"
        identity = c.execute("SELECT identity FROM webhooks._installation").fetchone()
        assert identity == c.execute("SELECT webhooks._database_identity()").fetchone()
