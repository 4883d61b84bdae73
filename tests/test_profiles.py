"""Receiver profiles end to end: each profile's deliveries, through the runner over HTTP, verified
by an independent implementation of that system's documented recipe and payload shape.

The recipes are written from the reference documents (../shared/reference/: Fluxbase 000/001,
Flux 002, Rowbase 003, Truss 004) and from Supabase's and Hasura's public documentation of their
database webhook / event trigger payloads, not from pgwebhooks' code: in Python here, and the
JavaScript ones as documented, run under Node (tests/receiver_recipes.js) where Node exists. The
standardwebhooks library must verify every profile's requests as well.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import create_webhook, receiver, runner_config, running
from multidict import CIMultiDict
from psycopg.types.json import Jsonb
from standardwebhooks.webhooks import Webhook

SECRET = "a-plain-string-secret-for-profiles ✓"
RECIPES_JS = Path(__file__).parent / "receiver_recipes.js"
PROFILES = ["standard", "fluxbase", "fluxbase_hex", "truss", "rowbase", "flux", "supabase", "hasura"]
ORDER = {"id": 42, "user_id": 1, "total": 99.99, "note": "Zoë ✓ \"quoted\"", "tags": ["a", "b"]}
EVENT_DATA = {"orderId": "ord_8x7kj2", "amount": 9900, "currency": "usd", "nested": {"ok": True, "none": None}}


def stringify(body: bytes) -> str:
    """What JSON.stringify(JSON.parse(body)) prints, in Python."""
    return json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False)


def hex_hmac(message: str | bytes, secret: str = SECRET) -> str:
    data = message.encode("utf-8") if isinstance(message, str) else message
    return hmac.new(secret.encode("utf-8"), data, hashlib.sha256).hexdigest()


def fluxbase_python_recipe(payload: bytes, header: str, secret: str, tolerance_seconds: int = 300) -> bool:
    """Fluxbase's Python recipe (000): t=<ts>,v1=<hex> over "<ts>.<raw body>"."""
    parts: dict[str, int] = {}
    signatures = []
    for part in header.split(","):
        key, value = part.split("=", 1)
        if key == "t":
            parts["timestamp"] = int(value)
        elif key == "v1":
            signatures.append(value)
    if abs(int(time.time()) - parts["timestamp"]) > tolerance_seconds:
        return False
    signed_payload = f"{parts['timestamp']}.{payload.decode('utf-8')}"
    expected_sig = hmac.new(secret.encode("utf-8"), signed_payload.encode("utf-8"), hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(sig, expected_sig) for sig in signatures)


def js_recipes(body: bytes, headers: dict[str, str]) -> dict[str, bool] | None:
    node = shutil.which("node")
    if node is None:
        return None
    out = subprocess.run(
        [node, str(RECIPES_JS)], input=json.dumps({"body": body.decode(), "headers": headers, "secret": SECRET}),
        capture_output=True, text=True, timeout=30, check=True,
    )
    return json.loads(out.stdout)


def standard_library_verifies(body: bytes, headers: dict[str, str]) -> bool:
    Webhook(base64.b64encode(SECRET.encode()).decode()).verify(body, headers)
    return True


def check_shape(profile: str, kind: str, payload: dict[str, Any], hook: dict[str, Any]) -> None:
    """The payload shapes as each system documents them."""
    if kind == "EVENT":
        if profile == "rowbase":
            assert list(payload) == ["id", "type", "created_at", "data"]
        elif profile == "flux":
            assert list(payload) == ["id", "type", "created", "data"]
        else:
            assert list(payload) == ["id", "type", "timestamp", "data", "webhook_id"]
            assert payload["webhook_id"] == str(hook["id"])
        assert payload["type"] == "order.completed"
        assert payload["data"] == EVENT_DATA
        return
    updated = {**ORDER, "total": 5}  # the UPDATE's new row, which the DELETE then removes
    new = {"INSERT": ORDER, "UPDATE": updated, "DELETE": None}[kind]
    old = {"INSERT": None, "UPDATE": ORDER, "DELETE": updated}[kind]
    if profile in ("standard", "fluxbase", "fluxbase_hex"):
        assert list(payload) == ["id", "event", "table", "schema", "record", "old_record", "timestamp", "webhook_id"]
        assert (payload["event"], payload["table"], payload["schema"]) == (kind, "orders", "public")
        assert payload["record"] == (new or old) and payload["old_record"] == old
    elif profile == "truss":
        assert list(payload) == ["event", "schema", "table", "row", "old_row", "timestamp"]
        assert (payload["event"], payload["schema"], payload["table"]) == (kind, "public", "orders")
        assert payload["row"] == (new or old) and payload["old_row"] == old
    elif profile == "supabase":
        assert list(payload) == ["type", "table", "schema", "record", "old_record"]
        assert (payload["type"], payload["table"], payload["schema"]) == (kind, "orders", "public")
        assert payload["record"] == new and payload["old_record"] == old
    elif profile == "hasura":
        assert set(payload) == {"event", "created_at", "id", "delivery_info", "trigger", "table"}
        assert payload["event"]["op"] == kind
        assert payload["event"]["data"] == {"old": old, "new": new}
        assert payload["table"] == {"schema": "public", "name": "orders"}
        assert payload["trigger"] == {"name": hook["name"]}
        assert payload["delivery_info"] == {"max_retries": 7, "current_retry": 0}  # the default schedule
    else:  # rowbase, flux: row changes in the event envelope
        assert payload["type"] == f"orders.{kind.lower()}"
        assert payload["data"]["event"] == kind and payload["data"]["record"] == (new or old)


def check_signatures(profile: str, body: bytes, headers: CIMultiDict[str]) -> None:
    assert standard_library_verifies(body, {k.lower(): v for k, v in headers.items()})
    js = js_recipes(body, dict(headers))
    if js is not None:
        assert js["stringify_identical"], body
    if profile == "fluxbase":
        assert fluxbase_python_recipe(body, headers["X-Fluxbase-Signature"], SECRET)
        # The JS recipe re-serialises the parsed body; so does this one.
        t = headers["X-Fluxbase-Signature"].split(",")[0][2:]
        assert f"v1={hex_hmac(f'{t}.{stringify(body)}')}" in headers["X-Fluxbase-Signature"]
        assert hmac.compare_digest(headers["X-Webhook-Signature"], hex_hmac(stringify(body)))
        assert js is None or (js["fluxbase"] and js["fluxbase_legacy"]), js
    elif profile == "fluxbase_hex":
        # 001's receivers: a bare hex HMAC of JSON.stringify(req.body), no t=.
        assert hmac.compare_digest(headers["X-Fluxbase-Signature"], hex_hmac(stringify(body)))
        assert headers["X-Webhook-Signature"].startswith("t=")
        assert js is None or js["fluxbase_hex"], js
    else:
        assert headers["X-Webhook-Signature"].startswith("t=")
        assert "X-Fluxbase-Signature" not in headers
    if profile == "truss":
        assert hmac.compare_digest(headers["X-Truss-Signature"], hex_hmac(body))
        assert js is None or (js["truss_raw"] and js["truss_stringify"]), js
    else:
        assert "X-Truss-Signature" not in headers
    if profile == "rowbase":
        assert hmac.compare_digest(headers["X-Rowbase-Signature"], "sha256=" + hex_hmac(stringify(body)))
        assert js is None or js["rowbase"], js
    else:
        assert "X-Rowbase-Signature" not in headers


@pytest.mark.parametrize("profile", PROFILES)
async def test_profile_end_to_end(db: str, profile: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, user_id int, total numeric, note text, tags text[])")
        conn.execute("SELECT webhooks.create_event_type('order.completed', 'an order was paid')")
    async with receiver() as rx:
        hook = create_webhook(db, rx.url, table="orders", secret=SECRET, profile=profile,
                              events=Jsonb([{"table": "orders"}, {"event_type": "order.*"}]))
        async with running(runner_config(db)):
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute("INSERT INTO orders VALUES (42, 1, 99.99, %s, '{a,b}')", (ORDER["note"],))
                conn.execute("UPDATE orders SET total = 5")
                conn.execute("DELETE FROM orders")
                event_id = conn.execute("SELECT webhooks.publish('order.completed', %s)",
                                        (Jsonb(EVENT_DATA),)).fetchone()
                with conn.transaction(force_rollback=True):
                    conn.execute("SELECT webhooks.publish('order.completed', '{\"never\": true}')")
            await rx.wait_for(4, timeout=20)
    assert len(rx.requests) == 4, [r.body for r in rx.requests]
    by_kind: dict[str, Any] = {}
    for r in rx.requests:
        headers = r.headers  # case-insensitive, as on the wire
        payload = r.payload
        kind = ("EVENT" if "order.completed" in (payload.get("type"),) else
                payload.get("event", {}).get("op") if profile == "hasura" else
                payload.get("type") if profile == "supabase" else
                payload["data"]["event"] if profile in ("rowbase", "flux") else payload["event"])
        by_kind[kind] = r
        assert r.body.decode() == stringify(r.body), "compact JSON: re-serialising gives the same bytes"
        check_shape(profile, kind, payload, hook)
        check_signatures(profile, r.body, headers)
    assert set(by_kind) == {"INSERT", "UPDATE", "DELETE", "EVENT"}
    assert by_kind["EVENT"].headers["webhook-id"] == str(event_id[0])


async def test_profiles_without_a_secret_send_no_hex_signature(db: str) -> None:
    """A webhook whose secrets all expired signs nothing: no empty or bogus profile header."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        for profile in ("truss", "rowbase", "fluxbase", "fluxbase_hex"):
            conn.execute("SELECT webhooks.create_webhook(%s, 'https://r.example', '[{\"table\": \"orders\"}]', "
                         "profile => %s)", (profile, profile))
        conn.execute("DELETE FROM webhooks.secrets")
        conn.execute("INSERT INTO orders VALUES (1)")
        rows = conn.execute("SELECT headers FROM webhooks.claim(10)").fetchall()
    assert len(rows) == 4
    for (headers,) in rows:
        assert "X-Truss-Signature" not in headers and "X-Rowbase-Signature" not in headers
        assert headers.get("X-Fluxbase-Signature", "t=").startswith("t=")
        assert headers.get("X-Webhook-Signature", "").startswith("t=")
