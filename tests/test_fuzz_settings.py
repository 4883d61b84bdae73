"""Property-based fuzzing of what 0.1.0's fuzzing never reached: the receiver profile, the retry
schedule, pause_after, secret_headers, the per-webhook limits, subscriptions with event types,
column lists and filters, and publish().

The properties are test_fuzz_management.py's (every input is accepted or refused with an SQLSTATE
of class WH; a refused call writes nothing), plus one more: what is accepted can be delivered. In
the same rolled-back transaction, a row is written to each watched table and an event published,
and claim() must render every delivery it hands out as JSON with headers that are legal on the wire.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import fuzz_inputs as fz
import psycopg
import pytest
from helpers import FUZZ, World, assert_ours, short
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

# Each example also writes rows and claims: fewer examples than the management fuzz, same reach.
FEWER = settings(FUZZ, max_examples=60)


@pytest.fixture
def world(db: str) -> Iterator[World]:
    with psycopg.connect(db, autocommit=True, row_factory=dict_row) as c:
        c.execute("SELECT webhooks.create_event_type('order.completed'), webhooks.create_event_type('order.refunded')")
        # Subscribed to every published type: what publish() accepts has a delivery to render.
        c.execute("SELECT webhooks.create_webhook('everything', 'https://example.com/all', '[\"*\"]')")
        yield World(c)


def _j(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


CREATE = (
    "SELECT * FROM webhooks.create_webhook(name => %(name)s::text, url => %(url)s::text,"
    " events => %(events)s::jsonb, headers => %(headers)s::jsonb, profile => %(profile)s::text,"
    " retry_schedule => %(retry_schedule)s::interval[], pause_after => %(pause_after)s::interval,"
    " secret_headers => %(secret_headers)s::jsonb, max_concurrency => %(max_concurrency)s::integer,"
    " rate_limit_per_second => %(rate_limit_per_second)s::integer)"
)
CASTS = "%(retry_schedule)s::interval[], %(pause_after)s::interval"
VALID: dict[str, Any] = {
    "name": "fuzzed", "url": "https://example.com/hook", "events": [{"table": "items"}], "headers": {},
    "profile": "standard", "retry_schedule": None, "pause_after": "3 days", "secret_headers": {},
    "max_concurrency": None, "rate_limit_per_second": None,
}
HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "events": fz.subscriptions, "profile": fz.profile, "retry_schedule": fz.retry_schedule,
    "pause_after": fz.interval, "secret_headers": fz.headers, "max_concurrency": fz.int4,
    "rate_limit_per_second": fz.int4,
}


def params_of(args: dict[str, Any]) -> dict[str, Any]:
    return {**args, "events": _j(args["events"]), "headers": _j(args["headers"]),
            "secret_headers": _j(args["secret_headers"])}


@st.composite
def create_args(draw: st.DrawFn) -> dict[str, Any]:
    hostile = draw(st.lists(st.sampled_from(sorted(HOSTILE)), min_size=1, max_size=3, unique=True))
    return {**VALID, **{k: draw(HOSTILE[k]) for k in hostile}}


# -- accepted means deliverable ------------------------------------------------------------------

_WIRE_VALUE = re.compile(r"[\t\x20-\x7e]*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field names


def assert_renders(conn: psycopg.Connection[dict[str, Any]], webhook_id: Any, expect: bool) -> None:
    """Write to every table a subscription may watch, publish, then claim: each delivery handed out
    is JSON with legal headers. `expect`: the webhook must be among them (its subscription is plain)."""
    for sql in ("INSERT INTO items (label) VALUES ('fuzz')", "UPDATE items SET label = 'fuzz2' WHERE label = 'fuzz'",
                "INSERT INTO other.t VALUES (1)", "SELECT webhooks.publish('order.completed', '{\"n\": 1}')"):
        try:
            conn.execute(sql)
        except psycopg.Error as exc:
            raise AssertionError(f"after an accepted webhook, {sql!r} failed: {exc.sqlstate} {exc}") from exc
    try:
        claimed = conn.execute("SELECT * FROM webhooks.claim(1000)").fetchall()
    except psycopg.Error as exc:
        raise AssertionError(f"claim() failed after an accepted webhook: {exc.sqlstate} {exc}") from exc
    mine = 0
    for row in claimed:
        mine += str(row["webhook_id"]) == str(webhook_id)
        try:
            json.loads(row["body"])
        except (TypeError, ValueError) as exc:
            raise AssertionError(f"claim() rendered a body that is not JSON: {short(row['body'])}") from exc
        for name, value in row["headers"].items():
            assert _TOKEN.fullmatch(name), f"claim() rendered a header name {name!r}"
            assert isinstance(value, str) and _WIRE_VALUE.fullmatch(value), (
                f"claim() rendered header {name}: {short(value, 60)}")
    if expect:
        assert mine, "the accepted webhook got no delivery of the row written to its table"


def renders(conn: psycopg.Connection[dict[str, Any]], expect: bool) -> Callable[[list[dict[str, Any]]], None]:
    return lambda rows: assert_renders(conn, rows[0]["id"], expect)


def plain(args: dict[str, Any]) -> bool:
    """Whether a delivery must come of the test rows: the plain subscription, nothing holding it."""
    return args["events"] == VALID["events"]


@FEWER
@given(args=create_args())
def test_create_webhook_with_every_setting(world: World, args: dict[str, Any]) -> None:
    params = params_of(args)
    assume(world.reaches(CASTS, params))
    error, _ = world.call(CREATE, params, then=renders(world.conn, plain(args)))
    assert_ours("create_webhook", params, error)


CHANGES: dict[str, st.SearchStrategy[Any]] = {
    "events": fz.subscriptions, "profile": st.one_of(fz.profile, fz.json_value),
    "retry_schedule": st.one_of(fz.retry_schedule, fz.json_value), "pause_after": st.one_of(fz.interval, fz.json_value),
    "secret_headers": fz.headers, "max_concurrency": st.one_of(fz.int4, fz.json_value),
    "rate_limit_per_second": st.one_of(fz.int4, fz.json_value), "max_retries": fz.int4,
    "retry_backoff_seconds": fz.int4,
}


@FEWER
@given(data=st.data())
def test_update_webhook_with_every_setting(world: World, data: st.DataObject) -> None:
    keys = data.draw(st.lists(st.sampled_from(sorted(CHANGES)), min_size=1, max_size=3, unique=True))
    changes = {k: data.draw(CHANGES[k]) for k in keys}
    params = {"id": world.webhook_id, "changes": Jsonb(changes)}
    error, _ = world.call("SELECT * FROM webhooks.update_webhook(%(id)s::uuid, %(changes)s::jsonb)", params,
                          then=renders(world.conn, "events" not in changes))
    assert_ours("update_webhook", params, error)


@FEWER
@given(event_type=st.one_of(fz.event_type, st.none()), data=st.one_of(fz.published_data, st.none()))
def test_publish(world: World, event_type: str | None, data: Any) -> None:
    params = {"event_type": event_type, "data": None if data is None else Jsonb(data)}
    assume(world.reaches("%(data)s::jsonb", params))

    def delivered(rows: list[dict[str, Any]]) -> None:
        claimed = world.conn.execute("SELECT webhook_id, body FROM webhooks.claim(1000)").fetchall()
        bodies = [json.loads(r["body"]) for r in claimed]
        assert bodies, f"publish({event_type!r}) was accepted but nothing was claimed for its subscriber"

    error, _ = world.call("SELECT webhooks.publish(%(event_type)s::text, %(data)s::jsonb) AS id", params,
                          then=delivered)
    assert_ours("publish", params, error)


# -- every hand-picked value once, all failures reported together ----------------------------------

HAND_PICKED: dict[str, list[Any]] = {
    "profile": fz.PROFILES,
    "where": [[{"table": "items", "where": w}] for w in fz.WHERE],
    "columns": [[{"table": "items", key: c}] for c in fz.COLUMNS for key in ("columns", "exclude_columns")],
    "event_type": [[{"table": "items", "event_type": t}] for t in fz.EVENT_TYPES] + [[t] for t in fz.EVENT_TYPES],
}


@pytest.mark.parametrize("field", sorted(HAND_PICKED))
def test_create_webhook_with_every_hand_picked_setting(world: World, field: str) -> None:
    problems = []
    for value in HAND_PICKED[field]:
        args = {**VALID, ("profile" if field == "profile" else "events"): value}
        params = params_of(args)
        try:
            error, _ = world.call(CREATE, params, then=renders(world.conn, False))
            assert_ours("create_webhook", params, error)
        except AssertionError as exc:
            problems.append(str(exc).splitlines()[0])
    assert not problems, f"{len(problems)} of {len(HAND_PICKED[field])} {field} values:\n" + "\n".join(problems)


def test_a_routed_filter_out_of_its_columns_range_is_refused_with_a_wh_code(world: World) -> None:
    for value in ("99999999999999999999", "-2147483649"):
        params = params_of({**VALID, "events": [{"table": "items", "where": f"id = {value}"}]})
        error, _ = world.call(CREATE, params)
        assert_ours("create_webhook", params, error)


def test_publish_every_hand_picked_type(world: World) -> None:
    problems = []
    for event_type in fz.EVENT_TYPES:
        params = {"event_type": event_type, "data": Jsonb({"n": 1})}
        try:
            error, _ = world.call("SELECT webhooks.publish(%(event_type)s::text, %(data)s::jsonb)", params)
            assert_ours("publish", params, error)
        except AssertionError as exc:
            problems.append(str(exc).splitlines()[0])
    assert not problems, "\n".join(problems)


def test_the_world_delivers_what_the_properties_write(world: World) -> None:
    # Guards the fixture and assert_renders: a plain webhook and a publish do produce deliveries,
    # so a property that passes is not passing on an empty claim.
    error, _ = world.call(CREATE, params_of(VALID), then=renders(world.conn, True))
    assert error is None
    with world.conn.transaction(force_rollback=True):
        world.conn.execute("SELECT webhooks.publish('order.completed', '{}')")
        claimed = world.conn.execute("SELECT count(*) AS n FROM webhooks.claim(1000)").fetchone()
        assert claimed is not None and claimed["n"] >= 1
