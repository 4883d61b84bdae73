"""Helpers for the tests of requests as webhooks.claim() hands them out (test_signatures.py,
test_payload_and_headers.py): a webhook on the `users` table, claims, and a standardwebhooks check."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import psycopg
from helpers import skip_unless_signer_available
from psycopg.types.json import Jsonb
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from pgwebhooks import migrations


def switch_signer(db: str, signer: str) -> str:
    """The test database, switched to `signer` (the template has the build's default)."""
    skip_unless_signer_available(db, signer)
    migrations.migrate(db, signer=signer)
    with psycopg.connect(db) as c:
        assert c.execute("SELECT webhooks.signer()").fetchone() == (signer,)
    return db


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

def library_verifies(secret: str, body: str, headers: dict[str, str]) -> bool:
    try:
        Webhook(library_secret(secret)).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True
