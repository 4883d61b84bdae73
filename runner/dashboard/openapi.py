"""The OpenAPI 3.1 document served at /api/v1/openapi.json (kept beside the routes in api.py)."""

from __future__ import annotations

from typing import Any

from pgwebhooks import __version__

# (method, path, summary, SQL function, request body schema or None, success status)
OPERATIONS: list[tuple[str, str, str, str, dict[str, Any] | None, int]] = [
    ("get", "/webhooks", "List webhooks (never their secrets)", "list_webhooks", None, 200),
    ("post", "/webhooks", "Create a webhook; the response holds its secret, shown only now", "create_webhook",
     {"$ref": "#/components/schemas/WebhookCreate"}, 201),
    ("get", "/webhooks/{webhook_id}", "One webhook", "get_webhook", None, 200),
    ("patch", "/webhooks/{webhook_id}", "Change fields of a webhook (update_webhook's changes object)",
     "update_webhook", {"type": "object"}, 200),
    ("delete", "/webhooks/{webhook_id}", "Delete a webhook and its deliveries", "delete_webhook", None, 204),
    ("get", "/webhooks/{webhook_id}/status", "Health of one webhook (webhook_status)", "webhook_status", None, 200),
    ("post", "/webhooks/{webhook_id}/test", "Queue a test delivery (TEST, a row change shape or an event type)",
     "send_test", {"type": "object", "properties": {
         "event": {"type": "string"}, "table": {"type": "string"}, "record": {"type": "object"},
         "old_record": {"type": "object"}, "event_type": {"type": "string"}, "data": {}}}, 202),
    ("post", "/webhooks/{webhook_id}/pause", "Pause sending (changes keep being queued)", "pause_webhook",
     {"type": "object", "properties": {"reason": {"type": "string"}}}, 200),
    ("post", "/webhooks/{webhook_id}/resume", "Resume sending", "resume_webhook", None, 200),
    ("post", "/webhooks/{webhook_id}/rotate-secret", "Sign with a new secret; the old one stays valid for the grace"
     " period. The new secret is in the response, shown only now", "rotate_secret",
     {"type": "object", "properties": {"secret": {"type": "string"}, "grace_period": {"type": "string"}}}, 200),
    ("post", "/webhooks/{webhook_id}/replay-failed", "Replay every failed delivery (since a time)", "replay_failed",
     {"type": "object", "properties": {"since": {"type": "string", "format": "date-time"}}}, 202),
    ("get", "/webhooks/{webhook_id}/deliveries", "Delivery log, newest first (filters: status, event, since, until;"
     " page with before=<last delivery_id>)", "delivery_log", None, 200),
    ("get", "/deliveries/{delivery_id}/attempts", "Every attempt of a delivery", "get_delivery_attempts", None, 200),
    ("get", "/deliveries/{delivery_id}/request", "The URL, body and headers the delivery sent (secrets masked)",
     "delivery_request", None, 200),
    ("post", "/deliveries/{delivery_id}/replay", "Send a delivery again (same event id)", "replay", None, 202),
    ("get", "/status", "Health of every webhook", "webhook_status", None, 200),
    ("get", "/outbox/blocks", "The outbox's blocks: state, size, and the webhooks whose unsent work keeps a"
     " closed one (outbox_blocks)", "get_outbox_blocks", None, 200),
    ("get", "/event-types", "Declared event types", "list_event_types", None, 200),
    ("post", "/events", "Publish an application event", "publish",
     {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}, "data": {}}}, 202),
]

QUERY_PARAMETERS = {
    "/webhooks/{webhook_id}/deliveries": [
        ("status", "string", "pending, leased, delivered or failed"),
        ("event", "string", "an operation (INSERT...) or an event type"),
        ("since", "string", "created at or after (timestamp)"), ("until", "string", "created before (timestamp)"),
        ("limit", "integer", "1 to 500, default 50"), ("before", "integer", "delivery_id to page before"),
    ],
    "/deliveries/{delivery_id}/request": [("attempt", "integer", "which attempt (default: the latest)")],
}

ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "code": {"type": "string", "description": "WH SQLSTATE (e.g. WH404, WH003) or http_<status>"},
    "field": {"type": ["string", "null"]}, "message": {"type": "string"}, "hint": {"type": ["string", "null"]}}}}}


def _operation(method: str, path: str, summary: str, function: str, body: dict[str, Any] | None,
               status: int) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "string", "format": "uuid"} if name == "webhook_id" else {"type": "integer"}}
        for name in ("webhook_id", "delivery_id") if "{" + name + "}" in path
    ]
    params += [{"name": n, "in": "query", "schema": {"type": t}, "description": d}
               for n, t, d in QUERY_PARAMETERS.get(path, []) if method == "get"]
    slug = path.strip("/").replace("/", "_").replace("{", "").replace("}", "").replace("-", "_")
    op: dict[str, Any] = {
        "summary": summary, "operationId": f"{method}_{slug}",
        "description": f"Calls webhooks.{function}().", "parameters": params,
        "security": [{"token": []}],
        "responses": {str(status): {"description": "OK"} if status == 204 else
                      {"description": "OK", "content": {"application/json": {"schema": {}}}}},
    }
    for code, why in (("400", "Malformed request"), ("401", "No valid token"), ("403", "Read-only token or no right"),
                      ("404", "Not found (WH404)"), ("409", "Conflict (e.g. WH002 name taken)"),
                      ("422", "Invalid value (a WH SQLSTATE names the field)")):
        op["responses"][code] = {"description": why,
                                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if body is not None:
        op["requestBody"] = {"required": method != "post" or bool(body.get("required")),
                             "content": {"application/json": {"schema": body}}}
    return op


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, function, body, status in OPERATIONS:
        paths.setdefault(path, {})[method] = _operation(method, path, summary, function, body, status)
    return {
        "openapi": "3.1.0",
        "info": {"title": "pgwebhooks API", "version": __version__,
                 "description": "Each operation calls one function of the pgwebhooks SQL API, with the rights of "
                                "the token that made the request (admin or read-only)."},
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer",
                                          "description": "`pgwebhooks dashboard token create NAME`"}},
            "schemas": {
                "Error": ERROR,
                "WebhookCreate": {"type": "object", "required": ["name", "url", "events"], "properties": {
                    "name": {"type": "string"}, "url": {"type": "string"},
                    "events": {"type": "array", "items": {"type": "object"}, "description":
                               '[{"table": "users", "operations": ["INSERT"]}, {"event_type": "order.*"}]'},
                    "secret": {"type": "string"}, "description": {"type": "string"}, "enabled": {"type": "boolean"},
                    "max_retries": {"type": "integer"}, "timeout_seconds": {"type": "integer"},
                    "retry_backoff_seconds": {"type": "integer"}, "headers": {"type": "object"},
                    "profile": {"type": "string"}, "retry_schedule": {"type": "array", "items": {"type": "string"}},
                    "pause_after": {"type": "string"}, "secret_headers": {"type": "object"},
                    "max_concurrency": {"type": "integer"}, "rate_limit_per_second": {"type": "integer"}}},
            },
        },
    }
