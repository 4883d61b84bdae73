"""`pgwebhooks status`, `alerts`, `webhooks pause` / `resume`: endpoint health from the CLI (issue 11).

Alerts are NOTIFY messages on channel `webhooks_alerts`, one JSON object each (see
sql/functions/070_health.sql); `pgwebhooks alerts` prints them one per line as they come.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
import psycopg

from pgwebhooks import cli_common

STATUS_COLUMNS = ("id", "name", "state", "pending", "oldest_pending_at", "consecutive_failures",
                  "last_success_at", "last_error", "delivered", "failed_attempts", "p95_latency_ms")


def register(main: click.Group, webhooks_group: click.Group, dsn_option: Any, as_json: Any,
             sql_api: Any, emit: Any) -> None:
    """Add the health commands to the CLI (kept apart from cli.py, which is long enough)."""

    @main.command("status")
    @dsn_option
    @as_json
    def status(dsn: str, as_json: bool) -> None:
        """Health of every webhook: state, backlog, failures, last hour's deliveries and latency."""
        with sql_api(dsn) as conn:
            rows = conn.execute("SELECT * FROM webhooks.webhook_status ORDER BY name").fetchall()
        emit(rows, as_json, None if as_json else STATUS_COLUMNS)

    @webhooks_group.command("pause")
    @dsn_option
    @click.argument("webhook_id")
    @click.option("--reason", help="Why (shown by status).")
    @as_json
    def pause(dsn: str, webhook_id: str, reason: str | None, as_json: bool) -> None:
        """Stop sending to a webhook; its changes keep being captured and queued."""
        with sql_api(dsn) as conn:
            hook = cli_common.webhook_id(conn, webhook_id)
            conn.execute("SELECT webhooks.pause_webhook(%s::uuid, %s)", (hook, reason))
        if as_json:
            click.echo(cli_common.to_json({"paused": hook}))
        else:
            click.echo(f"paused {webhook_id}: changes are queued until resume")

    @webhooks_group.command("resume")
    @dsn_option
    @click.argument("webhook_id")
    @as_json
    def resume(dsn: str, webhook_id: str, as_json: bool) -> None:
        """Resume a paused webhook: everything queued meanwhile is sent."""
        with sql_api(dsn) as conn:
            hook = cli_common.webhook_id(conn, webhook_id)
            conn.execute("SELECT webhooks.resume_webhook(%s::uuid)", (hook,))
        click.echo(cli_common.to_json({"resumed": hook}) if as_json else f"resumed {webhook_id}")

    @main.command("alerts")
    @dsn_option
    @click.option("--count", type=int, default=None, help="Stop after this many alerts.")
    @click.option("--seconds", type=float, default=None, help="Stop after this many seconds.")
    def alerts(dsn: str, count: int | None, seconds: float | None) -> None:
        """Print alerts (failing, paused, recovered, disabled, exhausted) as JSON lines as they come."""
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
