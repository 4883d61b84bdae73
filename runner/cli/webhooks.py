"""The application developer's commands: webhooks (create, list, get, update, rotate-secret, delete,
test, pause, resume), their deliveries, and replay."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import click
from psycopg.types.json import Jsonb

from pgwebhooks.cli import common
from pgwebhooks.cli.common import AS_JSON, DSN, emit, emit_record, fetch_one, sql_api
from pgwebhooks.cli.common import webhook_id as webhook_id_of


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


@click.group("webhooks")
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
        row = fetch_one(
            conn,
            "SELECT * FROM webhooks.create_webhook(name => %s, url => %s, events => %s, secret => %s,"
            " description => %s, enabled => %s, max_retries => %s, timeout_seconds => %s,"
            " retry_backoff_seconds => %s, headers => %s, profile => %s, retry_schedule => %s::interval[],"
            " pause_after => %s::interval, secret_headers => %s)",
            (name, url, Jsonb(parse_events(tables, events_json)), secret, description, not disabled,
             max_retries, timeout_seconds, retry_backoff_seconds, Jsonb(parse_headers(header_pairs)),
             profile, retry_schedule,
             None if pause_after == "never" else pause_after, Jsonb(parse_headers(secret_header_pairs))),
        )
    emit_record(row, as_json)
    if not as_json:
        click.echo("\nKeep the secret: it is shown only now.", err=True)


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
        row = fetch_one(conn, "SELECT * FROM webhooks.get_webhook(%s::uuid)", (webhook_id_of(conn, webhook_id),))
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
        row = fetch_one(conn, "SELECT * FROM webhooks.update_webhook(%s::uuid, %s)",
                        (webhook_id_of(conn, webhook_id), Jsonb(changes)))
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
        row = fetch_one(
            conn, "SELECT * FROM webhooks.rotate_secret(%s::uuid, %s, %s::interval)",
            (webhook_id_of(conn, webhook_id), secret, grace)
        )
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
    click.echo(common.to_json({"deleted": hook}) if as_json else f"deleted {webhook_id}")


@click.command()
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
            row = fetch_one(
                conn, "SELECT webhooks.send_test(%s::uuid, event_type => %s, data => %s::jsonb) AS delivery_id",
                (webhook_id, event_type, data))
        else:
            row = fetch_one(conn, "SELECT webhooks.send_test(%s::uuid) AS delivery_id", (webhook_id,))
        delivery = row["delivery_id"]
        if not as_json:
            click.echo(f"queued test delivery {delivery}")
        if not wait:
            if as_json:
                click.echo(common.to_json({"delivery_id": delivery}))
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
        click.echo(common.to_json({"delivery_id": delivery, **attempt}))
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


@click.command()
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
            row = fetch_one(
                conn, "SELECT webhooks.replay_failed(%s::uuid, %s::timestamptz, %s) AS n",
                (webhook_id_of(conn, webhook_id), since, dry_run),
            )
            if as_json:
                click.echo(common.to_json({"replayed": 0 if dry_run else row["n"], "would_replay": row["n"],
                                       "dry_run": dry_run}))
            elif dry_run:
                click.echo(f"would replay {row['n']} failed deliveries (dry run: nothing queued)")
            else:
                click.echo(f"queued {row['n']} replay(s)")
            return
        row = fetch_one(conn, "SELECT webhooks.replay(%s) AS id", (delivery_id,))
    if as_json:
        click.echo(common.to_json({"delivery_id": row["id"]}))
    else:
        click.echo(f"queued delivery {row['id']}")


@webhooks_group.command("pause")
@DSN
@click.argument("webhook_id")
@click.option("--reason", help="Why (shown by status).")
@AS_JSON
def pause(dsn: str, webhook_id: str, reason: str | None, as_json: bool) -> None:
    """Stop sending to a webhook; its changes keep being captured and queued."""
    with sql_api(dsn) as conn:
        hook = common.webhook_id(conn, webhook_id)
        conn.execute("SELECT webhooks.pause_webhook(%s::uuid, %s)", (hook, reason))
    if as_json:
        click.echo(common.to_json({"paused": hook}))
    else:
        click.echo(f"paused {webhook_id}: changes are queued until resume")

@webhooks_group.command("resume")
@DSN
@click.argument("webhook_id")
@AS_JSON
def resume(dsn: str, webhook_id: str, as_json: bool) -> None:
    """Resume a paused webhook: everything queued meanwhile is sent."""
    with sql_api(dsn) as conn:
        hook = common.webhook_id(conn, webhook_id)
        conn.execute("SELECT webhooks.resume_webhook(%s::uuid)", (hook,))
    click.echo(common.to_json({"resumed": hook}) if as_json else f"resumed {webhook_id}")


COMMANDS = (webhooks_group, deliveries, replay)
