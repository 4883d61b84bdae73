"""One DSN rule for every command: --dsn, then PGWEBHOOKS_DSN, then DATABASE_URL, then the libpq
environment."""

from __future__ import annotations

import json

from click.testing import CliRunner
from helpers import invoke, make_table
from psycopg.conninfo import make_conninfo

from conftest import dsn_params
from pgwebhooks.cli import main

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
