"""Property-based fuzzing of every management function.

The properties:
- any input that reaches a function either succeeds or raises an SQLSTATE of class WH
  (our own, documented codes), never an internal error, a cast failure or a permission error;
- a failing call writes nothing (the webhooks tables and the triggers are as before);
- what create_webhook accepts can actually be sent: the runner can parse the URL and means the
  same host by it, the headers are legal on the wire, and a whsec_ secret means one key only.

Each test uses one database; every example runs in a transaction that is rolled back, so the
examples all start from the same state. An input the driver or a parameter cast refuses before
the call (an interval out of range, say) never reaches us and is not held against the function.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import uuid
from collections.abc import Iterator
from typing import Any

import fuzz_inputs as fz
import httpx
import psycopg
import pytest
from helpers import FUZZ, World, assert_ours, short
from hypothesis import assume, given
from hypothesis import strategies as st
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb


@pytest.fixture
def world(db: str) -> Iterator[World]:
    with psycopg.connect(db, autocommit=True, row_factory=dict_row) as c:
        yield World(c)


def an_id(world: World) -> st.SearchStrategy[str | None]:
    return st.one_of(st.just(world.webhook_id), fz.random_uuid, st.none())


def a_delivery_id(world: World) -> st.SearchStrategy[int | None]:
    return st.one_of(st.sampled_from(world.delivery_ids), fz.int8)


def _j(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


CREATE = ("SELECT * FROM webhooks.create_webhook(name => %(name)s::text, url => %(url)s::text,"
          " events => %(events)s::jsonb, secret => %(secret)s::text, description => %(description)s::text,"
          " enabled => %(enabled)s::boolean, max_retries => %(max_retries)s::integer,"
          " timeout_seconds => %(timeout_seconds)s::integer, retry_backoff_seconds => %(backoff)s::integer,"
          " headers => %(headers)s::jsonb)")

# A valid call with one to three arguments made hostile: ten arguments all random would almost
# never get past the first check, and the later checks (and what is accepted) would go untested.
VALID_CREATE: dict[str, Any] = {
    "name": "fuzzed", "url": "https://example.com/hook", "events": [{"table": "items"}], "secret": None,
    "description": None, "enabled": True, "max_retries": 3, "timeout_seconds": 30, "backoff": 5, "headers": {},
}
HOSTILE_CREATE: dict[str, st.SearchStrategy[Any]] = {
    "name": fz.maybe_text, "url": fz.url, "events": fz.events, "secret": fz.secret, "description": fz.maybe_text,
    "enabled": st.one_of(st.booleans(), st.none()), "max_retries": fz.int4, "timeout_seconds": fz.int4,
    "backoff": fz.int4, "headers": fz.headers,
}


@st.composite
def create_args(draw: st.DrawFn) -> dict[str, Any]:
    hostile = draw(st.lists(st.sampled_from(sorted(HOSTILE_CREATE)), min_size=1, max_size=3, unique=True))
    return {**VALID_CREATE, **{k: draw(HOSTILE_CREATE[k]) for k in hostile}}


def create_params(args: dict[str, Any]) -> dict[str, Any]:
    return {**args, "events": _j(args["events"]), "headers": _j(args["headers"])}


@FUZZ
@given(args=create_args())
def test_create_webhook(world: World, args: dict[str, Any]) -> None:
    params = create_params(args)
    error, rows = world.call(CREATE, params)
    assert_ours("create_webhook", params, error)
    if error is None:
        assert_can_be_sent(rows[0]["url"], rows[0]["headers"], args["secret"], rows[0]["name"])


@FUZZ
@given(data=st.data(), changes=fz.changes())
def test_update_webhook(world: World, data: st.DataObject, changes: Any) -> None:
    params = {"id": data.draw(an_id(world)), "changes": _j(changes)}
    error, rows = world.call("SELECT * FROM webhooks.update_webhook(%(id)s::uuid, %(changes)s::jsonb)", params)
    assert_ours("update_webhook", params, error)
    if error is None and isinstance(changes, dict):
        row = rows[0]
        assert_can_be_sent(row["url"], row["headers"], changes.get("secret"), row["name"])


@FUZZ
@given(data=st.data(), new_secret=fz.secret, grace=fz.interval)
def test_rotate_secret(world: World, data: st.DataObject, new_secret: str | None, grace: str | None) -> None:
    params = {"id": data.draw(an_id(world)), "secret": new_secret, "grace": grace}
    assume(world.reaches("%(grace)s::interval", params))
    error, _ = world.call("SELECT * FROM webhooks.rotate_secret(%(id)s::uuid, %(secret)s::text, %(grace)s::interval)",
                          params)
    assert_ours("rotate_secret", params, error)
    if error is None and new_secret is not None:
        assert_one_key(new_secret)


@FUZZ
@given(data=st.data(), fn=st.sampled_from(["get_webhook", "delete_webhook", "send_test", "replay_failed"]),
       since=fz.timestamp)
def test_functions_of_a_webhook_id(world: World, data: st.DataObject, fn: str, since: str | None) -> None:
    params = {"id": data.draw(an_id(world)), "since": since}
    if fn == "replay_failed":
        assume(world.reaches("%(since)s::timestamptz", params))
        sql = "SELECT * FROM webhooks.replay_failed(%(id)s::uuid, %(since)s::timestamptz)"
    else:
        sql = f"SELECT * FROM webhooks.{fn}(%(id)s::uuid)"
    error, _ = world.call(sql, params)
    assert_ours(fn, params, error)


@FUZZ
@given(data=st.data(), limit=fz.int4, offset=fz.int4)
def test_get_deliveries(world: World, data: st.DataObject, limit: int | None, offset: int | None) -> None:
    params = {"id": data.draw(an_id(world)), "limit": limit, "offset": offset}
    error, _ = world.call(
        "SELECT * FROM webhooks.get_deliveries(%(id)s::uuid, %(limit)s::integer, %(offset)s::integer)", params)
    assert_ours("get_deliveries", params, error)


@FUZZ
@given(data=st.data(), fn=st.sampled_from(["get_delivery_attempts", "replay"]))
def test_functions_of_a_delivery_id(world: World, data: st.DataObject, fn: str) -> None:
    params = {"id": data.draw(a_delivery_id(world))}
    error, _ = world.call(f"SELECT * FROM webhooks.{fn}(%(id)s::bigint)", params)
    assert_ours(fn, params, error)


@FUZZ
@given(older_than=fz.interval)
def test_purge(world: World, older_than: str | None) -> None:
    params = {"older_than": older_than}
    assume(world.reaches("%(older_than)s::interval", params))
    error, _ = world.call("SELECT * FROM webhooks.purge(%(older_than)s::interval)", params)
    assert_ours("purge", params, error)


@FUZZ
@given(args=create_args(), drop=st.sampled_from([None, "TABLE items", "TABLE other.t", "SCHEMA other CASCADE"]))
def test_list_and_get_keep_working_whatever_was_created_or_dropped(
    world: World, args: dict[str, Any], drop: str | None,
) -> None:
    with world.conn.transaction(force_rollback=True):
        try:
            with world.conn.transaction():
                created = world.conn.execute(CREATE, create_params(args)).fetchone()
        except psycopg.Error:
            created = None  # the create property covers its errors; here only what it left matters
        if drop is not None:
            world.conn.execute(f"DROP {drop}")
        ids = [world.webhook_id] + ([str(created["id"])] if created else [])
        calls = [("list_webhooks", "SELECT * FROM webhooks.list_webhooks()", {})]
        for hook_id in ids:
            calls += [
                ("get_webhook", "SELECT * FROM webhooks.get_webhook(%(id)s::uuid)", {"id": hook_id}),
                ("update_webhook", "SELECT * FROM webhooks.update_webhook(%(id)s::uuid, '{\"description\": \"d\"}')",
                 {"id": hook_id}),
                ("get_deliveries", "SELECT * FROM webhooks.get_deliveries(%(id)s::uuid)", {"id": hook_id}),
            ]
        for fn, sql, params in calls:
            error, _ = world.call(sql, params)
            assert_ours(f"{fn} after DROP {drop}", {**params, "created": created is not None}, error)


HAND_PICKED: dict[str, list[Any]] = {
    "name": fz.NASTY_TEXT,
    "url": fz.URLS,
    "events": [[{"table": t}] for t in fz.TABLES] + [[{"table": "items", "operations": [o]}] for o in fz.OPERATIONS],
    "secret": fz.SECRETS,
    "headers": [{"X-Value": v} for v in fz.NASTY_TEXT] + [{n: "v"} for n in fz.HEADER_NAMES]
    + [fz.Many({f"X-H{i}": "v" for i in range(3000)})],
    "description": fz.NASTY_TEXT,
}


@pytest.mark.parametrize("field", sorted(HAND_PICKED))
def test_create_webhook_with_every_hand_picked_value(world: World, field: str) -> None:
    """Each known-nasty value once, all failures reported together (Hypothesis shows only the first)."""
    problems = []
    for value in HAND_PICKED[field]:
        args = {**VALID_CREATE, field: value}
        params = create_params(args)
        error, rows = world.call(CREATE, params)
        try:
            assert_ours("create_webhook", params, error)
            if error is None:
                assert_can_be_sent(rows[0]["url"], rows[0]["headers"], args["secret"], rows[0]["name"])
        except AssertionError as exc:
            problems.append(str(exc).splitlines()[0])
    assert not problems, f"{len(problems)} of {len(HAND_PICKED[field])} {field} values:\n" + "\n".join(problems)


# -- what is accepted must be able to work -----------------------------------------------------------

# Bounds the runner and common receivers live with (aiohttp and h11 refuse header lines of 8 KB or
# more; many servers cap the number of headers near 100).
MAX_HEADER_VALUE = 8 * 1024
MAX_HEADERS = 100
_IPV4_LIKE = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.IGNORECASE)


def assert_can_be_sent(url: str, headers: dict[str, Any], secret: str | None, name: str) -> None:
    assert name.strip(), f"name {name!r} is blank"
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL as exc:
        raise AssertionError(f"url {url!r} is accepted but the runner cannot parse it: {exc}") from exc
    if _IPV4_LIKE.fullmatch(host):
        # 127.1, 2130706433 and 0177.0.0.1 all mean 127.0.0.1 to some parsers and a name to others.
        try:
            canonical = str(ipaddress.IPv4Address(host))
        except ValueError:
            canonical = None
        assert canonical == host, f"url {url!r}: host {host!r} is an ambiguous spelling of an IPv4 address"
    assert len(headers) <= MAX_HEADERS, f"{len(headers)} headers accepted"
    for key, value in headers.items():
        assert isinstance(value, str)
        # Visible ASCII, spaces and tabs (RFC 9110 field-content); anything else is mangled or refused on the wire.
        assert re.fullmatch(r"[\t\x20-\x7e]*", value), f"header {key} value {short(value, 60)} is not visible ASCII"
        assert len(key) + len(value) < MAX_HEADER_VALUE, f"header {key} of {len(value)} characters accepted"
    if secret is not None:
        assert_one_key(secret)


def assert_one_key(secret: str) -> None:
    assert len(secret) <= 1024, f"a secret of {len(secret)} characters accepted"
    if secret.startswith("whsec_"):
        encoded = secret[len("whsec_"):]
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise AssertionError(f"secret {secret!r} accepted but the signer cannot decode it: {exc}") from exc
        # Exactly one spelling per key: else the database and a receiver's library may disagree on the key.
        assert base64.b64encode(key).decode() == encoded, f"secret {secret!r} is not canonical base64"


def test_the_world_is_what_the_properties_aim_at(world: World) -> None:
    # Guards the fixture: if it stopped producing a webhook and deliveries, the fuzz would test only 404s.
    assert uuid.UUID(world.webhook_id)
    statuses = world.conn.execute("SELECT status FROM webhooks.deliveries ORDER BY id").fetchall()
    assert [r["status"] for r in statuses] == ["delivered", "failed"]
    error, _ = world.call("SELECT webhooks.create_webhook('n', 'http://x', '[]')", {})
    assert error is not None and error.sqlstate is not None and error.sqlstate.startswith("WH")
