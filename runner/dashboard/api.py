"""The JSON API under /api/v1: each route calls one SQL API function (see ops.py).

Errors are JSON, {"error": {"code", "field", "message", "hint"}}, with the WH SQLSTATE as code and
a fitting HTTP status (app.http_status): 404 unknown, 403 not allowed, 409 conflict, 422 invalid.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from aiohttp import web

from pgwebhooks.dashboard import ops
from pgwebhooks.dashboard.app import DB, json_response, principal_of
from pgwebhooks.dashboard.openapi import document

PREFIX = "/api/v1"


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise ops.BadInput("body", "is not valid JSON") from None
    if not isinstance(data, dict):
        raise ops.BadInput("body", "must be a JSON object")
    return data


def _webhook_id(request: web.Request) -> UUID:
    found = ops.parse_uuid(request.match_info["webhook_id"])
    if found is None:
        raise web.HTTPNotFound(reason=f"no webhook with id {request.match_info['webhook_id'][:64]}")
    return found


def _delivery_id(request: web.Request) -> int:
    value = ops.parse_int(request.match_info["delivery_id"], "delivery_id")
    assert value is not None
    return value


def _call(request: web.Request) -> Any:
    return request.app[DB].acting_as(principal_of(request))


async def list_webhooks(request: web.Request) -> web.Response:
    async with _call(request) as conn:
        return json_response(await ops.list_webhooks(conn))


async def create_webhook(request: web.Request) -> web.Response:
    body = await _body(request)
    async with _call(request) as conn:
        return json_response(await ops.create_webhook(conn, body), status=201)


async def get_webhook(request: web.Request) -> web.Response:
    async with _call(request) as conn:
        return json_response(await ops.get_webhook(conn, _webhook_id(request)))


async def update_webhook(request: web.Request) -> web.Response:
    body = await _body(request)
    async with _call(request) as conn:
        return json_response(await ops.update_webhook(conn, _webhook_id(request), body))


async def delete_webhook(request: web.Request) -> web.Response:
    async with _call(request) as conn:
        await ops.delete_webhook(conn, _webhook_id(request))
    return web.Response(status=204)


async def webhook_status(request: web.Request) -> web.Response:
    webhook = _webhook_id(request)
    async with _call(request) as conn:
        await ops.get_webhook(conn, webhook)  # WH404 for an unknown id
        found = await ops.status(conn, webhook)
    return json_response(found[0] if found else None)


async def all_status(request: web.Request) -> web.Response:
    async with _call(request) as conn:
        return json_response(await ops.status(conn))


async def outbox_blocks(request: web.Request) -> web.Response:
    async with _call(request) as conn:
        return json_response(await ops.outbox_blocks(conn))


async def send_test(request: web.Request) -> web.Response:
    body = await _body(request)
    async with _call(request) as conn:
        delivery = await ops.send_test(conn, _webhook_id(request), body)
    return json_response({"delivery_id": delivery}, status=202)


async def pause(request: web.Request) -> web.Response:
    body = await _body(request)
    async with _call(request) as conn:
        await ops.pause(conn, _webhook_id(request), body.get("reason"))
        return json_response((await ops.status(conn, _webhook_id(request)))[0])


async def resume(request: web.Request) -> web.Response:
    async with _call(request) as conn:
        await ops.resume(conn, _webhook_id(request))
        return json_response((await ops.status(conn, _webhook_id(request)))[0])


async def rotate_secret(request: web.Request) -> web.Response:
    body = await _body(request)
    async with _call(request) as conn:
        return json_response(await ops.rotate_secret(conn, _webhook_id(request), body.get("secret"),
                                                     body.get("grace_period")))


async def replay_failed(request: web.Request) -> web.Response:
    body = await _body(request)
    async with _call(request) as conn:
        queued = await ops.replay_failed(conn, _webhook_id(request), body.get("since"))
    return json_response({"queued": queued}, status=202)


async def deliveries(request: web.Request) -> web.Response:
    q = request.query
    async with _call(request) as conn:
        return json_response(await ops.deliveries(
            conn, _webhook_id(request), status=q.get("status"), event=q.get("event"), since=q.get("since"),
            until=q.get("until"), limit=ops.parse_int(q.get("limit"), "limit", 1, 500) or 50,
            before=ops.parse_int(q.get("before"), "before")))


async def attempts(request: web.Request) -> web.Response:
    async with _call(request) as conn:
        return json_response(await ops.attempts(conn, _delivery_id(request)))


async def delivery_request(request: web.Request) -> web.Response:
    attempt = ops.parse_int(request.query.get("attempt"), "attempt", 1, 1_000_000)
    async with _call(request) as conn:
        return json_response(await ops.request_of(conn, _delivery_id(request), attempt))


async def replay(request: web.Request) -> web.Response:
    async with _call(request) as conn:
        return json_response({"delivery_id": await ops.replay(conn, _delivery_id(request))}, status=202)


async def event_types(request: web.Request) -> web.Response:
    async with _call(request) as conn:
        return json_response(await ops.event_types(conn))


async def publish(request: web.Request) -> web.Response:
    body = await _body(request)
    if not isinstance(body.get("type"), str):
        raise ops.BadInput("type", "is required: the event type to publish")
    async with _call(request) as conn:
        return json_response({"event_id": await ops.publish(conn, body["type"], body.get("data", {}))}, status=202)


async def openapi(_: web.Request) -> web.Response:
    return json_response(document())


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/openapi.json", openapi)
    r.add_get(f"{PREFIX}/webhooks", list_webhooks)
    r.add_post(f"{PREFIX}/webhooks", create_webhook)
    r.add_get(f"{PREFIX}/webhooks/{{webhook_id}}", get_webhook)
    r.add_patch(f"{PREFIX}/webhooks/{{webhook_id}}", update_webhook)
    r.add_delete(f"{PREFIX}/webhooks/{{webhook_id}}", delete_webhook)
    r.add_get(f"{PREFIX}/webhooks/{{webhook_id}}/status", webhook_status)
    r.add_post(f"{PREFIX}/webhooks/{{webhook_id}}/test", send_test)
    r.add_post(f"{PREFIX}/webhooks/{{webhook_id}}/pause", pause)
    r.add_post(f"{PREFIX}/webhooks/{{webhook_id}}/resume", resume)
    r.add_post(f"{PREFIX}/webhooks/{{webhook_id}}/rotate-secret", rotate_secret)
    r.add_post(f"{PREFIX}/webhooks/{{webhook_id}}/replay-failed", replay_failed)
    r.add_get(f"{PREFIX}/webhooks/{{webhook_id}}/deliveries", deliveries)
    r.add_get(f"{PREFIX}/deliveries/{{delivery_id}}/attempts", attempts)
    r.add_get(f"{PREFIX}/deliveries/{{delivery_id}}/request", delivery_request)
    r.add_post(f"{PREFIX}/deliveries/{{delivery_id}}/replay", replay)
    r.add_get(f"{PREFIX}/status", all_status)
    r.add_get(f"{PREFIX}/outbox/blocks", outbox_blocks)
    r.add_get(f"{PREFIX}/event-types", event_types)
    r.add_post(f"{PREFIX}/events", publish)
