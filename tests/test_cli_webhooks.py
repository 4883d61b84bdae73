"""`pgwebhooks webhooks`, `deliveries`, `replay`, `status` and `purge`: management through the SQL
API, names wherever ids go, errors as one readable line."""

from __future__ import annotations

import json

import psycopg
from click.testing import CliRunner
from helpers import invoke, make_table
from psycopg.types.json import Jsonb

from pgwebhooks.cli import main


def test_webhook_lifecycle_from_the_command_line(db: str) -> None:
    make_table(db)
    code, out = invoke("webhooks", "create", "orders-hook", "https://example.com/hook", "--dsn", db,
                       "--table", "orders:INSERT,update", "--header", "X-Team=billing", "--json")
    assert code == 0, out
    created = json.loads(out)
    assert created["secret"].startswith("whsec_")
    assert created["events"] == [{"table": "public.orders", "operations": ["INSERT", "UPDATE"]}]
    assert created["headers"] == {"X-Team": "billing"}
    hook_id = created["id"]

    code, out = invoke("webhooks", "list", "--dsn", db, "--json")
    listed = json.loads(out)
    assert [w["name"] for w in listed] == ["orders-hook"] and "secret" not in listed[0]

    code, out = invoke("webhooks", "update", hook_id, "--dsn", db, "--disable", "--max-retries", "7", "--json")
    updated = json.loads(out)
    assert updated["enabled"] is False and updated["max_retries"] == 7

    code, out = invoke("webhooks", "get", hook_id, "--dsn", db)
    assert code == 0 and "orders-hook" in out and "whsec_" not in out

    code, out = invoke("webhooks", "rotate-secret", hook_id, "--dsn", db, "--grace", "1 hour", "--json")
    assert json.loads(out)["secret"].startswith("whsec_")

    code, out = invoke("webhooks", "update", hook_id, "--dsn", db, "--enable")
    assert code == 0
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (total) VALUES (5)")
        conn.execute("SELECT count(*) FROM webhooks.claim(10)")  # fan out into a delivery
    code, out = invoke("deliveries", hook_id, "--dsn", db, "--json")
    deliveries = json.loads(out)
    assert len(deliveries) == 1 and deliveries[0]["event"] == "INSERT"

    code, out = invoke("webhooks", "test", hook_id, "--dsn", db)
    assert code == 0 and "queued test delivery" in out

    code, out = invoke("webhooks", "delete", hook_id, "--dsn", db)
    assert code == 0
    code, out = invoke("webhooks", "list", "--dsn", db, "--json")
    assert json.loads(out) == []


def test_bad_input_is_one_line_with_the_sqlstate(db: str) -> None:
    make_table(db)
    result = CliRunner().invoke(main, ["webhooks", "create", "x", "ftp://example.com", "--dsn", db,
                                       "--table", "orders"])
    assert result.exit_code == 1
    assert "url: 'ftp://example.com' is not an http:// or https:// URL [WH003]" in result.output
    assert "Traceback" not in result.output

    result = CliRunner().invoke(main, ["webhooks", "create", "x", "https://example.com", "--dsn", db,
                                       "--table", "nope"])
    assert result.exit_code == 1 and "[WH006]" in result.output and "public.nope" in result.output


def test_unknown_webhook_id_is_a_clear_error(db: str) -> None:
    result = CliRunner().invoke(main, ["webhooks", "get", "00000000-0000-0000-0000-000000000000", "--dsn", db])
    assert result.exit_code == 1 and "no webhook with id" in result.output and "[WH404]" in result.output


def test_deliveries_attempts_needs_no_webhook_id(db: str) -> None:
    make_table(db)
    code, out = invoke("webhooks", "create", "h", "https://example.com/h", "--dsn", db, "--table", "orders", "--json")
    hook_id = json.loads(out)["id"]
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (total) VALUES (1)")
        claimed = conn.execute("SELECT delivery_id, attempt FROM webhooks.claim(10)").fetchall()
        assert len(claimed) == 1
        delivery_id, attempt = claimed[0]
        conn.execute("SELECT * FROM webhooks.complete(%s)", (Jsonb([{
            "delivery_id": delivery_id, "attempt": attempt, "status_code": 503, "response_excerpt": "busy",
        }]),))
    code, out = invoke("deliveries", "--attempts", str(delivery_id), "--dsn", db, "--json")
    assert code == 0, out
    attempts = json.loads(out)
    assert [(a["attempt"], a["status_code"], a["response_excerpt"]) for a in attempts] == [(1, 503, "busy")]

    code, out = invoke("deliveries", hook_id, "--dsn", db, "--json")
    assert code == 0 and [d["delivery_id"] for d in json.loads(out)] == [delivery_id]

    for args in ([], [hook_id, "--attempts", str(delivery_id)]):
        result = CliRunner().invoke(main, ["deliveries", "--dsn", db, *args])
        assert result.exit_code == 2 and "either WEBHOOK_ID or --attempts" in result.output


def test_get_shows_a_retry_schedule_and_the_limits(db: str) -> None:
    """`webhooks get` prints every field of the view, a list of intervals included."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE scheduled (id int PRIMARY KEY)")
        row = conn.execute(
            "SELECT id FROM webhooks.create_webhook('sched', 'https://e.example', '[{\"table\": \"scheduled\"}]',"
            " retry_schedule => '{1 minute,5 minutes}', max_concurrency => 3)").fetchone()
    assert row is not None
    code, out = invoke("webhooks", "get", str(row[0]), "--dsn", db)
    assert code == 0, out
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines() if len(line.split()) > 1}
    assert lines["retry_schedule"] == '[60,300]'  # seconds, as --json prints intervals
    assert (lines["max_concurrency"], lines["profile"], lines["paused"]) == ("3", "standard", "False")


def test_create_uses_the_default_schedule_and_replay_failed_shows_its_count(db: str) -> None:
    make_table(db)
    code, out = invoke("webhooks", "create", "h", "http://127.0.0.1:9/", "--table", "orders", "--dsn", db, "--json")
    assert code == 0, out
    created = json.loads(out)
    assert created["max_retries"] == 7 and len(created["retry_schedule"]) == 7
    code, out = invoke("webhooks", "create", "b", "http://127.0.0.1:9/", "--table", "orders", "--dsn", db,
                       "--max-retries", "2", "--json")
    assert code == 0 and json.loads(out)["retry_schedule"] is None and json.loads(out)["max_retries"] == 2
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE webhooks.webhooks SET max_retries = 0 WHERE name = 'h'")
        conn.execute("INSERT INTO orders (total) SELECT g FROM generate_series(1, 2) g")
        leased = conn.execute("SELECT delivery_id, attempt FROM webhooks.claim(10, 30) c"
                              " JOIN webhooks.webhooks w ON w.id = c.webhook_id WHERE w.name = 'h'").fetchall()
        conn.execute("SELECT * FROM webhooks.complete(%s)",
                     (Jsonb([{"delivery_id": d, "attempt": a, "status_code": 500} for d, a in leased]),))
    hook = created["id"]
    code, out = invoke("replay", "--failed-of", hook, "--dry-run", "--dsn", db)
    assert code == 0 and "would replay 2" in out
    code, out = invoke("replay", "--failed-of", hook, "--dsn", db, "--json")
    assert code == 0 and json.loads(out) == {"replayed": 2, "would_replay": 2, "dry_run": False}
    code, out = invoke("replay", "--failed-of", hook, "--dsn", db)
    assert code == 0 and "queued 0 replay(s)" in out


def test_names_work_wherever_ids_do_and_json_has_iso_timestamps_and_seconds(db: str) -> None:
    make_table(db)
    code, out = invoke("webhooks", "create", "local", "https://example.com/h", "--table", "orders", "--dsn", db)
    assert code == 0, out
    code, out = invoke("webhooks", "get", "local", "--dsn", db, "--json")
    assert code == 0, out
    shown = json.loads(out)
    assert shown["name"] == "local" and shown["pause_after"] == 259200
    assert shown["retry_schedule"] == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert "T" in shown["created_at"] and shown["created_at"][:4].isdigit()
    for args in (("webhooks", "pause", "local"), ("webhooks", "resume", "local"), ("webhooks", "test", "local"),
                 ("deliveries", "local"), ("replay", "--failed-of", "local", "--dry-run"),
                 ("webhooks", "rotate-secret", "local"), ("webhooks", "update", "local", "--timeout", "5")):
        code, out = invoke(*args, "--dsn", db, "--json")
        assert code == 0, (args, out)
        json.loads(out)
    code, out = invoke("status", "--dsn", db, "--json")
    status = json.loads(out)[0]
    assert status["pending"] == 1 and isinstance(status["pending"], int) and status["pause_after"] == 259200
    code, out = invoke("status", "--blocks", "--dsn", db, "--json")
    assert code == 0 and ("deliveries", "current") in {(b["family"], b["state"]) for b in json.loads(out)}
    code, out = invoke("status", "--blocks", "--dsn", db)
    assert code == 0 and "held_by" in out.splitlines()[0] and "captures" in out
    code, out = invoke("purge", "--dsn", db, "--json")
    assert json.loads(out) == {"deliveries": 0, "captures": 0}
    result = CliRunner().invoke(main, ["webhooks", "get", "nope", "--dsn", db])
    assert result.exit_code == 1 and "no webhook named 'nope'" in result.output
    code, out = invoke("webhooks", "delete", "local", "--dsn", db, "--json")
    assert code == 0 and json.loads(out) == {"deleted": shown["id"]}


def test_wh_errors_are_one_line_and_context_only_with_verbose(db: str) -> None:
    args = ["webhooks", "update", "00000000-0000-0000-0000-000000000000", "--timeout", "5", "--dsn", db]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0, result.output
    assert "[WH404]" in result.output and "PL/pgSQL" not in result.output
    verbose = CliRunner().invoke(main, ["--verbose", *args])
    assert verbose.exit_code == 1 and "context: PL/pgSQL" in verbose.output
