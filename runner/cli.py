"""The `pgwebhooks` command. Every management command calls the SQL API; none re-implements it."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import click
import psycopg
from psycopg.types.json import Jsonb

from pgwebhooks import __version__, cli_common, cli_dashboard, cli_health, cli_install, logs, roles

DSN = cli_common.DSN
AS_JSON = cli_common.AS_JSON
sql_api = cli_common.sql_api
webhook_id_of = cli_common.webhook_id
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@click.group()
@click.version_option(__version__, prog_name="pgwebhooks")
@click.option("--verbose", is_flag=True, envvar="PGWEBHOOKS_VERBOSE",
              help="Show the server's CONTEXT lines with database errors.")
def main(verbose: bool) -> None:
    """PostgreSQL row changes as signed HTTP webhooks."""
    cli_common.VERBOSE["on"] = verbose


main.add_command(roles.roles)


# -- install (migrate, sql, uninstall: see cli_install.py) --------------------------------------

for _command in cli_install.COMMANDS:
    main.add_command(_command)


# -- runner and receiver -----------------------------------------------------------------------


def _env(name: str) -> dict[str, Any]:
    return {"envvar": f"PGWEBHOOKS_{name}", "show_envvar": True}


@main.command()
@DSN
@click.option("--concurrency", default=200, show_default=True, help="Requests in flight at most.",
              **_env("CONCURRENCY"))
@click.option("--per-webhook-concurrency", default=100, show_default=True, **_env("PER_WEBHOOK_CONCURRENCY"),
              help="Requests in flight per webhook, reached by slow start from 20 as the endpoint answers.")
@click.option("--batch-size", default=200, show_default=True, help="Deliveries leased per claim.",
              **_env("BATCH_SIZE"))
@click.option("--poll-interval", default=5.0, show_default=True, help="Seconds between polls when no NOTIFY comes.",
              **_env("POLL_INTERVAL"))
@click.option("--shutdown-grace", default=10.0, show_default=True, help="Seconds in-flight sends get on SIGTERM.",
              **_env("SHUTDOWN_GRACE"))
@click.option("--lease-margin", default=30, show_default=True, **_env("LEASE_MARGIN"),
              help="Seconds a lease outlasts twice the webhook's timeout; after it, another runner takes over.")
@click.option("--allow-private-networks", is_flag=True, help="Allow loopback, private and link-local destinations.",
              **_env("ALLOW_PRIVATE_NETWORKS"))
@click.option("--allow-cidr", "allowed_cidrs", multiple=True, **_env("ALLOW_CIDR"),
              help="Allow destinations in this CIDR (repeatable; in the variable, separated by spaces).")
@click.option("--log-format", type=click.Choice(["human", "json"]), default="human", show_default=True,
              **_env("LOG_FORMAT"))
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="INFO", show_default=True,
              **_env("LOG_LEVEL"))
@click.option("--metrics-port", type=click.IntRange(1, 65535), **_env("METRICS_PORT"),
              help="Serve /metrics (Prometheus), /healthz and /readyz on this port.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, **_env("METRICS_HOST"),
              help="Address for --metrics-port (0.0.0.0 for a Prometheus elsewhere).")
@click.option("--progress-interval", type=float, default=60.0, show_default=True, **_env("PROGRESS_INTERVAL"),
              help="Seconds between progress log lines (delivered, failed, pending); 0: none.")
def run(
    dsn: str, concurrency: int, per_webhook_concurrency: int, batch_size: int, poll_interval: float,
    shutdown_grace: float, lease_margin: int, allow_private_networks: bool, allowed_cidrs: tuple[str, ...],
    log_format: str, log_level: str, metrics_port: int | None, metrics_host: str, progress_interval: float,
) -> None:
    """Deliver webhooks: drain the outbox until SIGTERM or Ctrl-C.

    Every option also comes from its PGWEBHOOKS_... variable. A malformed DSN or a refused login
    ends the runner at once; an unreachable server is retried until it answers.
    """
    from pgwebhooks.worker import Runner, RunnerConfig

    logs.configure(log_format, log_level)
    # Until the runner's own handlers are in place (serve() below), SIGTERM ends it quietly:
    # nothing is claimed yet, so there is nothing to hand back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    for cidr in allowed_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--allow-cidr") from exc
    _preflight(dsn)
    config = RunnerConfig(
        dsn=dsn, concurrency=concurrency, per_webhook_concurrency=per_webhook_concurrency,
        batch_size=batch_size, poll_interval=poll_interval, shutdown_grace=shutdown_grace,
        lease_margin_seconds=lease_margin,
        allow_private_networks=allow_private_networks, allowed_cidrs=allowed_cidrs,
        metrics_port=metrics_port, metrics_host=metrics_host, progress_interval=progress_interval,
    )

    async def serve() -> None:
        runner = Runner(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.request_stop)
        await runner.run()

    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: stop without a traceback
        asyncio.run(serve())


def _preflight(dsn: str) -> None:
    """Exit at once, in one line, when retrying cannot help: a DSN libpq cannot parse, a login the
    server refuses, a database or role that does not exist. A server that does not answer (yet) is
    the runner's to wait for: it reconnects with backoff."""
    cli_common.check_dsn(dsn)
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            if conn.execute("SELECT to_regnamespace('webhooks')").fetchone() == (None,):
                logging.getLogger("pgwebhooks.runner").warning(
                    "the webhooks schema is not installed in this database yet; run `pgwebhooks migrate`")
    except psycopg.OperationalError as exc:
        line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if cli_common.is_permanent_connect_error(exc):
            raise click.ClickException(f"cannot connect: {line}") from exc
        logging.getLogger("pgwebhooks.runner").warning(
            "database unreachable; retrying until it answers", extra={"error": line})
    except psycopg.Error as exc:
        raise click.ClickException(cli_common.error_line(exc)) from exc


@main.command()
@click.option("--port", default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--secret", "secrets", multiple=True, help="Verify signatures with this secret (repeatable).")
@click.option("--status", default=200, show_default=True, help="HTTP status to answer with.")
@click.option("--forward-to", help="Forward each verified request (raw body and headers) to this local URL, "
              "e.g. localhost:3000/webhooks, and answer with what it answered.")
def listen(port: int, host: str, secrets: tuple[str, ...], status: int, forward_to: str | None) -> None:
    """Receive webhooks locally, verify their signatures and print them (or forward them)."""
    from pgwebhooks.receiver import forward_url, run_listener

    if forward_to:
        try:
            forward_url(forward_to)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--forward-to") from exc
    run_listener(host, port, secrets, status, sys.stdout, forward_to)


# -- management ------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return cli_common.to_json(value, compact=True)
    return str(value)


def emit(rows: Sequence[dict[str, Any]], as_json: bool, columns: Sequence[str] | None = None) -> None:
    if as_json:
        click.echo(cli_common.to_json(list(rows)))
        return
    if not rows:
        click.echo("(none)")
        return
    columns = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def emit_record(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(cli_common.to_json(row))
        return
    width = max(len(k) for k in row)
    for key, value in row.items():
        click.echo(f"{key.ljust(width)}  {_cell(value)}")


def parse_events(tables: Sequence[str], events_json: str | None) -> Any:
    """`--table users:INSERT,UPDATE` options (or raw `--events` JSON) as the SQL API's `events`."""
    if events_json is not None:
        try:
            return json.loads(events_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--events") from exc
    events = []
    for spec in tables:
        table, _, ops = spec.partition(":")
        entry: dict[str, Any] = {"table": table}
        if ops:
            entry["operations"] = [o.strip() for o in ops.split(",") if o.strip()]
        events.append(entry)
    return events


def parse_headers(pairs: Sequence[str]) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--header")
        headers[name.strip()] = value
    return headers


@main.group("webhooks")
def webhooks_group() -> None:
    """Create, list, change and delete webhooks."""


SUMMARY_COLUMNS = ("id", "name", "url", "enabled", "events", "max_retries", "timeout_seconds")


@webhooks_group.command("create")
@DSN
@click.argument("name")
@click.argument("url")
@click.option("--table", "tables", multiple=True, metavar="TABLE[:OPS]",
              help="Watch TABLE (schema.table allowed) for OPS, e.g. users:INSERT,UPDATE (repeatable).")
@click.option("--events", "events_json", help='Raw events JSON, e.g. [{"table": "users"}].')
@click.option("--secret", help="Signing secret (default: a new whsec_ secret, shown once).")
@click.option("--description")
@click.option("--disabled", is_flag=True, help="Create it disabled.")
@click.option("--max-retries", type=int,
              help="Retries with exponential --backoff (default 3) instead of the default schedule.")
@click.option("--timeout", "timeout_seconds", type=int, default=30, show_default=True)
@click.option("--backoff", "retry_backoff_seconds", type=int,
              help="First retry delay in seconds, doubling (default 5) instead of the default schedule.")
@click.option("--header", "header_pairs", multiple=True, metavar="NAME=VALUE", help="Extra request header.")
@click.option("--profile", default="standard", show_default=True,
              help="Receiver profile: standard, fluxbase, fluxbase_hex, truss, rowbase, flux, supabase or hasura.")
@click.option("--retry-schedule", help="Fixed retry delays replacing backoff, e.g. '{1 minute,5 minutes}'."
              " Without this, --max-retries and --backoff: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.")
@click.option("--secret-header", "secret_header_pairs", multiple=True, metavar="NAME=VALUE",
              help="Extra request header whose value is never shown (e.g. Authorization).")
@click.option("--pause-after", default="3 days", show_default=True,
              help='Pause automatically after failing this long ("never" to disable).')
@AS_JSON
def create(
    dsn: str, name: str, url: str, tables: tuple[str, ...], events_json: str | None, secret: str | None,
    description: str | None, disabled: bool, max_retries: int | None, timeout_seconds: int,
    retry_backoff_seconds: int | None,
    header_pairs: tuple[str, ...], profile: str, retry_schedule: str | None,
    secret_header_pairs: tuple[str, ...], pause_after: str, as_json: bool,
) -> None:
    """Create a webhook that POSTs changes of the given tables to URL."""
    if not tables and events_json is None:
        raise click.UsageError("give at least one --table (or --events)")
    with sql_api(dsn) as conn:
        row = conn.execute(
            "SELECT * FROM webhooks.create_webhook(name => %s, url => %s, events => %s, secret => %s,"
            " description => %s, enabled => %s, max_retries => %s, timeout_seconds => %s,"
            " retry_backoff_seconds => %s, headers => %s, profile => %s, retry_schedule => %s::interval[],"
            " pause_after => %s::interval, secret_headers => %s)",
            (name, url, Jsonb(parse_events(tables, events_json)), secret, description, not disabled,
             max_retries, timeout_seconds, retry_backoff_seconds, Jsonb(parse_headers(header_pairs)),
             profile, retry_schedule,
             None if pause_after == "never" else pause_after, Jsonb(parse_headers(secret_header_pairs))),
        ).fetchone()
    assert row is not None
    emit_record(row, as_json)
    if not as_json:
        click.echo("\nKeep the secret: it is shown only now.", err=True)


cli_health.register(main, webhooks_group, DSN, AS_JSON, sql_api, emit)
cli_dashboard.register(main, DSN, sql_api, emit)


@webhooks_group.command("list")
@DSN
@AS_JSON
def list_webhooks(dsn: str, as_json: bool) -> None:
    """List webhooks (secrets are never shown)."""
    with sql_api(dsn) as conn:
        rows = conn.execute("SELECT * FROM webhooks.list_webhooks()").fetchall()
    emit(rows, as_json, None if as_json else SUMMARY_COLUMNS)


@webhooks_group.command("get")
@DSN
@click.argument("webhook_id")
@AS_JSON
def get(dsn: str, webhook_id: str, as_json: bool) -> None:
    """Show one webhook."""
    with sql_api(dsn) as conn:
        row = conn.execute("SELECT * FROM webhooks.get_webhook(%s::uuid)",
                           (webhook_id_of(conn, webhook_id),)).fetchone()
    assert row is not None
    emit_record(row, as_json)


@webhooks_group.command("update")
@DSN
@click.argument("webhook_id")
@click.option("--name")
@click.option("--url")
@click.option("--table", "tables", multiple=True, metavar="TABLE[:OPS]", help="Replace the watched tables.")
@click.option("--events", "events_json", help="Replace the watched tables with this events JSON.")
@click.option("--secret", help="Replace the secret at once (see rotate-secret for a gentle switch).")
@click.option("--description")
@click.option("--enable/--disable", "enabled", default=None,
              help="Start or stop capturing (changes made while disabled are not kept; see `webhooks pause`).")
@click.option("--max-retries", type=int)
@click.option("--timeout", "timeout_seconds", type=int)
@click.option("--backoff", "retry_backoff_seconds", type=int)
@click.option("--header", "header_pairs", multiple=True, metavar="NAME=VALUE", help="Replace the extra headers.")
@click.option("--secret-header", "secret_header_pairs", multiple=True, metavar="NAME=VALUE",
              help="Replace the secret headers (values never shown).")
@click.option("--pause-after", help='Auto-pause window, e.g. "3 days" ("never" to disable).')
@AS_JSON
def update(dsn: str, webhook_id: str, tables: tuple[str, ...], events_json: str | None,
           header_pairs: tuple[str, ...], secret_header_pairs: tuple[str, ...], pause_after: str | None,
           as_json: bool, **fields: Any) -> None:
    """Change fields of a webhook; what is not given stays as it is."""
    changes = {k: v for k, v in fields.items() if v is not None}
    if secret_header_pairs:
        changes["secret_headers"] = parse_headers(secret_header_pairs)
    if pause_after is not None:
        changes["pause_after"] = None if pause_after == "never" else pause_after
    if tables or events_json is not None:
        changes["events"] = parse_events(tables, events_json)
    if header_pairs:
        changes["headers"] = parse_headers(header_pairs)
    if not changes:
        raise click.UsageError("nothing to change")
    with sql_api(dsn) as conn:
        row = conn.execute(
            "SELECT * FROM webhooks.update_webhook(%s::uuid, %s)", (webhook_id_of(conn, webhook_id), Jsonb(changes))
        ).fetchone()
    assert row is not None
    emit_record(row, as_json)


@webhooks_group.command("rotate-secret")
@DSN
@click.argument("webhook_id")
@click.option("--secret", help="The new secret (default: generated).")
@click.option("--grace", default="24 hours", show_default=True, help="How long the old secret keeps signing.")
@AS_JSON
def rotate_secret(dsn: str, webhook_id: str, secret: str | None, grace: str, as_json: bool) -> None:
    """Start signing with a new secret; the old one stays valid for the grace period."""
    with sql_api(dsn) as conn:
        row = conn.execute(
            "SELECT * FROM webhooks.rotate_secret(%s::uuid, %s, %s::interval)",
            (webhook_id_of(conn, webhook_id), secret, grace)
        ).fetchone()
    assert row is not None
    emit_record(row, as_json)


@webhooks_group.command("delete")
@DSN
@click.argument("webhook_id")
@AS_JSON
def delete(dsn: str, webhook_id: str, as_json: bool) -> None:
    """Delete a webhook, its deliveries, and any capture trigger no longer needed."""
    with sql_api(dsn) as conn:
        hook = webhook_id_of(conn, webhook_id)
        conn.execute("SELECT webhooks.delete_webhook(%s::uuid)", (hook,))
    click.echo(cli_common.to_json({"deleted": hook}) if as_json else f"deleted {webhook_id}")


@main.command()
@DSN
@click.argument("webhook_id", required=False)
@click.option("--limit", default=50, show_default=True)
@click.option("--offset", default=0, show_default=True)
@click.option("--attempts", "delivery_id", type=int, metavar="DELIVERY_ID",
              help="Show every attempt of this one delivery instead (no WEBHOOK_ID then).")
@AS_JSON
def deliveries(
    dsn: str, webhook_id: str | None, limit: int, offset: int, delivery_id: int | None, as_json: bool
) -> None:
    """Show a webhook's deliveries, newest first; or, with --attempts, one delivery's attempts.

    \b
    pgwebhooks deliveries WEBHOOK_ID [--limit N] [--offset N]
    pgwebhooks deliveries --attempts DELIVERY_ID
    """
    if (webhook_id is None) == (delivery_id is None):
        raise click.UsageError("give either WEBHOOK_ID or --attempts DELIVERY_ID")
    with sql_api(dsn) as conn:
        if delivery_id is not None:
            rows = conn.execute("SELECT * FROM webhooks.get_delivery_attempts(%s)", (delivery_id,)).fetchall()
            emit(rows, as_json)
            return
        rows = conn.execute(
            "SELECT * FROM webhooks.get_deliveries(%s::uuid, %s, %s)", (webhook_id_of(conn, webhook_id), limit, offset)
        ).fetchall()
    columns = ("delivery_id", "event", "table", "status", "attempts", "response_status", "latency_ms",
               "error", "created_at")
    emit(rows, as_json, None if as_json else columns)


@webhooks_group.command("test")
@DSN
@click.argument("webhook_id")
@click.option("--event-type", help="Send an application event of this (declared) type instead of TEST.")
@click.option("--data", default="{}", show_default=True, help="With --event-type: the event's data (JSON).")
@click.option("--wait", is_flag=True, help="Wait for the attempt (a runner must be running) and print its "
              "status, latency and response excerpt.")
@click.option("--timeout", default=60.0, show_default=True, help="With --wait: give up after this many seconds.")
@AS_JSON
def send_test(dsn: str, webhook_id: str, event_type: str | None, data: str, wait: bool, timeout: float,
              as_json: bool) -> None:
    """Queue a test event for a webhook (checks the endpoint and its signature verification)."""
    with sql_api(dsn) as conn:
        webhook_id = webhook_id_of(conn, webhook_id)
        if event_type:
            row = conn.execute(
                "SELECT webhooks.send_test(%s::uuid, event_type => %s, data => %s::jsonb) AS delivery_id",
                (webhook_id, event_type, data)).fetchone()
        else:
            row = conn.execute("SELECT webhooks.send_test(%s::uuid) AS delivery_id", (webhook_id,)).fetchone()
        assert row is not None
        delivery = row["delivery_id"]
        if not as_json:
            click.echo(f"queued test delivery {delivery}")
        if not wait:
            if as_json:
                click.echo(cli_common.to_json({"delivery_id": delivery}))
            return
        deadline = time.monotonic() + timeout
        while True:  # bounded by --timeout
            attempt = conn.execute(
                "SELECT * FROM webhooks.get_delivery_attempts(%s) ORDER BY attempt DESC LIMIT 1", (delivery,)
            ).fetchone()
            if attempt is not None:
                break
            if time.monotonic() >= deadline:
                raise click.ClickException(
                    f"no attempt of delivery {delivery} within {timeout:g} s; is a runner running?")
            time.sleep(0.2)
    if as_json:
        click.echo(cli_common.to_json({"delivery_id": delivery, **attempt}))
        if attempt["status_code"] is None or not 200 <= attempt["status_code"] < 300:
            raise SystemExit(1)
        return
    status = attempt["status_code"] if attempt["status_code"] is not None else "no response"
    click.echo(f"attempt {attempt['attempt']}: {status} in {attempt['latency_ms']} ms")
    if attempt["error"]:
        click.echo(f"error: {attempt['error']}")
    if attempt["response_excerpt"]:
        click.echo(f"response: {attempt['response_excerpt'][:500]}")
    if attempt["status_code"] is None or not 200 <= attempt["status_code"] < 300:
        raise SystemExit(1)


@main.command()
@DSN
@click.argument("delivery_id", type=int, required=False)
@click.option("--failed-of", "webhook_id", help="Replay every failed delivery of this webhook instead.")
@click.option("--since", help="With --failed-of: only failures completed since this timestamp.")
@click.option("--dry-run", is_flag=True, help="With --failed-of: count what would be replayed, queue nothing.")
@AS_JSON
def replay(dsn: str, delivery_id: int | None, webhook_id: str | None, since: str | None, dry_run: bool,
           as_json: bool) -> None:
    """Send a delivery again (same event id), or each failed delivery of a webhook once."""
    if (delivery_id is None) == (webhook_id is None):
        raise click.UsageError("give either DELIVERY_ID or --failed-of WEBHOOK_ID")
    if dry_run and webhook_id is None:
        raise click.UsageError("--dry-run goes with --failed-of")
    with sql_api(dsn) as conn:
        if webhook_id is not None:
            row = conn.execute(
                "SELECT webhooks.replay_failed(%s::uuid, %s::timestamptz, %s) AS n",
                (webhook_id_of(conn, webhook_id), since, dry_run),
            ).fetchone()
            assert row is not None
            if as_json:
                click.echo(cli_common.to_json({"replayed": 0 if dry_run else row["n"], "would_replay": row["n"],
                                       "dry_run": dry_run}))
            elif dry_run:
                click.echo(f"would replay {row['n']} failed deliveries (dry run: nothing queued)")
            else:
                click.echo(f"queued {row['n']} replay(s)")
            return
        row = conn.execute("SELECT webhooks.replay(%s) AS id", (delivery_id,)).fetchone()
    assert row is not None
    if as_json:
        click.echo(cli_common.to_json({"delivery_id": row["id"]}))
    else:
        click.echo(f"queued delivery {row['id']}")


@main.command()
@DSN
@click.option("--older-than", default="7 days", show_default=True, help="Keep finished work younger than this.")
@AS_JSON
def purge(dsn: str, older_than: str, as_json: bool) -> None:
    """Delete finished deliveries and captured changes older than the window."""
    with sql_api(dsn) as conn:
        row = conn.execute("SELECT * FROM webhooks.purge(%s::interval)", (older_than,)).fetchone()
    assert row is not None
    if as_json:
        click.echo(cli_common.to_json(row))
        return
    click.echo(f"purged {row['deliveries']} deliveries and {row['captures']} captured statements")
