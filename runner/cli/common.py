"""What every `pgwebhooks` command shares: the one DSN rule, the connection, webhook names for ids,
text and JSON output, and errors as one line with a hint at the fix."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

# Set by `pgwebhooks --verbose`: errors then carry their CONTEXT lines too.
VERBOSE = {"on": False}


def resolve_dsn(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """--dsn, else PGWEBHOOKS_DSN (click reads it), else DATABASE_URL, else "" (libpq's PG* and defaults)."""
    if value:
        return value
    # An empty conninfo lets libpq fill in everything from PGHOST, PGPORT, PGDATABASE, PGUSER,
    # PGPASSWORD, PGSERVICE, ~/.pgpass and its built-in defaults, as psql does.
    return os.environ.get("DATABASE_URL") or ""


DSN_HELP = ("PostgreSQL connection string. If not given: $PGWEBHOOKS_DSN, then $DATABASE_URL, then the libpq"
            " variables (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSERVICE...) and defaults, as psql uses.")


def dsn_option(purpose: str = "") -> Any:
    """The --dsn option every command that connects takes: one rule (see resolve_dsn) everywhere."""
    return click.option("--dsn", envvar="PGWEBHOOKS_DSN", show_envvar=True, callback=resolve_dsn,
                        help=purpose + DSN_HELP)


DSN = dsn_option()
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def check_dsn(dsn: str) -> None:
    """Refuse a connection string libpq cannot parse, in one line, before anything connects."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise click.ClickException(f"malformed DSN: {str(exc).strip().splitlines()[0]}") from exc


# -- JSON ---------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A value as JSON has it: ISO 8601 timestamps, intervals in seconds, numbers as numbers."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def to_json(value: Any, compact: bool = False) -> str:
    if compact:
        return json.dumps(value, default=_plain, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(value, default=_plain, indent=2, ensure_ascii=False)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return to_json(value, compact=True)
    return str(value)


def emit(rows: Sequence[dict[str, Any]], as_json: bool, columns: Sequence[str] | None = None) -> None:
    """Rows as a JSON array, or as an aligned text table of `columns` (all of them by default)."""
    if as_json:
        click.echo(to_json(list(rows)))
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
    """One row as a JSON object, or as `key  value` lines."""
    if as_json:
        click.echo(to_json(row))
        return
    width = max(len(k) for k in row)
    for key, value in row.items():
        click.echo(f"{key.ljust(width)}  {_cell(value)}")


# -- webhooks by name --------------------------------------------------------------------------


def webhook_id(conn: psycopg.Connection[Any], ref: str) -> str:
    """The id of the webhook `ref` names: its id, or its (unique) name."""
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        pass
    row = conn.execute("SELECT id FROM webhooks.list_webhooks() w WHERE w.name = %s", (ref,)).fetchone()
    if row is None:
        raise click.ClickException(f"no webhook named {ref!r} (give its name or id; see `pgwebhooks webhooks list`)")
    return str(row["id"] if isinstance(row, dict) else row[0])


# -- errors ------------------------------------------------------------------------------------

_GRANT_ROLE = re.compile(r'permission denied to grant role "([^"]+)"')


def hint_for(exc: psycopg.Error) -> str | None:
    """The fix for errors people meet first: no schema here, and PostgreSQL 16's role grants."""
    message = exc.diag.message_primary or str(exc)
    state = exc.sqlstate or ""
    if state == "3F000" or (state in ("42883", "42P01") and "webhooks." in message):
        return ("the webhooks schema is not installed in this database (or hidden from this role):"
                " run `pgwebhooks migrate`")
    if state == "42501" and (granted := _GRANT_ROLE.search(message)):
        return (f"PostgreSQL 16 and later let only a role with ADMIN OPTION on {granted.group(1)} grant it; as a"
                f" superuser run: GRANT {granted.group(1)} TO CURRENT_USER WITH ADMIN OPTION;"
                " (connected as the installing role), then run the command again")
    return exc.diag.message_hint


def error_line(exc: psycopg.Error) -> str:
    """One line (`message [SQLSTATE]`), a hint line when there is a fix to suggest, and the
    server's CONTEXT (which names internal functions) only with --verbose."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    message = exc.diag.message_primary or first
    code = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    out = f"{message}{code}"
    if hint := hint_for(exc):
        out += f"\nhint: {hint}"
    if VERBOSE["on"] and exc.diag.context:
        out += f"\ncontext: {exc.diag.context.strip()}"
    return out


@contextmanager
def sql_api(dsn: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A connection for calling the SQL API; its errors become one readable line."""
    check_dsn(dsn)
    try:
        with psycopg.connect(dsn, row_factory=dict_row, autocommit=True) as conn:
            # As the runner's sessions (connection.py): purge() needs READ COMMITTED (WH057).
            conn.execute("SET default_transaction_isolation = 'read committed'")
            yield conn
    except psycopg.Error as exc:
        raise click.ClickException(error_line(exc)) from exc


def fetch_one(conn: psycopg.Connection[dict[str, Any]], query: Any, params: Any = None) -> dict[str, Any]:
    """The one row a SQL API call returns. The API raises its own WH error rather than return
    nothing, so an empty result means a server this client does not match: say so, do not crash
    (and do not rely on `assert`, which `python -O` removes)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise click.ClickException(f"the database returned no row for: {str(query).split('(')[0]}"
                                   " (is the webhooks schema current? run `pgwebhooks migrate`)")
    return row


# Connection failures that retrying cannot fix: the runner exits on these at once.
_PERMANENT = ("authentication failed", "no pg_hba.conf entry", "password is required", "no password supplied",
              "does not exist", "invalid password", "SCRAM")


def is_permanent_connect_error(exc: psycopg.OperationalError) -> bool:
    text = str(exc)
    return (exc.sqlstate or "").startswith("28") or any(p in text for p in _PERMANENT)
