"""What claim() spends per call and per delivery: the steps it renders every delivery with are
inlined into its statement (no function call, each with its own search_path, per row image), and a
claim with nothing to fan out does not plan the fan-out's statement."""

from __future__ import annotations

import psycopg

# Called per delivery (or per claim) before; each must now cost no call of its own.
INLINED = ("_without", "_compact_image", "_profile_headers")


def _calls(conn: psycopg.Connection, name: str) -> int:
    """Calls of webhooks.`name` in this transaction so far (track_functions = 'all')."""
    row = conn.execute("SELECT coalesce(sum(pg_stat_get_xact_function_calls(p.oid)), 0)::int FROM pg_proc p"
                       " WHERE p.pronamespace = 'webhooks'::regnamespace AND p.proname = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


def _setup(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, amount numeric(12, 2), note text)")
    conn.execute("SELECT webhooks.create_webhook(name => 'h', url => 'https://example.com/h',"
                 " events => '[{\"table\": \"items\"}]')")


def test_claim_renders_row_images_without_a_function_call_per_image(conn: psycopg.Connection) -> None:
    _setup(conn)
    # An already compact image, one with a number JavaScript prints otherwise, an UPDATE's pair.
    conn.execute("INSERT INTO items VALUES (1, 12.5, 'a'), (2, 12.50, 'b')")
    conn.execute("UPDATE items SET note = 'c' WHERE id = 1")
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL track_functions = 'all'")
        bodies = [r[0] for r in conn.execute("SELECT body FROM webhooks.claim(10)").fetchall()]
        assert len(bodies) == 3
        assert all('"amount":12.5,' in b for b in bodies), bodies  # still compacted
        assert {name: _calls(conn, name) for name in INLINED} == dict.fromkeys(INLINED, 0)
        # numeric(12, 2) holds 12.50 in every image (4: two inserts, the update's pair): each trimmed
        # by a call of its own, none walked.
        assert (_calls(conn, "_compact_numbers"), _calls(conn, "_compact")) == (4, 0)


def test_a_claim_with_nothing_to_fan_out_does_not_call_the_fan_out(conn: psycopg.Connection) -> None:
    _setup(conn)
    conn.execute("INSERT INTO items VALUES (1, 1, 'a'), (2, 2, 'b')")  # two rows: fanned out
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL track_functions = 'all'")
        assert len(conn.execute("SELECT * FROM webhooks.claim(10)").fetchall()) == 2
        assert _calls(conn, "_fan_out") == 1  # a capture to fan out: fanned out
        assert conn.execute("SELECT * FROM webhooks.claim(10)").fetchall() == []
        assert _calls(conn, "_fan_out") == 1  # nothing left: not called again
        conn.execute("INSERT INTO items VALUES (3, 3, 'c')")  # one row: on its route (0.7.0)
        assert len(conn.execute("SELECT * FROM webhooks.claim(10)").fetchall()) == 1
        assert _calls(conn, "_fan_out") == 1
        conn.execute("INSERT INTO items VALUES (4, 4, 'd'), (5, 5, 'e')")
        assert len(conn.execute("SELECT * FROM webhooks.claim(10)").fetchall()) == 2
        assert _calls(conn, "_fan_out") == 2


def _index_reads(conn: psycopg.Connection, index: str) -> int:
    """Index entries read through webhooks.`index` in this transaction so far."""
    row = conn.execute("SELECT pg_stat_get_xact_tuples_returned(%s::regclass)", (f"webhooks.{index}",)).fetchone()
    assert row is not None
    return int(row[0])


def test_a_claim_reads_the_captures_of_its_batch_not_every_capture_kept(conn: psycopg.Connection) -> None:
    """claim() checks each candidate's capture is still there (a purge may have raced it): a probe
    per candidate, not a scan of every capture ever kept, which grew each claim with retention."""
    _setup(conn)
    kept = 3000
    conn.execute(f"DO $$ BEGIN FOR i IN 1..{kept} LOOP INSERT INTO items VALUES (i, i, 'x'); END LOOP; END $$")
    conn.execute("SELECT webhooks._fan_out(%s, 0)", (kept,))
    conn.execute("VACUUM ANALYZE webhooks.captures, webhooks.deliveries")
    with conn.transaction(force_rollback=True):
        before = _index_reads(conn, "captures_pkey")
        assert len(conn.execute("SELECT * FROM webhooks.claim(200)").fetchall()) == 200
        # Each claimed delivery's capture is read twice (the check, the render); reading every
        # kept capture was 3000 more (statistics that know the queue is long made it a hash).
        assert _index_reads(conn, "captures_pkey") - before < 1000


PROFILES = ("standard", "fluxbase", "fluxbase_hex", "truss", "supabase", "hasura", "rowbase", "flux")


def test_claim_builds_every_body_as_the_envelope_does(conn: psycopg.Connection) -> None:
    """claim() builds the standard profile's bodies itself (not through _envelope's PL/pgSQL call):
    in every profile and for every kind of event, each body is byte for byte what _envelope renders."""
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, amount numeric(12, 2), note text, doc jsonb)")
    conn.execute("CREATE TABLE typed (id int PRIMARY KEY, secret text)")
    conn.execute("SELECT webhooks.create_event_type('typed.changed'), webhooks.create_event_type('app.thing')")
    for profile in PROFILES:
        conn.execute("SELECT webhooks.create_webhook(name => %s, url => 'https://example.com/h', profile => %s,"
                     " events => '[{\"table\": \"items\"}, {\"table\": \"typed\", \"event_type\": \"typed.changed\","
                     " \"exclude_columns\": [\"secret\"]}, \"app.*\"]')", (profile, profile))
    conn.execute("INSERT INTO items VALUES (1, 12.50, 'a \"quoted\" é \\ note', '{\"k\": [1, 2.50]}'),"
                 " (2, -0, NULL, NULL)")
    conn.execute("UPDATE items SET note = 'b' WHERE id = 1")
    conn.execute("DELETE FROM items WHERE id = 2")
    conn.execute("INSERT INTO typed VALUES (1, 'hidden')")
    conn.execute("SELECT webhooks.publish('app.thing', '{\"n\": 1.50}')")
    conn.execute("TRUNCATE items")
    conn.execute("SELECT webhooks.send_test(id) FROM webhooks.webhooks")
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT webhooks._fan_out(10000, 0), webhooks._fill_from_cursors(10000)")
        # _render is the same delivery rendered by _envelope alone, for its next attempt: the
        # body claim() is about to send, then the headers.
        expected = dict(conn.execute("SELECT d.id, webhooks._render(d.id) FROM webhooks.deliveries d").fetchall())
        conn.execute("SET LOCAL track_functions = 'all'")
        bodies = dict(conn.execute("SELECT delivery_id, body FROM webhooks.claim(1000)").fetchall())
        # Built inline: every body in standard, fluxbase and fluxbase_hex, and the event in truss,
        # supabase and hasura; rowbase and flux are _envelope's.
        assert _calls(conn, "_envelope") == 2 * 7 + 3 * 6
        # a two-row INSERT, an UPDATE, a DELETE, a typed INSERT, an event, a test (TRUNCATE: not subscribed)
        assert len(bodies) == len(expected) == len(PROFILES) * 7
        for delivery_id, body in bodies.items():
            assert expected[delivery_id][:len(body) + 1] == body + "{", (delivery_id, body)
