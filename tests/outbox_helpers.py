"""Helpers for the capture and claim tests: a webhook on a bulk table, and every captured change
drained with webhooks.claim() into a temporary table (`claimed`) to be counted there, so the tests
hold however the outbox lays out its rows. Only `stored_row_images` looks at the outbox's own tables."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb


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
        # An events row holds one image, or up to 16 in `records` (migration 0019).
        "SELECT (SELECT coalesce(sum(coalesce(cardinality(records), 1)), 0) FROM webhooks.events)"
        " + (SELECT count(*) FROM webhooks.captures WHERE record IS NOT NULL OR old_record IS NOT NULL)",
    )


def claimed_stats(conn: psycopg.Connection) -> tuple[int, int, int]:
    """(deliveries, distinct deliveries, distinct events) claimed so far."""
    return conn.execute(
        "SELECT count(*), count(DISTINCT delivery_id), count(DISTINCT event_id) FROM claimed"
    ).fetchone()


class Boom(Exception):
    pass


def collect_notifies(listener: psycopg.Connection, timeout: float = 2.0) -> list[psycopg.Notify]:
    # Bounded both ways: at most `timeout` seconds, at most 50 notifications.
    return list(listener.notifies(timeout=timeout, stop_after=50))
