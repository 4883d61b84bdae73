"""Property-based fuzzing of the runner API (claim, complete, release) with malformed input.

The runner is trusted code, but a bad batch must still fail with one of our SQLSTATEs and write
nothing (malformed JSON gave 22023, 22P02, 22003 and 22P05). Same harness as
helpers.World: one database, every example rolled back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fuzz_inputs as fz
import psycopg
import pytest
from helpers import FUZZ, World, assert_ours
from hypothesis import assume, given
from hypothesis import strategies as st
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb


@pytest.fixture
def world(db: str) -> Iterator[World]:
    with psycopg.connect(db, autocommit=True, row_factory=dict_row) as c:
        yield World(c)


number = st.one_of(fz.int8, st.sampled_from([2**63, -(2**63) - 1, 10**30, 1.5, -0.0, 1e308]), fz.json_value)




def result_entry(delivery_ids: list[int]) -> st.SearchStrategy[Any]:
    fields = {
        "delivery_id": st.one_of(st.sampled_from(delivery_ids), number),
        "attempt": st.one_of(st.sampled_from([1, 2, 0, -1]), number),
        "status_code": st.one_of(st.sampled_from([200, 204, 301, 410, 429, 500, 503, 999, 0, -1]), number),
        "response_excerpt": st.one_of(fz.maybe_text, fz.json_value),
        "error": st.one_of(fz.maybe_text, fz.json_value),
        "latency_ms": number,
        "retry_after_seconds": number,
    }
    return st.one_of(
        st.fixed_dictionaries({"delivery_id": fields["delivery_id"], "attempt": fields["attempt"]},
                              optional={k: v for k, v in fields.items() if k not in ("delivery_id", "attempt")}),
        fz.json_value,
    )


def leased_world(world: World) -> list[int]:
    """Deliveries leased right now (inside the example's transaction), to aim results at."""
    world.conn.execute("INSERT INTO items (label) SELECT 'y' FROM generate_series(1, 3)")
    rows = world.conn.execute("SELECT delivery_id FROM webhooks.claim(10)").fetchall()
    return [r["delivery_id"] for r in rows] + world.delivery_ids


@FUZZ
@given(data=st.data())
def test_complete(world: World, data: st.DataObject) -> None:
    with world.conn.transaction(force_rollback=True):
        ids = leased_world(world)
        results = data.draw(st.one_of(st.lists(result_entry(ids), max_size=4), fz.json_value))
        params = {"results": Jsonb(results)}
        assume(world.reaches("%(results)s::jsonb", params))
        error, _ = world.call("SELECT * FROM webhooks.complete(%(results)s::jsonb)", params)
        assert_ours("complete", params, error)


@FUZZ
@given(data=st.data())
def test_release(world: World, data: st.DataObject) -> None:
    with world.conn.transaction(force_rollback=True):
        ids = leased_world(world)
        leases = data.draw(st.one_of(st.lists(result_entry(ids), max_size=4), fz.json_value))
        params = {"leases": Jsonb(leases)}
        assume(world.reaches("%(leases)s::jsonb", params))
        error, _ = world.call("SELECT * FROM webhooks.release(%(leases)s::jsonb)", params)
        assert_ours("release", params, error)


@FUZZ
@given(batch_size=fz.int4, lease_margin=fz.int4, per_webhook=fz.int4,
       skip=st.one_of(st.none(), st.lists(fz.random_uuid, max_size=3)))
def test_claim(world: World, batch_size: int | None, lease_margin: int | None, per_webhook: int | None,
               skip: list[str] | None) -> None:
    params = {"batch_size": batch_size, "lease_margin": lease_margin, "per_webhook": per_webhook, "skip": skip}
    error, _ = world.call(
        "SELECT * FROM webhooks.claim(%(batch_size)s::integer, %(lease_margin)s::integer,"
        " %(per_webhook)s::integer, %(skip)s::uuid[])", params)
    assert_ours("claim", params, error)
