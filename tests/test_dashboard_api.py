"""The dashboard's JSON API and pages over HTTP: CRUD, errors as JSON, tokens and roles, CSRF."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import psycopg
import pytest
from click.testing import CliRunner
from dashboard_server import call, dashboard, grant_tables, make_token
from helpers import create_table, eventually, insert, query, receiver, runner_config, running
from psycopg.conninfo import make_conninfo
from receivers import Reply

from pgwebhooks.cli import main
from pgwebhooks.dashboard.app import check_startup
from pgwebhooks.localpg import free_port

API = "/api/v1"


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # keeps cookies for 127.0.0.1


async def test_api_crud_and_errors_as_json(db: str) -> None:
    create_table(db)
    async with dashboard(db) as base, _session() as http:
        status, hook = await call(http, "POST", f"{base}{API}/webhooks", json={
            "name": "orders", "url": "https://example.com/in", "events": [{"table": "items"}],
            "retry_schedule": ["1 minute", "5 minutes"], "secret_headers": {"Authorization": "Bearer s3"}})
        assert status == 201 and hook["secret"].startswith("whsec_") and hook["max_retries"] == 2
        hook_id = hook["id"]
        status, listed = await call(http, "GET", f"{base}{API}/webhooks")
        assert status == 200 and [h["name"] for h in listed] == ["orders"]
        assert "secret" not in listed[0] and "s3" not in str(listed)
        status, changed = await call(http, "PATCH", f"{base}{API}/webhooks/{hook_id}", json={"timeout_seconds": 7})
        assert status == 200 and changed["timeout_seconds"] == 7
        status, health = await call(http, "GET", f"{base}{API}/webhooks/{hook_id}/status")
        assert status == 200 and health["state"] == "healthy"
        status, queued = await call(http, "POST", f"{base}{API}/webhooks/{hook_id}/test", json={})
        assert status == 202 and isinstance(queued["delivery_id"], int)
        status, log = await call(http, "GET", f"{base}{API}/webhooks/{hook_id}/deliveries?status=pending")
        assert status == 200 and [d["event"] for d in log] == ["TEST"]
        status, paused = await call(http, "POST", f"{base}{API}/webhooks/{hook_id}/pause", json={"reason": "x"})
        assert status == 200 and paused["state"] == "paused"
        status, blocks = await call(http, "GET", f"{base}{API}/outbox/blocks")
        assert status == 200 and {(b["family"], b["state"]) for b in blocks} >= {
            ("deliveries", "current"), ("captures", "ahead"), ("captures", "default")}
        # Errors carry the WH SQLSTATE, the field and the message, with a fitting status.
        status, err = await call(http, "POST", f"{base}{API}/webhooks", json={
            "name": "bad", "url": "ftp://nope", "events": [{"table": "items"}]})
        assert status == 422 and err["error"]["code"] == "WH003" and err["error"]["field"] == "url"
        assert "ftp://nope" in err["error"]["message"]
        status, err = await call(http, "POST", f"{base}{API}/webhooks", json={
            "name": "orders", "url": "https://example.com/2", "events": [{"table": "items"}]})
        assert status == 409 and err["error"]["code"] == "WH002"
        status, err = await call(http, "GET", f"{base}{API}/webhooks/00000000-0000-0000-0000-000000000000")
        assert status == 404 and err["error"]["code"] == "WH404"
        status, err = await call(http, "GET", f"{base}{API}/webhooks/not-a-uuid")
        assert status == 404
        status, err = await call(http, "POST", f"{base}{API}/webhooks", json={"name": "x", "nope": 1})
        assert status == 400 and err["error"]["field"] == "nope"
        status, err = await call(http, "POST", f"{base}{API}/webhooks", data="name=x",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 415
        status, _ = await call(http, "DELETE", f"{base}{API}/webhooks/{hook_id}")
        assert status == 204
        status, err = await call(http, "GET", f"{base}{API}/webhooks/{hook_id}")
        assert status == 404


async def test_openapi_documents_every_route(db: str) -> None:
    async with dashboard(db) as base, _session() as http:
        status, doc = await call(http, "GET", f"{base}{API}/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    from aiohttp import web

    from pgwebhooks.dashboard.api import setup

    app = web.Application()
    setup(app)
    routes = {(r.method.lower(), r.resource.canonical[len(API):]) for r in app.router.routes()
              if r.resource is not None and r.method != "HEAD"}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes - {("get", "/openapi.json")} == documented


async def test_tokens_map_to_roles(db: str) -> None:
    create_table(db)
    grant_tables(db, "items")
    admin, read = make_token(db, "admin"), make_token(db, "read")
    async with dashboard(db, require_tokens=True) as base, _session() as http:
        assert (await call(http, "GET", f"{base}{API}/webhooks"))[0] == 401
        assert (await call(http, "GET", f"{base}{API}/webhooks", token="pgwh_" + "0" * 64))[0] == 401
        assert (await call(http, "GET", f"{base}{API}/webhooks", token=read)) == (200, [])
        new = {"name": "n", "url": "https://example.com/h", "events": [{"table": "items"}]}
        assert (await call(http, "POST", f"{base}{API}/webhooks", token=read, json=new))[0] == 403
        status, hook = await call(http, "POST", f"{base}{API}/webhooks", token=admin, json=new)
        assert status == 201
        # The database itself refuses the read-only role (the app's own check aside).
        with psycopg.connect(db, autocommit=True) as conn, \
                pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("SET LOCAL ROLE webhooks_viewer")
            conn.execute("SELECT webhooks.pause_webhook(%s)", (hook["id"],))
        # A page without a session redirects to sign-in; a read-only session sees no buttons.
        status, _ = await call(http, "GET", f"{base}/")
        assert status == 303
        token_id = query(db, "SELECT id FROM webhooks.api_tokens WHERE access = 'admin'")[0]["id"]
        query(db, "SELECT webhooks.revoke_api_token(%s)", token_id)
        assert (await call(http, "GET", f"{base}{API}/webhooks", token=admin))[0] == 401


async def _csrf_session(http: aiohttp.ClientSession, base: str) -> str:
    status, page = await call(http, "GET", f"{base}/event-types")
    assert status == 200
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found
    return found.group(1)


async def test_cross_site_posts_are_refused(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        hook = conn.execute("SELECT id FROM webhooks.create_webhook('h', 'https://example.com/h',"
                            " '[{\"event_type\": \"*\"}]')").fetchone()
    assert hook is not None
    pause = f"/webhooks/{hook[0]}/pause"
    async with dashboard(db) as base, _session() as http:
        csrf = await _csrf_session(http, base)
        # A form posted from another site: its Origin gives it away (and it has no CSRF token).
        status, _ = await call(http, "POST", f"{base}{pause}", data={"csrf": csrf, "reason": "evil"},
                               headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
        assert status == 403
        # Same origin but no (or a wrong) token: refused too.
        assert (await call(http, "POST", f"{base}{pause}", data={"reason": "x"}))[0] == 403
        assert (await call(http, "POST", f"{base}{pause}", data={"csrf": "0" * 64}))[0] == 403
        # The API refuses a cross-site call and a simple (non-JSON) body.
        assert (await call(http, "POST", f"{base}{API}{pause}", json={},
                           headers={"Origin": "https://evil.example"}))[0] == 403
        # A DNS-rebinding page reaches us under its own host name: refused without tokens.
        assert (await call(http, "GET", f"{base}{API}/webhooks", headers={"Host": "evil.example"}))[0] == 421
        assert query(db, "SELECT paused FROM webhooks.webhooks")[0]["paused"] is False
        status, _ = await call(http, "POST", f"{base}{pause}", data={"csrf": csrf, "reason": "ok"},
                               headers={"Origin": base})
        assert status == 303
        assert query(db, "SELECT paused FROM webhooks.webhooks")[0]["paused"] is True


def test_refuses_a_public_address_without_tokens(db: str) -> None:
    with pytest.raises(SystemExit, match="no API token"):
        asyncio.run(check_startup(db, "0.0.0.0", False))
    result = CliRunner().invoke(main, ["dashboard", "--dsn", db, "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code != 0 and "no API token" in result.output
    assert asyncio.run(check_startup(db, "127.0.0.1", False)) is False
    make_token(db, "read")
    assert asyncio.run(check_startup(db, "0.0.0.0", False)) is True
    assert asyncio.run(check_startup(db, "127.0.0.1", False)) is True  # tokens exist: required everywhere


async def test_request_shown_is_what_the_receiver_got_and_pages_escape(db: str) -> None:
    create_table(db)
    hostile = "<script>document.title='pwned'</script>"
    async with receiver([Reply(500, hostile)]) as rx, dashboard(db) as base, _session() as http:
        status, hook = await call(http, "POST", f"{base}{API}/webhooks", json={
            "name": "<img src=x onerror=alert(1)>", "url": rx.url, "events": [{"table": "items"}],
            "max_retries": 0, "secret_headers": {"X-Api-Key": "k-123"}})
        assert status == 201
        async with running(runner_config(db)):
            insert(db, 1)
            await rx.wait_for(1, timeout=20)
            assert await eventually(lambda: query(db, "SELECT count(*) AS n FROM webhooks.delivery_attempts")[0]["n"]
                                    == 1, timeout=10)
        received = rx.requests[0]
        status, log = await call(http, "GET", f"{base}{API}/webhooks/{hook['id']}/deliveries")
        delivery = log[0]["delivery_id"]
        assert log[0]["status"] == "failed" and log[0]["response_excerpt"] == hostile
        status, sent = await call(http, "GET", f"{base}{API}/deliveries/{delivery}/request")
        assert status == 200 and sent["body"].encode() == received.body
        assert sent["headers"]["X-Api-Key"] == "[secret]" and received.headers["X-Api-Key"] == "k-123"
        assert sent["headers"]["webhook-id"] == received.headers["webhook-id"]
        for page in ("/", f"/webhooks/{hook['id']}", f"/deliveries/{delivery}"):
            async with http.get(f"{base}{page}") as resp:
                html = await resp.text()
                assert resp.status == 200
                assert "script-src" not in resp.headers["Content-Security-Policy"]
                assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
            assert "<script" not in html and "<img src=x" not in html and "k-123" not in html
        assert "&lt;script&gt;document.title=" in html


async def test_the_overview_names_the_webhooks_that_keep_the_outbox(db: str) -> None:
    """A webhook paused for longer than the retention keeps its changes' block; the overview says
    whose unsent work it is (escaped, like every name), and its healthy neighbour is not named."""
    create_table(db)
    async with dashboard(db) as base, _session() as http:
        for name in ("<b>paused</b>", "healthy"):
            status, _ = await call(http, "POST", f"{base}{API}/webhooks", json={
                "name": name, "url": "https://example.com/in", "events": [{"table": "items"}]})
            assert status == 201
        status, page = await call(http, "GET", f"{base}/")
        assert status == 200 and 'id="outbox"' in page and "kept for" not in page
        paused = query(db, "SELECT id FROM webhooks.webhooks WHERE name = '<b>paused</b>'")[0]["id"]
        query(db, "SELECT webhooks.pause_webhook(%s)", paused)
        insert(db, 3)
        # The healthy webhook's three are sent (claimed and answered 200); the paused one's wait.
        query(db, """SELECT count(*) FROM webhooks.complete((
                         SELECT jsonb_agg(jsonb_build_object('delivery_id', c.delivery_id, 'attempt', c.attempt,
                                                             'status_code', 200))
                         FROM webhooks.claim(200) c))""")
        query(db, "UPDATE webhooks.captures SET occurred_at = occurred_at - interval '30 days'")
        query(db, "SELECT * FROM webhooks.maintain()")  # closes the block
        status, page = await call(http, "GET", f"{base}/")
        kept = page.split('id="outbox"', 1)[1].split("</p>", 1)[0]
        assert "kept for the unsent work of:\n&lt;b&gt;paused&lt;/b&gt;." in kept and "healthy" not in kept


async def test_test_form_sends_the_chosen_shape(db: str) -> None:
    create_table(db)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT webhooks.create_event_type('order.created', 'placed')")
        row = conn.execute("SELECT id FROM webhooks.create_webhook('shapes', 'https://example.com/h',"
                           " '[{\"table\": \"items\"}, {\"event_type\": \"order.*\"}]')").fetchone()
    assert row is not None
    async with dashboard(db) as base, _session() as http:
        csrf = await _csrf_session(http, base)
        for shape, data in (("row:UPDATE", '{"id": 7, "label": "x"}'), ("order.created", '{"n": 1}'), ("", "")):
            status, _ = await call(http, "POST", f"{base}/webhooks/{row[0]}/test",
                                   data={"csrf": csrf, "event_type": shape, "table": "public.items", "data": data})
            assert status == 303
        status, _ = await call(http, "POST", f"{base}/webhooks/{row[0]}/test",
                               data={"csrf": csrf, "event_type": "order.created", "data": "{not json"})
        assert status == 400
    sent = query(db, "SELECT operation, event_type, record::text AS record, data FROM webhooks.captures ORDER BY id")
    assert [(s["operation"], s["event_type"]) for s in sent] == [("UPDATE", None), ("EVENT", "order.created"),
                                                                 ("TEST", None)]
    assert sent[0]["record"] == '{"id":7,"label":"x"}' and sent[1]["data"] == {"n": 1}


def test_token_cli_prints_the_token_once_and_revokes(db: str) -> None:
    created = CliRunner().invoke(main, ["dashboard", "token", "create", "deploy-bot", "--access", "admin",
                                        "--dsn", db])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("pgwh_")
    listed = CliRunner().invoke(main, ["dashboard", "token", "list", "--dsn", db])
    assert "deploy-bot" in listed.output and "admin" in listed.output and token not in listed.output
    token_id = query(db, "SELECT id FROM webhooks.api_tokens")[0]["id"]
    revoked = CliRunner().invoke(main, ["dashboard", "token", "revoke", str(token_id), "--dsn", db])
    assert revoked.exit_code == 0
    assert query(db, "SELECT webhooks.authenticate_api_token(%s) AS role", token)[0]["role"] is None
    unknown = CliRunner().invoke(main, ["dashboard", "token", "revoke", "00000000-0000-0000-0000-000000000000",
                                        "--dsn", db])
    assert unknown.exit_code != 0 and "WH042" in unknown.output


def test_dashboard_command_serves_pages(db: str) -> None:
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("pgwebhooks")), "dashboard", "--dsn", db,
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        body = ""
        for _ in range(100):  # bounded: 100 x 0.1 s
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    body = resp.read().decode()
                    csp = resp.headers["Content-Security-Policy"]
                break
            except OSError:
                time.sleep(0.1)
        assert "<h1>Webhooks</h1>" in body and "default-src 'none'" in csp
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_a_plain_login_role_serves_tokens_of_both_kinds(db: str) -> None:
    """As the README sets it up: a login role that may become webhooks_admin or webhooks_viewer."""
    role = f"dash_{uuid.uuid4().hex[:8]}"
    create_table(db)
    grant_tables(db, "items")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE webhooks_admin, webhooks_viewer")
    admin, read = make_token(db, "admin"), make_token(db, "read")
    dsn = make_conninfo(db, user=role)
    new = {"name": "n", "url": "https://example.com/h", "events": [{"table": "items"}]}
    try:
        async with dashboard(dsn, require_tokens=True) as base, _session() as http:
            assert (await call(http, "POST", f"{base}{API}/webhooks", token=admin, json=new))[0] == 201
            status, hooks = await call(http, "GET", f"{base}{API}/status", token=read)
            assert status == 200 and [h["name"] for h in hooks] == ["n"]
            assert (await call(http, "POST", f"{base}{API}/webhooks/{hooks[0]['id']}/pause", token=read,
                               json={}))[0] == 403
        assert query(db, "SELECT paused FROM webhooks.webhooks")[0]["paused"] is False
    finally:
        with psycopg.connect(db, autocommit=True) as conn:  # roles belong to the cluster, not to the database
            conn.execute(f"DROP ROLE {role}")


async def test_delivery_log_pages_and_filters(db: str) -> None:
    create_table(db)
    with psycopg.connect(db, autocommit=True) as conn:
        hook = conn.execute("SELECT id FROM webhooks.create_webhook('pages', 'https://example.com/h',"
                            " '[{\"table\": \"items\"}]')").fetchone()
        assert hook is not None
        conn.execute("INSERT INTO items (label) SELECT 'x' FROM generate_series(1, 7)")
        conn.execute("SELECT count(*) FROM webhooks.claim(100, 30)")  # fan out: deliveries exist
    url = f"{API}/webhooks/{hook[0]}/deliveries"
    async with dashboard(db) as base, _session() as http:
        status, first = await call(http, "GET", f"{base}{url}?limit=3")
        assert status == 200 and len(first) == 3
        status, second = await call(http, "GET", f"{base}{url}?limit=3&before={first[-1]['delivery_id']}")
        ids = [d["delivery_id"] for d in first + second]
        assert len(second) == 3 and ids == sorted(ids, reverse=True) and len(set(ids)) == 6
        assert (await call(http, "GET", f"{base}{url}?status=leased&event=INSERT"))[1][0]["event"] == "INSERT"
        assert (await call(http, "GET", f"{base}{url}?event=DELETE"))[1] == []
        status, err = await call(http, "GET", f"{base}{url}?status=lost")
        assert status == 422 and err["error"]["code"] == "WH040"
        status, err = await call(http, "GET", f"{base}{url}?limit=0")
        assert status == 400 and err["error"]["field"] == "limit"
        status, err = await call(http, "GET", f"{base}{url}?since=yesterday-ish")
        assert status == 422 and err["error"]["code"].startswith("22")
