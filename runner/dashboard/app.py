"""`pgwebhooks dashboard`: the web application (pages and /api/v1) on aiohttp.web.

Who may do what: with tokens configured (or a non-loopback address, which requires them) every
request carries one, as a Bearer header (API) or a session cookie set by /login (pages); the
database maps it to webhooks_admin or webhooks_viewer and the request runs as that role. Without
tokens, on loopback only, requests act as the dashboard's own database role, and the Host header
must name the loopback address (a DNS-rebinding page cannot reach it).

Every response carries a strict Content-Security-Policy (no script at all, styles from /static);
pages are Jinja2 templates with autoescaping on, so every value from a receiver or a table is text.
A state-changing request must come from this origin (Origin, Sec-Fetch-Site), and a form must
carry the CSRF token bound to its browser's cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import jinja2
import psycopg
from aiohttp import web

from pgwebhooks.dashboard.db import Database, Principal
from pgwebhooks.dashboard.ops import BadInput

log = logging.getLogger("pgwebhooks.dashboard")

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it a browser sends `Origin: null` on same-origin form posts.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}
SESSION_COOKIE = "pgwh_session"
CSRF_COOKIE = "pgwh_csrf"
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
DB: web.AppKey[Database] = web.AppKey("db")
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates")
# Typed request keys where aiohttp has them (3.13+), plain strings before.
PRINCIPAL: Any = web.RequestKey("principal", Principal) if hasattr(web, "RequestKey") else "principal"
CSRF_SEED: Any = web.RequestKey("csrf_seed", str) if hasattr(web, "RequestKey") else "csrf_seed"


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    require_tokens: bool
    csrf_key: bytes
    secure_cookies: bool = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def to_json(value: Any) -> str:
    def default(obj: Any) -> Any:
        if isinstance(obj, datetime | date):
            return obj.isoformat()
        if isinstance(obj, timedelta):
            return obj.total_seconds()
        if isinstance(obj, UUID):
            return str(obj)
        if isinstance(obj, Decimal):
            return float(obj)
        raise TypeError(type(obj).__name__)

    return json.dumps(value, default=default)


def interval_text(value: timedelta | None) -> str:
    """An interval as people write it ("3 days", "1 h 30 min"), not Python's "3 days, 0:00:00"."""
    if value is None:
        return "never"
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            count, seconds = divmod(seconds, size)
            parts.append(f"{count} {'day' if unit == 'days' and count == 1 else unit}")
    return " ".join(parts) or "0 s"


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=to_json(value), status=status, content_type="application/json")


# -- errors ----------------------------------------------------------------------------------

def http_status(sqlstate: str | None) -> int:
    """The HTTP status for a database error: the WH codes are the API's validation errors."""
    code = sqlstate or ""
    if code == "WH404":
        return 404
    if code in ("42501", "WH014"):
        return 403
    if code == "WH002" or code.startswith("23"):
        return 409
    if code.startswith(("WH", "22")):
        return 422
    return 500


def error_body(exc: Exception) -> tuple[int, dict[str, Any]]:
    if isinstance(exc, BadInput):
        return 400, {"error": {"code": "bad_request", "field": exc.field, "message": str(exc)}}
    if isinstance(exc, psycopg.Error):
        status = http_status(exc.sqlstate)
        if status == 500:
            log.error("database error", extra={"sqlstate": exc.sqlstate, "error": str(exc).strip()})
            return 500, {"error": {"code": exc.sqlstate or "internal", "message": "internal error (see the log)"}}
        if status == 403 and exc.sqlstate == "42501":
            message = "permission denied: this token is read-only"
        else:
            message = exc.diag.message_primary or str(exc)
        return status, {"error": {"code": exc.sqlstate, "field": exc.diag.column_name, "message": message,
                                  "hint": exc.diag.message_hint}}
    raise exc


# -- auth, CSRF, headers ----------------------------------------------------------------------

def csrf_token(request: web.Request) -> str:
    """The form token for this browser: an HMAC of its CSRF cookie (set by the middleware)."""
    seed = request.get(CSRF_SEED) or request.cookies.get(CSRF_COOKIE, "")
    return hmac.new(request.app[SETTINGS].csrf_key, seed.encode(), hashlib.sha256).hexdigest()


def _same_origin(request: web.Request) -> bool:
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    # The host only: behind an HTTPS proxy the browser's scheme is not the one this server sees.
    return origin is None or urlsplit(origin).netloc == request.host


def _allowed_host(request: web.Request, settings: Settings) -> bool:
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    return is_loopback(host)


async def _principal(request: web.Request, api: bool) -> Principal | None:
    settings = request.app[SETTINGS]
    if not settings.require_tokens:
        return Principal("admin", None)
    if api:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    else:
        token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        return None
    return await request.app[DB].authenticate(token)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    api = request.path.startswith("/api/")
    try:
        response = await _guarded(request, handler, settings, api)
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect
            for name, value in SECURITY_HEADERS.items():
                exc.headers.setdefault(name, value)
            raise
        if api:
            response = json_response({"error": {"code": f"http_{exc.status}", "message": exc.reason}}, exc.status)
        else:
            response = render(request, "message.html", {"title": exc.reason, "error": {
                "code": f"http_{exc.status}", "message": exc.reason}}, status=exc.status)
        for name, value in exc.headers.items():
            if name.lower() in ("www-authenticate", "location"):
                response.headers[name] = value
    except (BadInput, psycopg.Error) as exc:
        status, body = error_body(exc)
        if api:
            response = json_response(body, status)
        else:
            response = render(request, "message.html", {"title": "Refused", "error": body["error"]}, status=status)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not api and CSRF_COOKIE not in request.cookies and CSRF_SEED in request:
        response.set_cookie(CSRF_COOKIE, request[CSRF_SEED], httponly=True, samesite="Strict",
                            secure=settings.secure_cookies, path="/")
    return response


async def _guarded(request: web.Request, handler: Handler, settings: Settings, api: bool) -> web.StreamResponse:
    if not settings.require_tokens and not _allowed_host(request, settings):
        raise web.HTTPMisdirectedRequest(reason="this dashboard answers only to a loopback Host")
    if not api and CSRF_COOKIE not in request.cookies:
        request[CSRF_SEED] = secrets.token_hex(16)
    if request.method in UNSAFE_METHODS:
        if not _same_origin(request):
            raise web.HTTPForbidden(reason="cross-site request refused")
        if api:
            if request.can_read_body and request.content_type != "application/json":
                raise web.HTTPUnsupportedMediaType(reason="send JSON (Content-Type: application/json)")
        else:
            form = await request.post()
            sent = str(form.get("csrf", ""))
            if not request.cookies.get(CSRF_COOKIE) or not hmac.compare_digest(sent, csrf_token(request)):
                raise web.HTTPForbidden(reason="missing or wrong CSRF token; reload the page and try again")
    if request.path.startswith("/static/") or request.path in ("/login", "/logout", "/api/v1/openapi.json"):
        return await handler(request)
    principal = await _principal(request, api)
    if principal is None:
        if api:
            raise web.HTTPUnauthorized(reason="a valid token is required (Authorization: Bearer ...)",
                                       headers={"WWW-Authenticate": "Bearer"})
        raise web.HTTPSeeOther("/login")
    if request.method in UNSAFE_METHODS and not principal.can_write:
        raise web.HTTPForbidden(reason="this token is read-only")
    request[PRINCIPAL] = principal
    return await handler(request)


def principal_of(request: web.Request) -> Principal:
    principal: Principal = request[PRINCIPAL]
    return principal


def render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    env = request.app[TEMPLATES]
    principal = request.get(PRINCIPAL)
    page = env.get_template(template).render(
        csrf=csrf_token(request), principal=principal, can_write=bool(principal and principal.can_write),
        tokens=request.app[SETTINGS].require_tokens, **context)
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")


def create_app(dsn: str, settings: Settings) -> web.Application:
    from pgwebhooks.dashboard import api, views

    app = web.Application(middlewares=[guard], client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app[DB] = Database(dsn)
    app[TEMPLATES] = jinja2.Environment(
        loader=jinja2.PackageLoader("pgwebhooks.dashboard", "templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True)
    app[TEMPLATES].filters["interval"] = interval_text
    views.setup(app)
    api.setup(app)

    async def close_db(app: web.Application) -> None:
        await app[DB].close()

    app.on_cleanup.append(close_db)
    return app


async def check_startup(dsn: str, host: str, require_tokens: bool) -> bool:
    """Whether requests need tokens; refuses (SystemExit) a non-loopback address without any."""
    db = Database(dsn, size=1)
    try:
        configured = await db.tokens_configured()
    finally:
        await db.close()
    if not is_loopback(host) and not configured:
        raise SystemExit(f"refusing to listen on {host}: no API token is configured, so anyone who can reach it "
                         "could manage webhooks. Create one with `pgwebhooks dashboard token create NAME "
                         "--access admin` or bind 127.0.0.1.")
    return require_tokens or configured or not is_loopback(host)
