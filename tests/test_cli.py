"""The `pgwebhooks` command: management through the SQL API, errors as one readable line."""

from __future__ import annotations

import json

import psycopg
from click.testing import CliRunner

from pgwebhooks import migrations
from pgwebhooks.cli import main


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def make_table(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, total int)")


def test_sql_prints_the_install_script() -> None:
    code, out = invoke("sql")
    assert code == 0
    assert out == migrations.install_script()


def test_migrate_reports_up_to_date_on_an_installed_database(db: str) -> None:
    code, out = invoke("migrate", "--dsn", db)
    assert code == 0 and "up to date" in out


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
