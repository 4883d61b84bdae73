"""The `pgwebhooks` command. Every management command calls the SQL API; none re-implements it.

One module per audience, each listing its commands in COMMANDS:
    run        the runner and the receiver developer (run, listen)
    webhooks   the application developer (webhooks ..., deliveries, replay)
    operations the operator (status, alerts, purge)
    install    the database owner (migrate, sql, uninstall, roles, render-plpython)
    dashboard  the dashboard and its API tokens
common.py holds what they share: the one DSN rule, the connection, errors, text and JSON output.
"""

from __future__ import annotations

import click

from pgwebhooks import __version__
from pgwebhooks.cli import common, dashboard, install, operations, run, webhooks


@click.group()
@click.version_option(__version__, prog_name="pgwebhooks")
@click.option("--verbose", is_flag=True, envvar="PGWEBHOOKS_VERBOSE",
              help="Show the server's CONTEXT lines with database errors.")
def main(verbose: bool) -> None:
    """PostgreSQL row changes as signed HTTP webhooks."""
    common.VERBOSE["on"] = verbose


# To add commands for a new audience: a module in this package with a COMMANDS tuple of click
# commands (using common.DSN for --dsn, so the DSN rule stays one), listed here.
AUDIENCES = (run, webhooks, operations, install, dashboard)

for _audience in AUDIENCES:
    for _command in _audience.COMMANDS:
        main.add_command(_command)

__all__ = ["main"]
