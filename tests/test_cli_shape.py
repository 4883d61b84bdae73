"""The CLI package's shape: every command keeps its name, takes the one --dsn option, and fails
with a message rather than an assert."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import click
import pytest

from pgwebhooks.cli import common, main


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
