"""The dashboard's commands: `dashboard` serves the pages and /api/v1; `dashboard token create|revoke|list`."""

from __future__ import annotations

import asyncio
import os
import secrets

import click
import psycopg

from pgwebhooks import logs
from pgwebhooks.cli.common import DSN, emit, fetch_one, sql_api


@click.group("dashboard", invoke_without_command=True)
@DSN
@click.option("--host", default="127.0.0.1", show_default=True, envvar="PGWEBHOOKS_DASHBOARD_HOST",
              help="Address to listen on. Anything but loopback requires API tokens.")
@click.option("--port", default=8080, show_default=True, envvar="PGWEBHOOKS_DASHBOARD_PORT")
@click.option("--require-token", is_flag=True,
              help="Require a token even on loopback (implied once any token exists).")
@click.option("--secure-cookies", is_flag=True, help="Mark cookies Secure (behind an HTTPS proxy).")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_context
def dashboard(ctx: click.Context, dsn: str, host: str, port: int, require_token: bool, secure_cookies: bool,
              log_level: str) -> None:
    """Serve the web dashboard and the JSON API (/api/v1, documented at /api/v1/openapi.json)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"dsn": dsn}
        return
    from aiohttp import web

    from pgwebhooks.dashboard.app import Settings, check_startup, create_app

    logs.configure("human", log_level)
    try:
        needs_tokens = asyncio.run(check_startup(dsn, host, require_token))
    except SystemExit as exc:
        raise click.ClickException(str(exc)) from None
    except psycopg.Error as exc:
        first = (exc.diag.message_primary or str(exc)).strip().splitlines()[0]
        raise click.ClickException(f"cannot check the API tokens (is the schema installed and up to date? "
                                   f"run pgwebhooks migrate): {first}") from None
    key = os.environ.get("PGWEBHOOKS_DASHBOARD_KEY", "").encode() or secrets.token_bytes(32)
    settings = Settings(host=host, port=port, require_tokens=needs_tokens, csrf_key=key,
                        secure_cookies=secure_cookies)
    click.echo(f"pgwebhooks dashboard on http://{host}:{port}/ "
               f"({'API tokens required' if needs_tokens else 'no tokens: loopback only'})", err=True)
    web.run_app(create_app(dsn, settings), host=host, port=port, print=None, access_log=None)

@dashboard.group("token")
def token() -> None:
    """Create, revoke and list dashboard/API tokens (stored only as SHA-256 hashes)."""

@token.command("create")
@DSN
@click.argument("name")
@click.option("--access", type=click.Choice(["admin", "read"]), default="read", show_default=True,
              help="admin acts as webhooks_admin; read as webhooks_viewer (no changes).")
def create(dsn: str, name: str, access: str) -> None:
    """Create a token; it is printed once, on stdout."""
    with sql_api(dsn) as conn:
        row = fetch_one(conn, "SELECT * FROM webhooks.create_api_token(%s, %s)", (name, access))
    click.echo(f"created {access} token {row['token_id']} ({name}); it is shown only now:", err=True)
    click.echo(row["token"])

@token.command("revoke")
@DSN
@click.argument("token_id")
def revoke(dsn: str, token_id: str) -> None:
    """Revoke a token (by the id `token list` shows)."""
    with sql_api(dsn) as conn:
        conn.execute("SELECT webhooks.revoke_api_token(%s::uuid)", (token_id,))
    click.echo(f"revoked {token_id}")

@token.command("list")
@DSN
def list_tokens(dsn: str) -> None:
    """List tokens (never the tokens themselves)."""
    with sql_api(dsn) as conn:
        rows = conn.execute("SELECT * FROM webhooks.list_api_tokens()").fetchall()
    emit(rows, False)


COMMANDS = (dashboard,)
