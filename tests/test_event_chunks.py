"""Bulk captures store their row images 16 rows per `events` row (migration 0019): whatever the
statement's size and whichever rows' keys change, every row is delivered once, with its own image
and, for an UPDATE, its own old row; the event id names the same row as the image."""

from __future__ import annotations

import json

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from outbox_helpers import create_webhook

CHUNK = 16

statements = st.tuples(
    st.sampled_from(["INSERT", "UPDATE", "DELETE"]),
    # Around the chunk's edges: 1 row (stored inline), 15-17, 31-33, 48.
    st.one_of(st.integers(2, 50), st.sampled_from([2, 15, 16, 17, 31, 32, 33, 48])),
    st.sets(st.integers(1, 50), max_size=8),  # rows whose key an UPDATE changes (no old row then)
)


def _claimed(conn: psycopg.Connection) -> list[tuple[int, dict]]:
    """(n, body) of every delivery claim() hands out until it has no more (at most 20 calls); each is
    settled as delivered."""
    out: list[tuple[int, dict]] = []
    for _ in range(20):
        claimed = conn.execute("SELECT delivery_id, body FROM webhooks.claim(10000)").fetchall()
        # Read in a statement of its own: claim()'s fan-out created these rows after the
        # statement calling it took its snapshot.
        rows = [(conn.execute("SELECT n FROM webhooks.deliveries WHERE id = %s", (d,)).fetchone()[0], body)
                for d, body in claimed]
        conn.execute("UPDATE webhooks.deliveries SET status = 'delivered', completed_at = now()"
                     " WHERE status = 'leased'")
        if not rows:
            return out
        out += [(int(n), json.loads(body)) for n, body in rows]
    raise AssertionError("claim() still had deliveries after 20 calls")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(statements)
def test_every_row_of_a_bulk_statement_gets_its_own_image(conn: psycopg.Connection, statement: tuple) -> None:
    op, rows, rekeyed = statement
    conn.execute("CREATE TABLE IF NOT EXISTS chunked (id int PRIMARY KEY, v int NOT NULL)")
    if conn.execute("SELECT count(*) FROM webhooks.webhooks").fetchone() == (0,):
        create_webhook(conn, table="chunked")
    conn.execute("TRUNCATE chunked")
    conn.execute("INSERT INTO chunked SELECT g, g * 10 FROM generate_series(1, %s) g", (rows,))
    if op == "INSERT":
        delivered = _claimed(conn)
    else:
        _claimed(conn)  # the INSERT's deliveries
        if op == "UPDATE":
            conn.execute("UPDATE chunked SET v = v + 1, id = CASE WHEN id = ANY (%s) THEN id + 1000 ELSE id END",
                         (sorted(rekeyed),))
        else:
            conn.execute("DELETE FROM chunked")
        delivered = _claimed(conn)

    assert sorted(n for n, _ in delivered) == list(range(1, rows + 1)), "each row once, numbered 1..rows"
    capture = conn.execute("SELECT max(id) FROM webhooks.captures").fetchone()[0]
    chunks = conn.execute("SELECT array_agg(cardinality(records) ORDER BY n) FROM webhooks.events"
                          " WHERE capture_id = %s", (capture,)).fetchone()[0]
    assert chunks == [min(CHUNK, rows - k) for k in range(0, rows, CHUNK)], "stored in chunks of 16"
    for n, body in delivered:
        expected_id = conn.execute("SELECT webhooks._event_uid(%s, %s)::text", (capture, n)).fetchone()[0]
        assert body["id"] == expected_id
        record, old = body["record"], body["old_record"]
        if op == "INSERT":
            # A fresh INSERT ... SELECT's transition table keeps the statement's order.
            assert record == {"id": n, "v": n * 10}
        elif op == "DELETE":
            assert record == old and record["v"] == record["id"] * 10
        elif record["id"] > 1000:  # its key changed: nothing to pair it with
            assert record["id"] - 1000 in rekeyed and old is None and record["v"] == (record["id"] - 1000) * 10 + 1
        else:
            assert old == {"id": record["id"], "v": record["id"] * 10} and record["v"] == old["v"] + 1
    ids = sorted(body["record"]["id"] for _, body in delivered)
    assert len(set(ids)) == rows, "no row's image twice"
