"""The `pgwebhooks` command. Every management command calls the SQL API; none re-implements it."""

from __future__ import annotations

import click

from pgwebhooks import __version__, migrations

DSN = click.option(
    "--dsn", envvar="PGWEBHOOKS_DSN", required=True, show_envvar=True,
    help="PostgreSQL connection string.",
)


@click.group()
@click.version_option(__version__, prog_name="pgwebhooks")
def main() -> None:
    """PostgreSQL row changes as signed HTTP webhooks."""


@main.command()
@DSN
def migrate(dsn: str) -> None:
    """Install or upgrade the webhooks schema (safe to run concurrently)."""
    try:
        applied = migrations.migrate(dsn)
    except migrations.MigrationError as exc:
        raise click.ClickException(str(exc)) from exc
    if applied:
        click.echo(f"applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        click.echo("schema is up to date")


@main.command("sql")
def print_sql() -> None:
    """Print the complete install script (for psql and migration tools)."""
    click.echo(migrations.install_script(), nl=False)


@main.command("render-plpython", hidden=True)
def render_plpython() -> None:
    """Regenerate sql/002_plpython.sql from plpython/*.py."""
    migrations.PLPYTHON_SQL.write_text(migrations.render_plpython())
    click.echo(f"wrote {migrations.PLPYTHON_SQL}")
