"""The server-rendered pages. Each action is a plain form POST (no JavaScript) that calls one SQL
API function and redirects back (POST/redirect/GET); what the database refuses is shown as is."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import quote
from uuid import UUID

import psycopg
from aiohttp import web

from pgwebhooks.dashboard import ops
from pgwebhooks.dashboard.app import CSRF_COOKIE, DB, SESSION_COOKIE, SETTINGS, principal_of, render

CHART_SLOT = timedelta(minutes=30)
CHART_BUCKETS = 12


def _call(request: web.Request) -> Any:
    return request.app[DB].acting_as(principal_of(request))


def _webhook_id(request: web.Request) -> UUID:
    found = ops.parse_uuid(request.match_info["webhook_id"])
    if found is None:
        raise web.HTTPNotFound(reason="no such webhook")
    return found


def _delivery_id(request: web.Request) -> int:
    value = ops.parse_int(request.match_info["delivery_id"], "delivery_id")
    assert value is not None
    return value


def _back(location: str, notice: str | None = None) -> web.HTTPSeeOther:
    if notice:
        location += ("&" if "?" in location else "?") + "notice=" + quote(notice)
    return web.HTTPSeeOther(location)


def _slots(now: datetime) -> list[datetime]:
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    current = epoch + ((now - epoch) // CHART_SLOT) * CHART_SLOT
    return [current - CHART_SLOT * i for i in range(CHART_BUCKETS - 1, -1, -1)]


def _chart(points: list[dict[str, Any]], slots: list[datetime]) -> dict[str, str]:
    """A small SVG chart as two paths (delivered, failed stacked on top), one bar per slot, newest
    right: two elements a row rather than two per bar keeps a 1,000-webhook overview light."""
    by_start = {p["bucket_start"]: (p["delivered"], p["failed"]) for p in points}
    peak = max([ok + bad for ok, bad in by_start.values()] + [1])
    ok_path, bad_path = [], []
    delivered = failed = 0
    for i, start in enumerate(slots):
        ok, bad = by_start.get(start, (0, 0))
        delivered, failed = delivered + ok, failed + bad
        ok_h, bad_h = 28 * ok / peak, 28 * bad / peak
        if ok_h:
            ok_path.append(f"M{i * 10} 30h8v-{ok_h:.1f}h-8z")
        if bad_h:
            bad_path.append(f"M{i * 10} {30 - ok_h:.1f}h8v-{bad_h:.1f}h-8z")
    return {"ok": "".join(ok_path), "bad": "".join(bad_path),
            "title": f"last {CHART_BUCKETS * CHART_SLOT.seconds // 3600} h: {delivered} delivered, {failed} failed"}


async def overview(request: web.Request) -> web.Response:
    now = datetime.now(UTC)
    async with _call(request) as conn:
        status = await ops.status(conn)
        points = await ops.histogram(conn)
        blocks = await ops.outbox_blocks(conn)
    slots = _slots(now)
    per_hook: dict[UUID, list[dict[str, Any]]] = {}
    for p in points:
        per_hook.setdefault(p["webhook_id"], []).append(p)
    rows = []
    for s in status:
        attempts = (s["delivered"] or 0) + (s["failed_attempts"] or 0)
        rows.append({**s, "error_rate": (s["failed_attempts"] or 0) / attempts if attempts else None,
                     "oldest_age": ops.age_seconds(s["oldest_pending_at"], now),
                     "chart": _chart(per_hook.get(s["id"], []), slots)})
    names = {s["id"]: s["name"] for s in status}
    keepers = sorted({names.get(w, str(w)) for b in blocks for w in b["held_by"] or ()})
    outbox = {"blocks": len(blocks), "mib": sum(b["bytes"] for b in blocks) / 2**20, "kept_for": keepers}
    return render(request, "overview.html", {"title": "Webhooks", "rows": rows, "now": now, "outbox": outbox})


async def webhook_page(request: web.Request) -> web.Response:
    webhook_id = _webhook_id(request)
    q = request.query
    filters = {k: q.get(k, "") for k in ("status", "event", "since", "until")}
    before = ops.parse_int(q.get("before"), "before")
    async with _call(request) as conn:
        hook = await ops.get_webhook(conn, webhook_id)
        status = (await ops.status(conn, webhook_id) or [None])[0]
        log = await ops.deliveries(conn, webhook_id, status=filters["status"], event=filters["event"],
                                   since=filters["since"], until=filters["until"], limit=50, before=before)
        types = await ops.event_types(conn)
    next_page = dict(filters, before=str(log[-1]["delivery_id"])) if len(log) == 50 else None
    return render(request, "webhook.html", {
        "title": hook["name"] if hook else "Webhook", "hook": hook, "status": status, "log": log,
        "filters": filters, "statuses": ops.STATUSES, "next_page": next_page, "event_types": types,
        "notice": q.get("notice")})


async def delivery_page(request: web.Request) -> web.Response:
    delivery_id = _delivery_id(request)
    shown = ops.parse_int(request.query.get("attempt"), "attempt", 1, 1_000_000)
    async with _call(request) as conn:
        attempts = await ops.attempts(conn, delivery_id)
        try:
            async with conn.transaction():  # a savepoint: a request that cannot be shown is said so
                sent = await ops.request_of(conn, delivery_id, shown)
            refused = None
        except psycopg.Error as exc:
            sent, refused = None, exc.diag.message_primary or str(exc)
    return render(request, "delivery.html", {"title": f"Delivery {delivery_id}", "delivery_id": delivery_id,
                                             "attempts": attempts, "sent": sent, "refused": refused,
                                             "shown": shown or (attempts[-1]["attempt"] if attempts else None),
                                             "notice": request.query.get("notice")})


# -- forms -----------------------------------------------------------------------------------

def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _headers(text: str, field: str) -> dict[str, str]:
    headers = {}
    for line in _lines(text):
        name, sep, value = line.partition(":")
        if not sep:
            raise ops.BadInput(field, f"{line!r} is not Name: value")
        headers[name.strip()] = value.strip()
    return headers


def _events(form: Any) -> list[dict[str, Any]] | None:
    raw = str(form.get("events_json", "")).strip()
    if raw:
        try:
            events = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ops.BadInput("events_json", f"is not JSON: {exc}") from None
        return events if isinstance(events, list) else [events]
    events: list[dict[str, Any]] = []
    for line in _lines(str(form.get("tables", ""))):
        table, _, operations = line.partition(":")
        entry: dict[str, Any] = {"table": table.strip()}
        if operations.strip():
            entry["operations"] = [o.strip().upper() for o in operations.split(",") if o.strip()]
        events.append(entry)
    events += [{"event_type": p} for p in _lines(str(form.get("event_types", "")))]
    return events or None


def _settings(form: Any) -> dict[str, Any]:
    """The fields a create or edit form sets; a blank one is left out (default, or unchanged)."""
    args: dict[str, Any] = {}
    for key in ("name", "url", "description", "profile"):
        if str(form.get(key, "")).strip():
            args[key] = str(form[key]).strip()
    for key, low, high in (("max_retries", 0, 1000), ("timeout_seconds", 1, 3600),
                           ("retry_backoff_seconds", 1, 86400), ("max_concurrency", 1, 10000),
                           ("rate_limit_per_second", 1, 100000)):
        value = ops.parse_int(str(form.get(key, "")).strip(), key, low, high)
        if value is not None:
            args[key] = value
    if schedule := str(form.get("retry_schedule", "")).strip():
        args["retry_schedule"] = [s.strip() for s in schedule.split(",") if s.strip()]
    if pause_after := str(form.get("pause_after", "")).strip():
        args["pause_after"] = None if pause_after == "never" else pause_after
    if headers := str(form.get("headers", "")).strip():
        args["headers"] = _headers(headers, "headers")
    if secret_headers := str(form.get("secret_headers", "")).strip():
        args["secret_headers"] = _headers(secret_headers, "secret_headers")
    if (events := _events(form)) is not None:
        args["events"] = events
    return args


def _test_shape(form: Any) -> dict[str, Any]:
    """send_test's arguments from the test form: TEST, a row change (row:INSERT...) of `table`
    with `data` as its record, or an event type with `data` as its data."""
    shape = str(form.get("event_type", "")).strip()
    raw = str(form.get("data", "")).strip() or "{}"
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ops.BadInput("data", f"is not JSON: {exc}") from None
    if not shape:
        return {}
    if shape.startswith("row:"):
        return {"event": shape[4:], "table": str(form.get("table", "")).strip(), "record": data}
    return {"event_type": shape, "data": data}


async def new_form(request: web.Request) -> web.Response:
    return render(request, "edit.html", {"title": "New webhook", "hook": None, "profiles": ops.PROFILES})


async def create(request: web.Request) -> web.Response:
    args = _settings(await request.post())
    async with _call(request) as conn:
        row = await ops.create_webhook(conn, args)
    assert row is not None
    return render(request, "secret.html", {"title": "Webhook created", "hook": row, "secret": row["secret"]})


async def edit_form(request: web.Request) -> web.Response:
    async with _call(request) as conn:
        hook = await ops.get_webhook(conn, _webhook_id(request))
    return render(request, "edit.html", {"title": "Edit webhook", "hook": hook, "profiles": ops.PROFILES,
                                         "events_json": json.dumps(hook["events"] if hook else [], indent=2)})


async def update(request: web.Request) -> web.Response:
    form = await request.post()
    changes = _settings(form)
    changes["enabled"] = form.get("enabled") == "on"
    webhook_id = _webhook_id(request)
    async with _call(request) as conn:
        await ops.update_webhook(conn, webhook_id, changes)
    raise _back(f"/webhooks/{webhook_id}", "saved")


async def action(request: web.Request) -> web.Response:
    """The buttons of a webhook's page."""
    webhook_id = _webhook_id(request)
    form = await request.post()
    verb = request.match_info["verb"]
    location, notice = f"/webhooks/{webhook_id}", ""
    # Redirects are raised after the transaction: raised inside it, they would roll it back.
    async with _call(request) as conn:
        if verb == "pause":
            await ops.pause(conn, webhook_id, str(form.get("reason", "")).strip() or None)
            notice = "paused"
        elif verb == "resume":
            await ops.resume(conn, webhook_id)
            notice = "resumed"
        elif verb == "replay-failed":
            notice = f"queued {await ops.replay_failed(conn, webhook_id, str(form.get('since', '')).strip())} replays"
        elif verb == "test":
            delivery = await ops.send_test(conn, webhook_id, _test_shape(form))
            location, notice = f"/deliveries/{delivery}", "test queued: its attempt appears here once a runner sends it"
        elif verb == "rotate-secret":
            row = await ops.rotate_secret(conn, webhook_id, None, str(form.get("grace", "")).strip() or None)
            hook = await ops.get_webhook(conn, webhook_id)
            assert row is not None
            return render(request, "secret.html", {"title": "Secret rotated", "hook": hook, "secret": row["secret"],
                                                   "expires": row["previous_secrets_expire_at"]})
        elif verb == "delete":
            hook = await ops.get_webhook(conn, webhook_id)
            if not hook or str(form.get("confirm", "")) != hook["name"]:
                raise ops.BadInput("confirm", "type the webhook's name to delete it")
            await ops.delete_webhook(conn, webhook_id)
            location, notice = "/", f"deleted {hook['name']}"
        else:
            raise web.HTTPNotFound()
    raise _back(location, notice)


async def replay(request: web.Request) -> web.Response:
    async with _call(request) as conn:
        new = await ops.replay(conn, _delivery_id(request))
    raise _back(f"/deliveries/{new}", f"replay of delivery {_delivery_id(request)} queued")


async def event_types_page(request: web.Request) -> web.Response:
    async with _call(request) as conn:
        types = await ops.event_types(conn)
    return render(request, "event_types.html", {"title": "Event types", "types": types,
                                                "notice": request.query.get("notice")})


async def publish(request: web.Request) -> web.Response:
    form = await request.post()
    try:
        data = json.loads(str(form.get("data", "")).strip() or "{}")
    except json.JSONDecodeError as exc:
        raise ops.BadInput("data", f"is not JSON: {exc}") from None
    async with _call(request) as conn:
        event_id = await ops.publish(conn, str(form.get("type", "")), data)
    raise _back("/event-types", f"published event {event_id}")


# -- sign-in ---------------------------------------------------------------------------------

async def login_form(request: web.Request) -> web.Response:
    return render(request, "login.html", {"title": "Sign in", "failed": False})


async def login(request: web.Request) -> web.Response:
    token = str((await request.post()).get("token", "")).strip()
    principal = await request.app[DB].authenticate(token) if token else None
    if principal is None:
        return render(request, "login.html", {"title": "Sign in", "failed": True}, status=401)
    # Returned, not raised: a raised redirect loses the cookies set on it.
    response = web.Response(status=303, headers={"Location": "/"})
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict", path="/",
                        secure=request.app[SETTINGS].secure_cookies, max_age=12 * 3600)
    return response


async def logout(_: web.Request) -> web.Response:
    response = web.Response(status=303, headers={"Location": "/login"})
    response.del_cookie(SESSION_COOKIE, path="/")
    response.del_cookie(CSRF_COOKIE, path="/")
    return response


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/", overview)
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/webhooks/new", new_form)
    r.add_post("/webhooks/new", create)
    r.add_get("/webhooks/{webhook_id}", webhook_page)
    r.add_get("/webhooks/{webhook_id}/edit", edit_form)
    r.add_post("/webhooks/{webhook_id}/edit", update)
    r.add_post("/webhooks/{webhook_id}/{verb}", action)
    r.add_get("/deliveries/{delivery_id}", delivery_page)
    r.add_post("/deliveries/{delivery_id}/replay", replay)
    r.add_get("/event-types", event_types_page)
    r.add_post("/event-types/publish", publish)
    r.add_static("/static", str(resources.files("pgwebhooks.dashboard") / "static"), append_version=False)
