"""claim() shares work between concurrent claimers without handing anything out twice, and never
waits on another claimer's open transaction."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from outbox_helpers import create_webhook, drain, scalar


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
