"""Signatures on requests as webhooks.claim() hands them out.

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

import pytest
from signature_helpers import claim, claim_one, create_webhook, library_secret, library_verifies, switch_signer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from pgwebhooks import migrations

PLAIN_SECRET = "plain string secret: ünïcödé ✓ 0123456789"


@pytest.fixture(params=sorted(migrations.SIGNERS))
def db(request: pytest.FixtureRequest, db: str) -> str:
    """The test database, switched to each signer in turn (dconn, in conftest.py, uses it too)."""
    return switch_signer(db, request.param)


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
