"""The SQL calls behind the pages and the API: one thin function per SQL API function, nothing
re-implemented. Arguments are checked only for type here; the SQL functions judge the values."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

Conn = psycopg.AsyncConnection[dict[str, Any]]

# create_webhook's arguments, with the cast each one needs (None: passed as is).
CREATE_ARGS: dict[str, str | None] = {
    "name": None, "url": None, "events": "jsonb", "secret": None, "description": None, "enabled": None,
    "max_retries": None, "timeout_seconds": None, "retry_backoff_seconds": None, "headers": "jsonb",
    "profile": None, "retry_schedule": "interval[]", "pause_after": "interval", "secret_headers": "jsonb",
    "max_concurrency": None, "rate_limit_per_second": None,
}
TEST_ARGS: dict[str, str | None] = {
    "event": None, "table": None, "record": "jsonb", "old_record": "jsonb", "event_type": None, "data": "jsonb",
}
PROFILES = ("standard", "fluxbase", "truss", "rowbase", "flux", "supabase", "hasura")
STATUSES = ("pending", "leased", "delivered", "failed")


class BadInput(ValueError):
    """A request the dashboard refuses before asking the database (400), naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _named(args: dict[str, Any], spec: dict[str, str | None]) -> tuple[str, dict[str, Any]]:
    unknown = sorted(set(args) - set(spec))
    if unknown:
        raise BadInput(unknown[0], f"is not a known field; expected one of {', '.join(spec)}")
    parts, params = [], {}
    for key, value in args.items():
        cast = spec[key]
        if cast == "jsonb":
            value = None if value is None else Jsonb(value)
        if cast == "interval[]" and value is not None and not isinstance(value, list):
            raise BadInput(key, "must be a list of intervals, e.g. [\"1 minute\", \"5 minutes\"]")
        parts.append(f'"{key}" => %({key})s' + (f"::{cast}" if cast and cast != "jsonb" else ""))
        params[key] = value
    return ", ".join(parts), params


async def rows(conn: Conn, query: str, params: Any = None) -> list[dict[str, Any]]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


async def one(conn: Conn, query: str, params: Any = None) -> dict[str, Any] | None:
    cur = await conn.execute(query, params)
    return await cur.fetchone()


async def status(conn: Conn, webhook_id: UUID | None = None) -> list[dict[str, Any]]:
    if webhook_id is None:
        return await rows(conn, "SELECT * FROM webhooks.webhook_status ORDER BY name")
    return await rows(conn, "SELECT * FROM webhooks.webhook_status WHERE id = %s", (webhook_id,))


async def list_webhooks(conn: Conn) -> list[dict[str, Any]]:
    return await rows(conn, "SELECT * FROM webhooks.list_webhooks() ORDER BY name")


async def get_webhook(conn: Conn, webhook_id: UUID) -> dict[str, Any] | None:
    return await one(conn, "SELECT * FROM webhooks.get_webhook(%s)", (webhook_id,))


async def create_webhook(conn: Conn, args: dict[str, Any]) -> dict[str, Any] | None:
    named, params = _named(args, CREATE_ARGS)
    return await one(conn, f"SELECT * FROM webhooks.create_webhook({named})", params)


async def update_webhook(conn: Conn, webhook_id: UUID, changes: dict[str, Any]) -> dict[str, Any] | None:
    return await one(conn, "SELECT * FROM webhooks.update_webhook(%s, %s)", (webhook_id, Jsonb(changes)))


async def delete_webhook(conn: Conn, webhook_id: UUID) -> None:
    await conn.execute("SELECT webhooks.delete_webhook(%s)", (webhook_id,))


async def pause(conn: Conn, webhook_id: UUID, reason: str | None) -> None:
    await conn.execute("SELECT webhooks.pause_webhook(%s, %s)", (webhook_id, reason or None))


async def resume(conn: Conn, webhook_id: UUID) -> None:
    await conn.execute("SELECT webhooks.resume_webhook(%s)", (webhook_id,))


async def rotate_secret(conn: Conn, webhook_id: UUID, secret: str | None, grace: str | None) -> dict[str, Any] | None:
    return await one(conn, "SELECT * FROM webhooks.rotate_secret(%s, %s, coalesce(%s::interval, '24 hours'))",
                     (webhook_id, secret or None, grace or None))


async def send_test(conn: Conn, webhook_id: UUID, args: dict[str, Any]) -> int:
    named, params = _named({k: v for k, v in args.items() if v not in (None, "")}, TEST_ARGS)
    query = f"SELECT webhooks.send_test(%(id)s{', ' + named if named else ''}) AS delivery_id"
    row = await one(conn, query, {"id": webhook_id, **params})
    assert row is not None
    return int(row["delivery_id"])


async def replay(conn: Conn, delivery_id: int) -> int:
    row = await one(conn, "SELECT webhooks.replay(%s) AS delivery_id", (delivery_id,))
    assert row is not None
    return int(row["delivery_id"])


async def replay_failed(conn: Conn, webhook_id: UUID, since: str | None) -> int:
    row = await one(conn, "SELECT webhooks.replay_failed(%s, %s::timestamptz) AS queued", (webhook_id, since or None))
    assert row is not None
    return int(row["queued"])


async def deliveries(conn: Conn, webhook_id: UUID, *, status: str | None = None, event: str | None = None,
                     since: str | None = None, until: str | None = None, limit: int = 50,
                     before: int | None = None) -> list[dict[str, Any]]:
    return await rows(
        conn,
        "SELECT * FROM webhooks.delivery_log(%s, %s, %s, %s::timestamptz, %s::timestamptz, %s, %s)",
        (webhook_id, status or None, event or None, since or None, until or None, limit, before),
    )


async def attempts(conn: Conn, delivery_id: int) -> list[dict[str, Any]]:
    return await rows(conn, "SELECT * FROM webhooks.get_delivery_attempts(%s)", (delivery_id,))


async def request_of(conn: Conn, delivery_id: int, attempt: int | None = None) -> dict[str, Any] | None:
    return await one(conn, "SELECT * FROM webhooks.delivery_request(%s, %s)", (delivery_id, attempt))


async def histogram(conn: Conn) -> list[dict[str, Any]]:
    return await rows(conn, "SELECT * FROM webhooks.delivery_histogram()")


async def outbox_blocks(conn: Conn) -> list[dict[str, Any]]:
    return await rows(conn, "SELECT * FROM webhooks.outbox_blocks ORDER BY family, block NULLS LAST")


async def event_types(conn: Conn) -> list[dict[str, Any]]:
    return await rows(conn, "SELECT * FROM webhooks.list_event_types()")


async def publish(conn: Conn, event_type: str, data: Any) -> str:
    row = await one(conn, "SELECT webhooks.publish(%s, %s) AS event_id", (event_type, Jsonb(data)))
    assert row is not None
    return str(row["event_id"])


def parse_uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


def parse_int(value: str | None, field: str, low: int = 1, high: int = 2**63 - 1) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except ValueError:
        raise BadInput(field, f"{value!r} is not an integer") from None
    if not low <= number <= high:
        raise BadInput(field, f"{number} is out of range ({low} to {high})")
    return number


def age_seconds(at: datetime | None, now: datetime) -> float | None:
    return None if at is None else max((now - at).total_seconds(), 0.0)
