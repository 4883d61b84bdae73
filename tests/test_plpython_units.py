"""Unit tests of the PL/Python bodies in plpython/*.py, without a database.

Each file is a plain Python module (its header comment says how it becomes a SQL function), so it
is loaded here with runpy and its functions are called directly. The `# CALL:` line is also run the
way PL/Python runs a body: as the body of a function whose parameters are the SQL arguments.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import runpy
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PLPYTHON = Path(__file__).resolve().parent.parent / "plpython"

WHSEC = "whsec_" + base64.b64encode(bytes(range(32))).decode()
PLAIN = "plain-string secret, non-ASCII too: päßwörd ✓"
BODY = '{"id": "7d6f", "event": "INSERT", "record": {"name": "Zoë ✓"}}'
MSG_ID = "0b0cf5e4-5a54-4e0e-9a7b-2b4c1f0f8c11"


def load(name: str) -> dict[str, Any]:
    return runpy.run_path(str(PLPYTHON / f"{name}.py"))


@pytest.fixture(scope="module")
def sign_headers() -> Callable[..., dict[str, str]]:
    return load("sign_headers")["sign_headers"]


@pytest.fixture(scope="module")
def generate_secret() -> Callable[[], str]:
    return load("generate_secret")["generate_secret"]


def header_lines(name: str) -> tuple[list[str], str]:
    """(SQL argument names, CALL expression) from a plpython file's header comment."""
    source = (PLPYTHON / f"{name}.py").read_text()
    sql = " ".join(line[len("# SQL:"):] for line in source.splitlines() if line.startswith("# SQL:"))
    calls = [line[len("# CALL:"):].strip() for line in source.splitlines() if line.startswith("# CALL:")]
    assert len(calls) == 1, f"{name}.py must have exactly one # CALL: line"
    match = re.search(r"\((.*?)\)\s*RETURNS", sql, re.S | re.I)
    assert match, f"no argument list in the # SQL: header of {name}.py"
    args = [part.split()[0] for part in match.group(1).split(",") if part.strip()]
    return args, calls[0]


def as_plpython_function(name: str) -> Callable[..., Any]:
    """The file's source plus its CALL line, wrapped like PL/Python wraps a function body."""
    args, call = header_lines(name)
    source = (PLPYTHON / f"{name}.py").read_text() + "\n" + call + "\n"
    wrapper = f"def __plpython_procedure({', '.join(args)}):\n" + textwrap.indent(source, "    ")
    namespace: dict[str, Any] = {}
    exec(compile(wrapper, f"<plpython {name}>", "exec"), namespace)
    return namespace["__plpython_procedure"]


def standard_sig(key: bytes, msg_id: str, ts: int, body: str) -> str:
    digest = hmac.new(key, f"{msg_id}.{ts}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def legacy_sig(secret: str, ts: int, body: str) -> str:
    return hmac.new(secret.encode("utf-8"), f"{ts}.{body}".encode(), hashlib.sha256).hexdigest()


# --- sign_headers -------------------------------------------------------------------------------


def test_sign_headers_returns_exactly_the_four_signature_headers(sign_headers) -> None:
    headers = sign_headers(MSG_ID, 1_700_000_000, BODY, [WHSEC])
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature", "X-Webhook-Signature"}
    assert headers["webhook-id"] == MSG_ID
    assert headers["webhook-timestamp"] == "1700000000"
    assert all(isinstance(v, str) for v in headers.values())


def test_standard_signature_with_whsec_secret_uses_decoded_key(sign_headers) -> None:
    ts = 1_700_000_123
    headers = sign_headers(MSG_ID, ts, BODY, [WHSEC])
    assert headers["webhook-signature"] == standard_sig(bytes(range(32)), MSG_ID, ts, BODY)
    # Not the secret's text as key: the whsec_ prefix and base64 are stripped first.
    assert headers["webhook-signature"] != standard_sig(WHSEC.encode(), MSG_ID, ts, BODY)


def test_standard_signature_with_plain_secret_uses_utf8_bytes(sign_headers) -> None:
    ts = 1_700_000_456
    headers = sign_headers(MSG_ID, ts, BODY, [PLAIN])
    assert headers["webhook-signature"] == standard_sig(PLAIN.encode("utf-8"), MSG_ID, ts, BODY)
    assert headers["webhook-signature"] != standard_sig(PLAIN.encode("latin-1", "replace"), MSG_ID, ts, BODY)


@pytest.mark.parametrize("secret", [WHSEC, PLAIN], ids=["whsec", "plain"])
def test_x_webhook_signature_format_and_value(sign_headers, secret: str) -> None:
    ts = 1_700_000_789
    headers = sign_headers(MSG_ID, ts, BODY, [secret])
    value = headers["X-Webhook-Signature"]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", value), value
    # The legacy scheme keys with the secret's UTF-8 text as given, whsec_ prefix included.
    assert value == f"t={ts},v1={legacy_sig(secret, ts, BODY)}"


@pytest.mark.parametrize("secret", [WHSEC, PLAIN], ids=["whsec", "plain"])
def test_standard_signature_verifies_with_standardwebhooks_library(sign_headers, secret: str) -> None:
    ts = int(time.time())
    headers = sign_headers(MSG_ID, ts, BODY, [secret])
    library_secret = secret if secret.startswith("whsec_") else base64.b64encode(secret.encode()).decode()
    assert Webhook(library_secret).verify(BODY, headers) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(library_secret).verify(BODY.replace("INSERT", "DELETE"), headers)


def test_one_signature_per_secret_in_order(sign_headers) -> None:
    ts = 1_700_001_000
    secrets = [WHSEC, PLAIN, "another-plain-secret-0123456789"]
    headers = sign_headers(MSG_ID, ts, BODY, secrets)

    standard = headers["webhook-signature"].split(" ")
    assert len(standard) == 3
    assert standard == [
        standard_sig(bytes(range(32)), MSG_ID, ts, BODY),
        standard_sig(PLAIN.encode(), MSG_ID, ts, BODY),
        standard_sig(secrets[2].encode(), MSG_ID, ts, BODY),
    ]

    parts = headers["X-Webhook-Signature"].split(",")
    assert parts[0] == f"t={ts}"
    assert parts[1:] == [f"v1={legacy_sig(s, ts, BODY)}" for s in secrets]


def test_signatures_cover_id_timestamp_and_body(sign_headers) -> None:
    base = sign_headers(MSG_ID, 1_700_002_000, BODY, [WHSEC])
    other_id = sign_headers(MSG_ID[:-1] + "2", 1_700_002_000, BODY, [WHSEC])
    other_ts = sign_headers(MSG_ID, 1_700_002_001, BODY, [WHSEC])
    other_body = sign_headers(MSG_ID, 1_700_002_000, BODY + " ", [WHSEC])
    assert base["webhook-signature"] != other_id["webhook-signature"]
    assert base["X-Webhook-Signature"] == other_id["X-Webhook-Signature"]  # the legacy scheme has no id
    assert base["webhook-signature"] != other_ts["webhook-signature"]
    assert base["X-Webhook-Signature"] != other_ts["X-Webhook-Signature"]
    assert base["webhook-signature"] != other_body["webhook-signature"]
    assert base["X-Webhook-Signature"] != other_body["X-Webhook-Signature"]


def test_non_ascii_body_is_signed_as_utf8(sign_headers) -> None:
    body = '{"name": "日本語 — ünïcödé"}'
    headers = sign_headers(MSG_ID, 1_700_003_000, body, [PLAIN])
    digest = hmac.new(PLAIN.encode(), f"{MSG_ID}.1700003000.".encode() + body.encode("utf-8"), hashlib.sha256)
    assert headers["webhook-signature"] == "v1," + base64.b64encode(digest.digest()).decode()


def test_sign_headers_is_deterministic(sign_headers) -> None:
    # The SQL function is declared IMMUTABLE: same input, same output.
    args = (MSG_ID, 1_700_004_000, BODY, [WHSEC, PLAIN])
    assert sign_headers(*args) == sign_headers(*args)


def test_sign_headers_as_plpython_body_returns_json() -> None:
    fn = as_plpython_function("sign_headers")
    out = fn(MSG_ID, 1_700_005_000, BODY, [WHSEC])
    assert isinstance(out, str)  # returned to PostgreSQL as jsonb text
    assert json.loads(out) == load("sign_headers")["sign_headers"](MSG_ID, 1_700_005_000, BODY, [WHSEC])
    # A NULL array arrives as None: no signatures rather than an exception.
    empty = json.loads(fn(MSG_ID, 1_700_005_000, BODY, None))
    assert empty["webhook-signature"] == ""
    assert empty["X-Webhook-Signature"] == "t=1700005000"


# --- generate_secret ----------------------------------------------------------------------------


def test_generate_secret_format(generate_secret) -> None:
    secret = generate_secret()
    assert isinstance(secret, str)
    assert secret.startswith("whsec_")
    encoded = secret[len("whsec_"):]
    assert re.fullmatch(r"[A-Za-z0-9+/]{43}=", encoded), encoded
    assert len(base64.b64decode(encoded, validate=True)) == 32


def test_generate_secret_values_are_distinct(generate_secret) -> None:
    values = [generate_secret() for _ in range(200)]
    assert len(set(values)) == len(values)
    keys = [base64.b64decode(v[len("whsec_"):]) for v in values]
    # 32 random bytes: not all-zero, and the bytes vary across the whole key.
    assert all(any(k) for k in keys)
    assert len({k[:4] for k in keys}) > 190


def test_generated_secret_is_accepted_by_standardwebhooks(generate_secret, sign_headers) -> None:
    secret = generate_secret()
    ts = int(time.time())
    headers = sign_headers(MSG_ID, ts, BODY, [secret])
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_generate_secret_as_plpython_body() -> None:
    fn = as_plpython_function("generate_secret")
    first, second = fn(), fn()
    for value in (first, second):
        assert value.startswith("whsec_")
        try:
            assert len(base64.b64decode(value[6:], validate=True)) == 32
        except binascii.Error as exc:  # pragma: no cover - a failure message, not a branch
            pytest.fail(f"not base64: {value!r}: {exc}")
    assert first != second
