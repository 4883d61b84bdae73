"""Payload shape and headers of requests as webhooks.claim() hands them out. Every test runs once
per signer (plpython and pgcrypto), as the signature tests do."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from signature_helpers import claim, claim_one, create_webhook, library_verifies, switch_signer

import pgwebhooks
from pgwebhooks import migrations

CUSTOM_HEADERS = {"X-Tenant": "acme", "Authorization": "Bearer abc.def", "X-Empty": ""}
TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
PAYLOAD_KEYS = {"id", "event", "table", "schema", "record", "old_record", "timestamp", "webhook_id"}


@pytest.fixture(params=sorted(migrations.SIGNERS))
def db(request: pytest.FixtureRequest, db: str) -> str:
    """The test database, switched to each signer in turn (dconn, in conftest.py, uses it too)."""
    return switch_signer(db, request.param)


# --- payload shape ------------------------------------------------------------------------------


def parse_timestamp(value: str) -> datetime:
    assert TIMESTAMP_RE.fullmatch(value), value
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@pytest.mark.parametrize("rows", [1, 3], ids=["single-row", "multi-row"])
def test_payload_shape_for_insert_update_delete(dconn, rows: int) -> None:
    hook = create_webhook(dconn, events=[{"table": "users", "operations": ["INSERT", "UPDATE", "DELETE"]}])
    start = dconn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]
    # One statement per operation, touching `rows` rows each.
    dconn.execute(
        "INSERT INTO users (id, name, email, score, tags, meta)"
        " SELECT g, 'Ada', NULL, 12.50, ARRAY['a','b'], '{\"k\": [1, 2]}' FROM generate_series(1, %s) g",
        (rows,),
    )
    time.sleep(0.01)
    dconn.execute("UPDATE users SET name = 'Ada L.', score = 13")
    time.sleep(0.01)
    dconn.execute("DELETE FROM users")
    end = dconn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]

    reqs = claim(dconn)
    assert len(reqs) == 3 * rows
    payloads = [json.loads(r["body"]) for r in reqs]
    by_op: dict[str, dict[int, dict]] = {"INSERT": {}, "UPDATE": {}, "DELETE": {}}
    for p in payloads:
        by_op[p["event"]][p["record"]["id"]] = p
    assert all(sorted(ops) == list(range(1, rows + 1)) for ops in by_op.values()), by_op

    for i in range(1, rows + 1):
        inserted = {"id": i, "name": "Ada", "email": None, "score": 12.50, "tags": ["a", "b"],
                    "meta": {"k": [1, 2]}, "active": True}
        updated = {**inserted, "name": "Ada L.", "score": 13}
        ins, upd, dele = (by_op[op][i] for op in ("INSERT", "UPDATE", "DELETE"))
        assert ins["record"] == inserted and ins["old_record"] is None
        assert upd["record"] == updated and upd["old_record"] == inserted
        assert dele["record"] == updated and dele["old_record"] == updated

    for req, p in zip(reqs, payloads, strict=True):
        assert set(p) == PAYLOAD_KEYS
        assert p["table"] == "users" and p["schema"] == "public"
        assert p["webhook_id"] == str(hook["id"]) == str(req["webhook_id"])
        assert str(uuid.UUID(p["id"])) == p["id"]
        assert p["id"] == req["headers"]["webhook-id"]
        assert start - timedelta(milliseconds=1) <= parse_timestamp(p["timestamp"]) <= end
    # `timestamp` is when the change happened, not when it was claimed: one per statement.
    times = {op: {parse_timestamp(p["timestamp"]) for p in ps.values()} for op, ps in by_op.items()}
    assert all(len(t) == 1 for t in times.values()), times
    assert min(times["INSERT"]) < min(times["UPDATE"]) < min(times["DELETE"])
    assert len({p["id"] for p in payloads}) == 3 * rows


def test_payload_of_schema_qualified_table(dconn) -> None:
    dconn.execute("CREATE SCHEMA crm")
    dconn.execute("CREATE TABLE crm.accounts (id int PRIMARY KEY, name text)")
    create_webhook(dconn, events=[{"table": "crm.accounts", "operations": ["INSERT"]}])
    dconn.execute("INSERT INTO users (id, name) VALUES (1, 'not watched')")
    dconn.execute("INSERT INTO crm.accounts VALUES (7, 'Initech')")
    payload = json.loads(claim_one(dconn)["body"])
    assert (payload["schema"], payload["table"]) == ("crm", "accounts")
    assert payload["record"] == {"id": 7, "name": "Initech"}


def test_body_is_text_of_valid_json_utf8(dconn) -> None:
    hook = create_webhook(dconn)
    name = 'quote " backslash \\ newline \n emoji 🎉 日本'
    dconn.execute("INSERT INTO users (id, name) VALUES (1, %s)", (name,))
    req = claim_one(dconn)
    assert isinstance(req["body"], str)
    assert json.loads(req["body"])["record"]["name"] == name
    assert library_verifies(hook["secret"], req["body"], req["headers"])


# --- headers ------------------------------------------------------------------------------------


def test_required_and_custom_headers(dconn) -> None:
    create_webhook(dconn, headers=CUSTOM_HEADERS)
    dconn.execute("INSERT INTO users (id, name) VALUES (1, 'Ada')")
    req = claim_one(dconn)
    headers = req["headers"]
    version = dconn.execute("SELECT webhooks.version() AS v").fetchone()["v"]
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", version)
    assert version == pgwebhooks.__version__

    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"pgwebhooks/{version}"
    for name, value in CUSTOM_HEADERS.items():
        assert headers[name] == value
    assert headers["webhook-id"] == json.loads(req["body"])["id"]
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 10
    assert all(isinstance(v, str) for v in headers.values())
    assert set(headers) == {
        "Content-Type", "User-Agent", "webhook-id", "webhook-timestamp", "webhook-signature",
        "X-Webhook-Signature", *CUSTOM_HEADERS,
    }
    # Each header name appears once whatever its case: nothing for the runner to pick between.
    lowered = [h.lower() for h in headers]
    assert len(lowered) == len(set(lowered))


@pytest.mark.parametrize("reserved", ["Content-Type", "user-agent", "webhook-id", "X-Webhook-Signature"])
def test_custom_headers_cannot_override_reserved_ones(dconn, reserved: str) -> None:
    with pytest.raises(psycopg.Error) as excinfo:
        create_webhook(dconn, headers={reserved: "evil"})
    assert excinfo.value.sqlstate == "WH010"
    assert dconn.execute("SELECT count(*) AS n FROM webhooks.webhooks").fetchone()["n"] == 0


def test_webhook_id_stable_across_retries_and_timestamp_per_attempt(dconn) -> None:
    hook = create_webhook(dconn)
    dconn.execute("INSERT INTO users (id, name) VALUES (1, 'Ada')")
    first = claim_one(dconn)
    assert first["attempt"] == 1
    done = dconn.execute(
        "SELECT * FROM webhooks.complete(%s)",
        (Jsonb([{"delivery_id": first["delivery_id"], "attempt": 1, "status_code": 500, "latency_ms": 5}]),),
    ).fetchall()
    assert [d["status"] for d in done] == ["pending"]
    time.sleep(1.1)  # so that the second attempt has a later unix second
    dconn.execute("UPDATE webhooks.deliveries SET next_attempt_at = now() WHERE id = %s", (first["delivery_id"],))

    second = claim_one(dconn)
    assert second["delivery_id"] == first["delivery_id"] and second["attempt"] == 2
    assert second["headers"]["webhook-id"] == first["headers"]["webhook-id"]
    assert second["body"] == first["body"]
    assert int(second["headers"]["webhook-timestamp"]) > int(first["headers"]["webhook-timestamp"])
    assert library_verifies(hook["secret"], second["body"], second["headers"])


def test_webhook_timestamp_is_unix_seconds_floored(db: str) -> None:
    with psycopg.connect(db, autocommit=True, row_factory=dict_row) as setup:
        setup.execute("CREATE TABLE users (id int PRIMARY KEY, name text)")
        create_webhook(setup)
        setup.execute("INSERT INTO users VALUES (1, 'Ada')")
    with psycopg.connect(db, row_factory=dict_row) as conn:
        # Find a transaction whose now() lies in the second half of a second, where rounding and
        # flooring differ; bounded in tries (each ~50 ms apart, so well within a few seconds).
        for _ in range(100):
            now = conn.execute("SELECT extract(epoch FROM now()) AS e").fetchone()["e"]
            if now % 1 >= 0.5:
                break
            conn.rollback()
            time.sleep(0.05)
        else:
            pytest.fail("no transaction started in the second half of a second")
        req = claim_one(conn)
        conn.commit()
    assert int(req["headers"]["webhook-timestamp"]) == int(now // 1)
    assert req["headers"]["X-Webhook-Signature"].startswith(f"t={int(now // 1)},")
