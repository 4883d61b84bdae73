"""The database owner's commands: migrate, sql, uninstall, roles (and render-plpython for contributors)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import click
import psycopg

from pgwebhooks import __version__, migrations, roles
from pgwebhooks.cli import common

DSN = common.DSN
SIGNER = click.option(
    "--signer", type=click.Choice(sorted(migrations.SIGNERS)),
    help="How signatures are computed: plpython (plpython3u) or pgcrypto (managed PostgreSQL)."
    " Default for migrate: the installed one, else plpython where plpython3u can be created, else pgcrypto;"
    " for sql without --pending: plpython.",
)
# Formats for migration tools: `plain` suits psql, yoyo and Alembic's op.execute as it stands;
# `sqitch` is a deploy script (its own BEGIN/COMMIT, as sqitch expects); `dbmate` a migration
# file with dbmate's -- migrate:up / -- migrate:down markers, written into --out.
FORMATS = ("plain", "sqitch", "dbmate")


def _fail(exc: Exception) -> click.ClickException:
    """One line (and a hint at the fix) for a database error, also when a migration wraps it."""
    if isinstance(exc, psycopg.Error):
        return click.ClickException(common.error_line(exc))
    cause = exc.__cause__
    if isinstance(cause, psycopg.Error) and (hint := common.hint_for(cause)):
        return click.ClickException(f"{exc} [{cause.sqlstate}]\nhint: {hint}")
    return click.ClickException(str(exc))


@click.command()
@DSN
@SIGNER
@click.option("--lock-timeout", type=click.FloatRange(0.1, 600), default=migrations.LOCK_TIMEOUT_SECONDS,
              show_default=True, help="Seconds to wait for any one lock (a session holding one on a webhooks table)"
              f" before rolling back and trying again; {migrations.LOCK_ATTEMPTS} attempts in all.")
@common.AS_JSON
def migrate(dsn: str, signer: str | None, lock_timeout: float, as_json: bool) -> None:
    """Install or upgrade the webhooks schema (safe to run concurrently); adopts installs made by other tools."""
    common.check_dsn(dsn)

    def retrying(attempt: int, reason: str) -> None:
        click.echo(f"attempt {attempt} of {migrations.LOCK_ATTEMPTS}: a lock stayed busy for {lock_timeout:g}s "
                   f"({reason}); rolled back, trying again", err=True)

    try:
        applied = migrations.migrate(dsn, signer, lock_timeout=lock_timeout, on_retry=retrying)
        with psycopg.connect(dsn) as conn:
            current = migrations.installed_signer(conn)
    except (migrations.MigrationError, psycopg.Error) as exc:
        raise _fail(exc) from exc
    if as_json:
        click.echo(common.to_json({"applied": applied, "signer": current, "version": __version__}))
        return
    if applied:
        click.echo(f"applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        click.echo("schema is up to date")
    click.echo(f"signer: {current}")


@click.command("sql")
@SIGNER
@click.option("--pending", is_flag=True, help="Only what the database (see --dsn) still lacks.")
@common.dsn_option("With --pending: the database to compare with. ")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="plain", show_default=True,
              help="sqitch: a deploy script in its own transaction; dbmate: a migration file with"
                   " -- migrate:up / -- migrate:down markers, written into --out.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the migration file into (required with --format dbmate).")
def print_sql(signer: str | None, pending: bool, dsn: str, fmt: str, out_dir: Path | None) -> None:
    """Print the install script (for psql and migration tools); applying it again changes nothing."""
    try:
        if pending:
            common.check_dsn(dsn)
            script = migrations.pending_script(dsn, signer)
        else:
            script = migrations.install_script(signer or migrations.DEFAULT_SIGNER)
    except (migrations.MigrationError, psycopg.Error) as exc:
        raise _fail(exc) from exc
    if fmt == "sqitch":
        script = f"BEGIN;\n{script}\nCOMMIT;\n"
    if fmt in ("plain", "sqitch") and out_dir is None:
        click.echo(script, nl=False)
        return
    if out_dir is None:
        raise click.UsageError(f"--format {fmt} needs --out DIRECTORY")
    path = write_tool_file(out_dir, fmt, script)
    click.echo(f"wrote {path}" if path else f"{out_dir} already has this pgwebhooks {__version__} script")


def write_tool_file(out_dir: Path, fmt: str, script: str) -> Path | None:
    """One migration file per exported script, named so the tool orders it after earlier exports."""
    digest = hashlib.sha256(script.encode()).hexdigest()[:8]
    stem = f"pgwebhooks_{__version__.replace('.', '_')}_{digest}"
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.glob(f"*_{stem}.sql")):
        return None
    version = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    path = out_dir / f"{version}_{stem}.sql"
    if fmt == "dbmate":
        body = (
            "-- migrate:up\n" + script
            + "\n-- migrate:down\n-- pgwebhooks keeps no down migrations: `pgwebhooks uninstall` removes it.\n"
        )
    else:
        body = script
    path.write_text(body, encoding="utf-8")
    return path


@click.command("render-plpython", hidden=True)
def render_plpython() -> None:
    """Regenerate sql/functions/020_plpython.sql from plpython/*.py."""
    if not migrations.PLPYTHON_SQL.parent.is_dir():
        raise click.ClickException("render-plpython rewrites the checkout's sql/; run it from an editable install")
    migrations.PLPYTHON_SQL.write_text(migrations.render_plpython(), encoding="utf-8")
    click.echo(f"wrote {migrations.PLPYTHON_SQL}")


@click.command()
@DSN
@click.option("--yes", is_flag=True, help="Really drop the webhooks schema, its data and every capture trigger.")
@common.AS_JSON
def uninstall(dsn: str, yes: bool, as_json: bool) -> None:
    """Remove pgwebhooks: capture triggers and the webhooks schema. The roles are left in place."""
    if not yes:
        raise click.UsageError("this deletes every webhook and delivery; pass --yes to go ahead")
    common.check_dsn(dsn)
    try:
        tables = migrations.uninstall(dsn)
    except psycopg.Error as exc:
        raise _fail(exc) from exc
    if as_json:
        click.echo(common.to_json({"dropped_schema": "webhooks", "triggers_dropped_on": tables}))
        return
    click.echo(f"dropped the webhooks schema and the capture triggers on {len(tables)} table(s)")
    click.echo(f"left the roles {', '.join(roles.ROLES)} (cluster-wide; DROP ROLE them once no database uses them)")


COMMANDS = (migrate, print_sql, render_plpython, uninstall, roles.roles)
