"""The `pgwebhooks` command: management through the SQL API, errors as one readable line."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from conftest import dsn_params
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


# -- issue 7 item 9: options and command shapes ------------------------------------------------


def test_an_unknown_log_level_is_a_usage_error_not_a_traceback() -> None:
    result = CliRunner().invoke(main, ["run", "--dsn", "postgresql://nowhere", "--log-level", "LOUD"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--log-level'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


def test_log_levels_are_case_insensitive() -> None:
    ctx = main.commands["run"].make_context("run", ["--dsn", "x", "--log-level", "debug"])
    assert ctx.params["log_level"].upper() == "DEBUG"
    ctx = main.commands["run"].make_context("run", ["--dsn", "x", "--log-level", "Warning"])
    assert ctx.params["log_level"].upper() == "WARNING"


NO_DSN_ENV: dict[str, str | None] = {
    "PGWEBHOOKS_DSN": None, "DATABASE_URL": None, "PGHOST": None, "PGPORT": None, "PGDATABASE": None,
    "PGUSER": None, "PGPASSWORD": None, "PGSERVICE": None,
}


def listed_names(env: dict[str, str | None], *args: str) -> list[str]:
    result = CliRunner().invoke(main, ["webhooks", "list", "--json", *args], env={**NO_DSN_ENV, **env})
    assert result.exit_code == 0, result.output
    return [w["name"] for w in json.loads(result.output)]


def test_the_libpq_environment_is_enough_without_dsn(db: str) -> None:
    make_table(db)
    invoke("webhooks", "create", "from-env", "https://example.com/h", "--dsn", db, "--table", "orders")
    params = dsn_params(db)
    env = {"PGHOST": params["host"], "PGPORT": params["port"], "PGDATABASE": params["dbname"],
           "PGUSER": params["user"]}
    assert listed_names(env) == ["from-env"]


def test_database_url_is_used_and_the_precedence_is_dsn_then_pgwebhooks_dsn_then_database_url(db: str) -> None:
    make_table(db)
    invoke("webhooks", "create", "precedence", "https://example.com/h", "--dsn", db, "--table", "orders")
    params = dsn_params(db)
    # A database that does not exist: whichever source wins must be the one that names `db`.
    wrong = make_conninfo(db, dbname="no_such_database_here")
    libpq_wrong = {"PGHOST": params["host"], "PGPORT": params["port"], "PGDATABASE": "no_such_database_here",
                   "PGUSER": params["user"]}
    assert listed_names({**libpq_wrong, "DATABASE_URL": db}) == ["precedence"]
    assert listed_names({"DATABASE_URL": wrong, "PGWEBHOOKS_DSN": db}) == ["precedence"]
    assert listed_names({"DATABASE_URL": wrong, "PGWEBHOOKS_DSN": wrong}, "--dsn", db) == ["precedence"]
    result = CliRunner().invoke(main, ["webhooks", "list"], env={**NO_DSN_ENV, "DATABASE_URL": wrong})
    assert result.exit_code == 1 and "no_such_database_here" in result.output


def test_the_help_says_where_the_connection_comes_from() -> None:
    result = CliRunner().invoke(main, ["webhooks", "list", "--help"], terminal_width=400)
    assert "PGWEBHOOKS_DSN" in result.output and "DATABASE_URL" in result.output and "PGHOST" in result.output


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


def test_demo_runs_from_a_checkout_the_postgres_user_cannot_enter(tmp_path: Path) -> None:
    # Like root's home or a `mktemp -d` folder: mode 0700, so as root the server's OS user
    # (postgres) can neither use it as its working directory nor hold its data under it.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    before = set(Path(tempfile.gettempdir()).glob("pgwebhooks-demo-*"))
    proc = subprocess.run([sys.executable, "-m", "pgwebhooks.demo"], cwd=private, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "5 events received, 5 with both signatures verified" in proc.stdout
    assert set(Path(tempfile.gettempdir()).glob("pgwebhooks-demo-*")) == before  # cleaned up


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
