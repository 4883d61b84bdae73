"""The `pgwebhooks` command: management through the SQL API, errors as one readable line."""

from __future__ import annotations

import ast
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import psycopg
import pytest
from click.testing import CliRunner
from helpers import empty_database
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from conftest import Server, dsn_params
from pgwebhooks import migrations
from pgwebhooks.cli import common, main


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


# -- options and command shapes ------------------------------------------------


def test_an_unknown_log_level_is_a_usage_error_not_a_traceback() -> None:
    result = CliRunner().invoke(main, ["run", "--dsn", "postgresql://nowhere", "--log-level", "LOUD"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--log-level'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("spelling", "level"), [("DeBuG", logging.DEBUG), ("debug", logging.DEBUG),
                                                  ("wArNiNg", logging.WARNING), ("error", logging.ERROR)])
def test_log_levels_are_case_insensitive(spelling: str, level: int) -> None:
    # The effect, not the parsed value: `run` must get past option parsing and set the logger to
    # that level. A case-sensitive choice ends in a usage error (exit 2); a level passed on
    # unnormalised makes logging raise. The malformed DSN then stops `run` before it connects.
    logger = logging.getLogger("pgwebhooks")
    saved = (logger.level, logger.handlers[:], logger.propagate, signal.getsignal(signal.SIGTERM))
    logger.setLevel(logging.CRITICAL)
    try:
        result = CliRunner().invoke(main, ["run", "--dsn", "host=127.0.0.1 port", "--log-level", spelling])
        configured = logger.level
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]
        signal.signal(signal.SIGTERM, saved[3])
    assert result.exit_code == 1 and "malformed DSN" in result.output, result.output
    assert configured == level


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


# -- one DSN rule, names for ids, JSON, errors with hints, and `run` refusing what cannot work ------


def test_install_commands_follow_the_same_dsn_rule(db: str) -> None:
    params = dsn_params(db)
    libpq = {"PGHOST": params["host"], "PGPORT": params["port"], "PGDATABASE": params["dbname"],
             "PGUSER": params["user"]}
    for env in ({"DATABASE_URL": db}, {"PGWEBHOOKS_DSN": db}, libpq):
        result = CliRunner().invoke(main, ["migrate", "--json"], env={**NO_DSN_ENV, **env})
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["applied"] == []
        result = CliRunner().invoke(main, ["sql", "--pending"], env={**NO_DSN_ENV, **env})
        assert result.exit_code == 0 and "nothing to apply" in result.output, result.output
        result = CliRunner().invoke(main, ["uninstall"], env={**NO_DSN_ENV, **env})
        assert result.exit_code == 2 and "--yes" in result.output  # reached the command, not a missing --dsn


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


def test_a_missing_schema_says_to_migrate(server: Server) -> None:
    with empty_database(server, "noschema") as dsn:
        result = CliRunner().invoke(main, ["webhooks", "list", "--dsn", dsn])
    assert result.exit_code == 1 and "run `pgwebhooks migrate`" in result.output, result.output


def test_the_pg16_role_grant_error_names_the_grant_to_run() -> None:
    exc = psycopg.errors.InsufficientPrivilege('permission denied to grant role "webhooks_capture"')
    hint = common.hint_for(exc)
    assert hint is not None and "GRANT webhooks_capture TO CURRENT_USER WITH ADMIN OPTION" in hint


def test_every_run_option_has_its_pgwebhooks_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    run = main.commands["run"]
    values = {"PGWEBHOOKS_DSN": "host=x", "PGWEBHOOKS_CONCURRENCY": "7", "PGWEBHOOKS_PER_WEBHOOK_CONCURRENCY": "3",
              "PGWEBHOOKS_BATCH_SIZE": "9", "PGWEBHOOKS_POLL_INTERVAL": "0.5", "PGWEBHOOKS_SHUTDOWN_GRACE": "25",
              "PGWEBHOOKS_LEASE_MARGIN": "40", "PGWEBHOOKS_ALLOW_PRIVATE_NETWORKS": "1",
              "PGWEBHOOKS_ALLOW_CIDR": "10.0.0.0/8 127.0.0.0/8", "PGWEBHOOKS_LOG_FORMAT": "json",
              "PGWEBHOOKS_LOG_LEVEL": "debug", "PGWEBHOOKS_METRICS_PORT": "9187",
              "PGWEBHOOKS_METRICS_HOST": "0.0.0.0", "PGWEBHOOKS_PROGRESS_INTERVAL": "15"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    params = run.make_context("run", []).params
    assert params == {"dsn": "host=x", "concurrency": 7, "per_webhook_concurrency": 3, "batch_size": 9,
                      "poll_interval": 0.5, "shutdown_grace": 25.0, "lease_margin": 40,
                      "allow_private_networks": True, "allowed_cidrs": ("10.0.0.0/8", "127.0.0.0/8"),
                      "log_format": "json", "log_level": "DEBUG", "metrics_port": 9187,
                      "metrics_host": "0.0.0.0", "progress_interval": 15.0}
    assert all(isinstance(p, click.Option) and str(p.envvar).startswith("PGWEBHOOKS_") for p in run.params)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    exe = Path(sys.executable).parent / "pgwebhooks"
    return subprocess.Popen([str(exe), "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def test_run_exits_at_once_on_a_malformed_dsn_or_a_refused_login(db: str) -> None:
    for dsn, expected in (("host=127.0.0.1 port", "malformed DSN"),
                          (make_conninfo(db, user="no_such_role_here"), "cannot connect")):
        proc = _run("--dsn", dsn)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert expected in err and err.strip().count("\n") == 0 and "Traceback" not in err, err


def test_run_keeps_trying_an_unreachable_server_and_stops_cleanly_on_sigterm() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    proc = _run(env={"PGWEBHOOKS_DSN": f"host=127.0.0.1 port={port} user=x dbname=x connect_timeout=2",
                     "PGWEBHOOKS_LOG_FORMAT": "json", "PGWEBHOOKS_POLL_INTERVAL": "0.2"})
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # bounded: the preflight connect gives up within connect_timeout
        assert json.loads(first)["msg"] == "database unreachable; retrying until it answers", first
        assert proc.poll() is None  # still running: the server may come back
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err


# -- the package's shape ------------------------------------------------------------------------


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        found[path] = command
        if isinstance(command, click.Group):
            found.update(_commands(command, f"{path} "))
    return found


def test_every_command_keeps_its_name() -> None:
    assert set(_commands(main)) == {
        "run", "listen", "migrate", "sql", "uninstall", "roles", "render-plpython", "status", "alerts", "purge",
        "deliveries", "replay", "webhooks", "webhooks create", "webhooks list", "webhooks get", "webhooks update",
        "webhooks rotate-secret", "webhooks delete", "webhooks test", "webhooks pause", "webhooks resume",
        "dashboard", "dashboard token", "dashboard token create", "dashboard token revoke", "dashboard token list",
    }


def test_every_command_that_connects_takes_the_one_dsn_option() -> None:
    for path, command in _commands(main).items():
        for param in command.params:
            if param.name == "dsn":
                assert isinstance(param, click.Option) and param.opts == ["--dsn"], path
                assert param.envvar == "PGWEBHOOKS_DSN" and param.callback is common.resolve_dsn, path


def test_no_command_relies_on_assert() -> None:
    # `python -O` strips asserts: one guarding a missing row lets the command crash on None
    # instead of saying what is wrong. Looks at every module a command of the CLI lives in.
    modules = {sys.modules[c.callback.__module__] for c in _commands(main).values() if c.callback is not None}
    for module in modules:
        assert module.__file__ is not None
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        asserts = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]
        assert asserts == [], f"{module.__file__}: assert at lines {asserts}"


def test_an_api_call_returning_no_row_is_a_clear_error_not_a_crash(db: str) -> None:
    with common.sql_api(db) as conn, pytest.raises(click.ClickException, match="returned no row"):
        common.fetch_one(conn, "SELECT * FROM webhooks.list_webhooks() WHERE false")
