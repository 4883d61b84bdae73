"""The operator's commands: `status` (endpoint health), `alerts` (as they come) and `purge`.

Alerts are NOTIFY messages on channel `webhooks_alerts`, one JSON object each (see
sql/functions/080_health.sql); `pgwebhooks alerts` prints them one per line as they come.
"""

from __future__ import annotations

import json
import time

import click
import psycopg

from pgwebhooks.cli import common
from pgwebhooks.cli.common import AS_JSON, DSN, emit, fetch_one, sql_api

STATUS_COLUMNS = ("id", "name", "state", "pending", "oldest_pending_at", "consecutive_failures",
                  "last_success_at", "last_error", "delivered", "failed_attempts", "p95_latency_ms")


BLOCK_COLUMNS = ("family", "block", "state", "rows_estimate", "bytes", "first_at", "last_at", "held_by", "next_check")


@click.command("status")
@DSN
@click.option("--blocks", is_flag=True,
              help="Show the outbox's blocks instead: size, and which webhooks' unsent work keeps a closed one.")
@AS_JSON
def status(dsn: str, blocks: bool, as_json: bool) -> None:
    """Health of every webhook: state, backlog, failures, last hour's deliveries and latency."""
    query = ("SELECT * FROM webhooks.outbox_blocks ORDER BY family, block NULLS LAST" if blocks
             else "SELECT * FROM webhooks.webhook_status ORDER BY name")
    with sql_api(dsn) as conn:
        rows = conn.execute(query).fetchall()
    emit(rows, as_json, None if as_json else BLOCK_COLUMNS if blocks else STATUS_COLUMNS)


@click.command("alerts")
@DSN
@click.option("--count", type=int, default=None, help="Stop after this many alerts.")
@click.option("--seconds", type=float, default=None, help="Stop after this many seconds.")
def alerts(dsn: str, count: int | None, seconds: float | None) -> None:
    """Print alerts (failing, paused, recovered, disabled, exhausted, filter_failed) as JSON lines as they come."""
    deadline = None if seconds is None else time.monotonic() + seconds
    seen = 0
    with sql_api(dsn) as conn:
        conn.execute("LISTEN webhooks_alerts")
        while count is None or seen < count:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            # Wake at least once a second so --seconds and Ctrl-C are honoured.
            for note in conn.notifies(timeout=min(left, 1.0) if left is not None else 1.0):
                click.echo(_line(note))
                seen += 1
                if count is not None and seen >= count:
                    break


def _line(note: psycopg.Notify) -> str:
    try:
        return json.dumps(json.loads(note.payload), separators=(",", ":"))
    except json.JSONDecodeError:
        return note.payload


@click.command()
@DSN
@click.option("--older-than", default="7 days", show_default=True, help="Keep finished work younger than this.")
@AS_JSON
def purge(dsn: str, older_than: str, as_json: bool) -> None:
    """Delete finished deliveries and captured changes older than the window."""
    with sql_api(dsn) as conn:
        row = fetch_one(conn, "SELECT * FROM webhooks.purge(%s::interval)", (older_than,))
    if as_json:
        click.echo(common.to_json(row))
        return
    click.echo(f"purged {row['deliveries']} deliveries and {row['captures']} captured statements")


COMMANDS = (status, alerts, purge)
