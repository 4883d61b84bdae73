"""Requests as webhooks.claim() hands them out: signatures, payload shape and headers.

Signatures are checked with the `standardwebhooks` library and with an independent implementation
of the X-Webhook-Signature scheme, against the exact body claim() returned. Every test runs once
per signer (plpython and pgcrypto): one contract, two implementations.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from helpers import skip_unless_signer_available
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

import pgwebhooks
from pgwebhooks import migrations

PLAIN_SECRET = "plain string secret: ünïcödé ✓ 0123456789"
CUSTOM_HEADERS = {"X-Tenant": "acme", "Authorization": "Bearer abc.def", "X-Empty": ""}
TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
PAYLOAD_KEYS = {"id", "event", "table", "schema", "record", "old_record", "timestamp", "webhook_id"}


@pytest.fixture(params=sorted(migrations.SIGNERS))
def db(request: pytest.FixtureRequest, db: str) -> str:
    """The test database, switched to each signer in turn (the template has the build's default)."""
    skip_unless_signer_available(db, request.param)
    migrations.migrate(db, signer=request.param)
    with psycopg.connect(db) as c:
        assert c.execute("SELECT webhooks.signer()").fetchone() == (request.param,)
    return db


@pytest.fixture
def dconn(db: str):
    with psycopg.connect(db, autocommit=True, row_factory=dict_row) as c:
        c.execute(
            "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email text, score numeric,"
            " tags text[], meta jsonb, active boolean DEFAULT true)"
        )
        yield c


def create_webhook(conn: psycopg.Connection, events: list[dict[str, Any]] | None = None, **options: Any) -> dict:
    args: dict[str, Any] = {
        "name": f"hook-{uuid.uuid4().hex[:8]}",
        "url": "https://receiver.example/hook",
        "events": Jsonb(events if events is not None else [{"table": "users"}]),
        **options,
    }
    if "headers" in args:
        args["headers"] = Jsonb(args["headers"])
    named = ", ".join(f"{k} => %({k})s" for k in args)
    row = conn.execute(f"SELECT * FROM webhooks.create_webhook({named})", args).fetchone()
    assert row is not None
    return row


def claim(conn: psycopg.Connection, batch: int = 10) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM webhooks.claim(%s)", (batch,)).fetchall()


def claim_one(conn: psycopg.Connection) -> dict[str, Any]:
    rows = claim(conn)
    assert len(rows) == 1, rows
    return rows[0]


def library_secret(secret: str) -> str:
    """The secret as the standardwebhooks library wants it (it base64-decodes non-whsec_ ones)."""
    return secret if secret.startswith("whsec_") else base64.b64encode(secret.encode()).decode()


def x_signature_valid(secret: str, body: str, header: str) -> bool:
    """Independent check of `X-Webhook-Signature: t=<ts>,v1=<hex>[,v1=<hex>...]`."""
    parts = header.split(",")
    if not parts or not parts[0].startswith("t="):
        return False
    ts = parts[0][2:]
    expected = hmac.new(secret.encode("utf-8"), f"{ts}.{body}".encode(), hashlib.sha256).hexdigest()
    candidates = [p[3:] for p in parts[1:] if p.startswith("v1=")]
    return any(hmac.compare_digest(expected, c) for c in candidates)


def standard_signature_valid(key: bytes, body: str, headers: dict[str, str]) -> bool:
    """Independent check of the Standard Webhooks scheme (no timestamp tolerance)."""
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{body}".encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest("v1," + expected, sig) for sig in headers["webhook-signature"].split(" ")
    )


def library_verifies(secret: str, body: str, headers: dict[str, str]) -> bool:
    try:
        Webhook(library_secret(secret)).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


# --- signatures ---------------------------------------------------------------------------------


def test_generated_secret_verifies_with_standardwebhooks(dconn) -> None:
    hook = create_webhook(dconn)
    secret = hook["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:], validate=True)) == 32
    dconn.execute("INSERT INTO users (id, name) VALUES (1, 'Ada')")

    req = claim_one(dconn)
    payload = Webhook(secret).verify(req["body"], req["headers"])
    assert payload == json.loads(req["body"])
    assert payload["record"]["name"] == "Ada"
    assert standard_signature_valid(base64.b64decode(secret[6:]), req["body"], req["headers"])


def test_plain_secret_verifies_with_standardwebhooks(dconn) -> None:
    hook = create_webhook(dconn, secret=PLAIN_SECRET)
    assert hook["secret"] == PLAIN_SECRET
    dconn.execute("INSERT INTO users (id, name) VALUES (1, 'Ada')")

    req = claim_one(dconn)
    lib_secret = base64.b64encode(PLAIN_SECRET.encode()).decode()
    assert Webhook(lib_secret).verify(req["body"], req["headers"]) == json.loads(req["body"])
    assert standard_signature_valid(PLAIN_SECRET.encode("utf-8"), req["body"], req["headers"])


@pytest.mark.parametrize("given", [None, PLAIN_SECRET], ids=["generated", "plain"])
def test_x_webhook_signature_independent_implementation(dconn, given: str | None) -> None:
    hook = create_webhook(dconn, **({"secret": given} if given else {}))
    secret = hook["secret"]
    dconn.execute("INSERT INTO users (id, name) VALUES (1, 'Ada')")
    before = time.time()
    req = claim_one(dconn)
    after = time.time()

    header = req["headers"]["X-Webhook-Signature"]
    m = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", header)
    assert m, header
    ts = int(m.group(1))
    assert ts == int(req["headers"]["webhook-timestamp"])
    assert before - 2 <= ts <= after + 2
    expected = hmac.new(secret.encode("utf-8"), f"{ts}.{req['body']}".encode(), hashlib.sha256).hexdigest()
    assert m.group(2) == expected
    assert x_signature_valid(secret, req["body"], header)
    assert not x_signature_valid(secret + "x", req["body"], header)


def test_each_webhook_signs_with_its_own_secret(dconn) -> None:
    first = create_webhook(dconn)
    second = create_webhook(dconn, secret=PLAIN_SECRET)
    dconn.execute("INSERT INTO users (id, name) VALUES (1, 'Ada')")
    reqs = {r["webhook_id"]: r for r in claim(dconn)}
    assert set(reqs) == {first["id"], second["id"]}
    a, b = reqs[first["id"]], reqs[second["id"]]
    # The change is stored once: both requests carry the same event id, but each its own webhook_id.
    assert json.loads(a["body"])["id"] == json.loads(b["body"])["id"]
    assert json.loads(a["body"])["webhook_id"] == str(first["id"])
    assert json.loads(b["body"])["webhook_id"] == str(second["id"])
    assert library_verifies(first["secret"], a["body"], a["headers"])
    assert library_verifies(second["secret"], b["body"], b["headers"])
    assert not library_verifies(first["secret"], b["body"], b["headers"])
    assert not library_verifies(second["secret"], a["body"], a["headers"])
    assert x_signature_valid(second["secret"], b["body"], b["headers"]["X-Webhook-Signature"])
    assert not x_signature_valid(first["secret"], b["body"], b["headers"]["X-Webhook-Signature"])


def test_rotation_signs_with_old_and_new_secret(dconn) -> None:
    hook = create_webhook(dconn, secret=PLAIN_SECRET)
    rotated = dconn.execute("SELECT * FROM webhooks.rotate_secret(%s)", (hook["id"],)).fetchone()
    new_secret = rotated["secret"]
    assert new_secret.startswith("whsec_") and new_secret != PLAIN_SECRET
    assert rotated["previous_secrets_expire_at"] > datetime.now(UTC) + timedelta(hours=23)
    dconn.execute("INSERT INTO users (id, name) VALUES (1, 'Ada')")

    req = claim_one(dconn)
    body, headers = req["body"], req["headers"]
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert headers["X-Webhook-Signature"].count("v1=") == 2
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64},v1=[0-9a-f]{64}", headers["X-Webhook-Signature"])
    # The library, once per secret, on the same request.
    for secret in (PLAIN_SECRET, new_secret):
        assert Webhook(library_secret(secret)).verify(body, headers) == json.loads(body)
        assert x_signature_valid(secret, body, headers["X-Webhook-Signature"])
    assert not library_verifies("another plain secret 0123456789", body, headers)
    assert not x_signature_valid("another plain secret 0123456789", body, headers["X-Webhook-Signature"])


def test_rotation_with_explicit_secret_and_no_grace_drops_old_secret(dconn) -> None:
    hook = create_webhook(dconn)
    old = hook["secret"]
    new = "the next plain secret 0123456789"
    dconn.execute("SELECT * FROM webhooks.rotate_secret(%s, %s, '0 seconds')", (hook["id"], new))
    time.sleep(0.01)  # the old secret expired at the rotation's now(); claim runs later
    dconn.execute("INSERT INTO users (id, name) VALUES (1, 'Ada')")

    req = claim_one(dconn)
    assert len(req["headers"]["webhook-signature"].split(" ")) == 1
    assert library_verifies(new, req["body"], req["headers"])
    assert not library_verifies(old, req["body"], req["headers"])
    assert x_signature_valid(new, req["body"], req["headers"]["X-Webhook-Signature"])
    assert not x_signature_valid(old, req["body"], req["headers"]["X-Webhook-Signature"])


@pytest.mark.parametrize("given", [None, PLAIN_SECRET], ids=["generated", "plain"])
def test_tampering_breaks_verification(dconn, given: str | None) -> None:
    hook = create_webhook(dconn, **({"secret": given} if given else {}))
    secret = hook["secret"]
    dconn.execute("INSERT INTO users (id, name, score) VALUES (1, 'Ada', 10)")
    req = claim_one(dconn)
    body, headers = req["body"], req["headers"]
    assert library_verifies(secret, body, headers)  # the untouched request does verify

    payload = json.loads(body)
    payload["record"]["score"] = 1_000_000
    for tampered in (
        body.replace("Ada", "Eve"),
        body + " ",
        body.replace('"INSERT"', '"DELETE"'),
        json.dumps(payload),
    ):
        assert tampered != body
        with pytest.raises(WebhookVerificationError):
            Webhook(library_secret(secret)).verify(tampered, headers)
        assert not x_signature_valid(secret, tampered, headers["X-Webhook-Signature"])

    # The signed id and timestamp cannot be swapped either.
    with pytest.raises(WebhookVerificationError):
        Webhook(library_secret(secret)).verify(body, {**headers, "webhook-id": str(uuid.uuid4())})
    other_ts = str(int(headers["webhook-timestamp"]) - 1)
    with pytest.raises(WebhookVerificationError):
        Webhook(library_secret(secret)).verify(body, {**headers, "webhook-timestamp": other_ts})
    legacy = headers["X-Webhook-Signature"].replace(f"t={headers['webhook-timestamp']}", f"t={other_ts}")
    assert not x_signature_valid(secret, body, legacy)


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
