"""Endpoint health: alerts heard by a LISTEN connection, and the CLI's health commands.

Each step commits (NOTIFY is delivered at commit); time is faked by moving failing_since.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from helpers import invoke
from psycopg.types.json import Jsonb


def setup(db: str, **options: Any) -> str:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        row = conn.execute(
            "SELECT id FROM webhooks.create_webhook('shop', 'https://receiver.example/hook',"
            " '[{\"table\": \"orders\"}]', max_retries => %s, secret_headers => %s)",
            (options.get("max_retries", 10), Jsonb(options.get("secret_headers", {}))),
        ).fetchone()
        assert row is not None
        return str(row[0])


def claim_and_report(db: str, code: int | None) -> list[str]:
    """Claim everything due and report `code` (None: no response) for each; returns the statuses."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE webhooks.deliveries SET next_attempt_at = now() - interval '1 second'"
                     " WHERE status = 'pending'")
        conn.execute("UPDATE webhooks.endpoints SET circuit = 'closed', retry_at = NULL")
        leases = conn.execute("SELECT delivery_id, attempt FROM webhooks.claim(100)").fetchall()
        results = [{"delivery_id": d, "attempt": a, "status_code": code, "latency_ms": 5,
                    "error": None if code else "connection refused"} for d, a in leases]
        return [r[2] for r in conn.execute("SELECT * FROM webhooks.complete(%s)", (Jsonb(results),)).fetchall()]


def alerts(listener: psycopg.Connection) -> list[dict[str, Any]]:
    return [json.loads(n.payload) for n in listener.notifies(timeout=0.5, stop_after=50)]


def test_alerts_reach_a_listen_connection(db: str) -> None:
    hook = setup(db, max_retries=3)
    with psycopg.connect(db, autocommit=True) as listener:
        listener.execute("LISTEN webhooks_alerts")
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("INSERT INTO orders SELECT generate_series(1, 3)")
        assert claim_and_report(db, 500) == ["pending"] * 3
        got = alerts(listener)
        assert [a["kind"] for a in got] == ["failing"]
        assert got[0]["webhook_id"] == hook and got[0]["consecutive_failures"] == 3
        assert got[0]["last_error"] == "HTTP 500"

        assert claim_and_report(db, 200) == ["delivered"] * 3
        assert [a["kind"] for a in alerts(listener)] == ["recovered"]

        # Retries run out: one `exhausted` alert per delivery.
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("INSERT INTO orders VALUES (10), (11)")
        for _ in range(3):
            claim_and_report(db, 400)
        assert claim_and_report(db, 400) == ["failed", "failed"]
        kinds = [a["kind"] for a in alerts(listener)]
        assert kinds.count("exhausted") == 2 and "failing" in kinds

        # 410 pauses (not disables), and update_webhook(enabled = false) disables.
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("INSERT INTO orders VALUES (20)")
        assert claim_and_report(db, 410) == ["pending"]
        paused = [a for a in alerts(listener) if a["kind"] == "paused"]
        assert len(paused) == 1 and "410" in paused[0]["reason"]
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("SELECT webhooks.update_webhook(%s, '{\"enabled\": false}')", (hook,))
        disabled = alerts(listener)
        assert [a["kind"] for a in disabled] == ["disabled"] and disabled[0]["name"] == "shop"


def test_auto_pause_alert_after_pause_after(db: str) -> None:
    hook = setup(db, max_retries=50)
    with psycopg.connect(db, autocommit=True) as listener:
        listener.execute("LISTEN webhooks_alerts")
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("INSERT INTO orders SELECT generate_series(1, 5)")
        claim_and_report(db, None)
        with psycopg.connect(db, autocommit=True) as conn:
            # Three days and a minute ago (the default pause_after is 3 days).
            conn.execute("UPDATE webhooks.endpoints SET failing_since = now() - interval '3 days 1 minute'")
        claim_and_report(db, None)
        got = alerts(listener)
        assert [a["kind"] for a in got] == ["failing", "paused"]
        assert got[1]["webhook_id"] == hook and "paused automatically" in got[1]["reason"]
    with psycopg.connect(db, autocommit=True) as conn:
        state, pending = conn.execute(
            "SELECT state, pending FROM webhooks.webhook_status WHERE id = %s", (hook,)).fetchone() or (None, None)
        assert (state, pending) == ("paused", 5)
        assert conn.execute("SELECT count(*) FROM webhooks.claim(100)").fetchone() == (0,)


def test_cli_alerts_status_pause_and_secret_headers(db: str) -> None:
    hook = setup(db, secret_headers={"Authorization": "Bearer t0ps3cr3t"})
    for args in (("webhooks", "list", "--json"), ("webhooks", "get", hook, "--json")):
        code, out = invoke(*args, "--dsn", db)
        assert code == 0 and "t0ps3cr3t" not in out and "shop" in out

    # A process of its own: CliRunner swaps sys.stdout, so two invocations cannot share a process.
    cli = Path(sys.executable).parent / "pgwebhooks"
    proc = subprocess.Popen([str(cli), "alerts", "--dsn", db, "--count", "1", "--seconds", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            for _ in range(200):  # until the CLI listens, at most 20 s
                if conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN webhooks_alerts'"
                                ).fetchone() == (1,):
                    break
                time.sleep(0.1)
        code, out = invoke("webhooks", "pause", hook, "--reason", "deploy", "--dsn", db)
        assert code == 0, out
        stdout, stderr = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, stderr
    alert = json.loads(stdout.strip())
    assert alert["kind"] == "paused" and alert["reason"] == "deploy"

    code, out = invoke("status", "--dsn", db, "--json")
    assert code == 0 and json.loads(out)[0]["state"] == "paused"
    code, out = invoke("webhooks", "resume", hook, "--dsn", db)
    assert code == 0
    code, out = invoke("status", "--dsn", db)
    assert code == 0 and "healthy" in out


def test_alerts_are_published_as_events_never_to_the_webhook_they_are_about(db: str) -> None:
    """Alerts are also application events (pgwebhooks.webhook.*, pgwebhooks.delivery.exhausted):
    a webhook subscribed to `pgwebhooks.*` receives another webhook's alert, not its own."""
    hook = setup(db)
    with psycopg.connect(db, autocommit=True) as conn:
        ops, ops2 = (str(conn.execute(
            "SELECT id FROM webhooks.create_webhook(%s, 'https://ops.example/hook', %s)", (name, Jsonb(events)),
        ).fetchone()[0]) for name, events in (("ops", [{"event_type": "pgwebhooks.*"}]),
                                              ("ops2", [{"event_type": "pgwebhooks.webhook.paused"}])))
        conn.execute("SELECT webhooks.pause_webhook(%s, 'deploy')", (hook,))
        conn.execute("SELECT webhooks.pause_webhook(%s, 'maintenance')", (ops2,))
        published = conn.execute(
            "SELECT event_type, data ->> 'webhook_id', data ->> 'reason', webhook_ids::text[] FROM webhooks.captures"
            " WHERE operation = 'EVENT' ORDER BY id").fetchall()
        assert published == [("pgwebhooks.webhook.paused", hook, "deploy", sorted([ops, ops2])),
                             ("pgwebhooks.webhook.paused", ops2, "maintenance", [ops])]
        claimed = conn.execute("SELECT webhook_id::text, body FROM webhooks.claim(100) ORDER BY delivery_id").fetchall()
    assert [w for w, _ in claimed] == [ops, ops]  # ops2 is paused: its copy of the first alert waits
    bodies = [json.loads(b) for _, b in claimed]
    assert [b["type"] for b in bodies] == ["pgwebhooks.webhook.paused"] * 2
    assert [(b["data"]["kind"], b["data"]["webhook_id"]) for b in bodies] == [("paused", hook), ("paused", ops2)]
