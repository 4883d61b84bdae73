"""The dashboard in a real browser: Debian's chromium driven by Playwright (never `playwright install`).

`make deps` installs chromium; these tests need it and fail (not skip) without it. With
PGWEBHOOKS_SCREENSHOTS=DIR (`make screenshots`) each page is also saved as DIR/<page>.png.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import web
from dashboard_server import dashboard, grant_tables, make_token
from helpers import create_table, create_webhook, eventually, insert, query, receiver, runner_config, running
from playwright.async_api import Browser, Page, async_playwright
from receivers import Reply

from pgwebhooks.localpg import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
SHOTS = os.environ.get("PGWEBHOOKS_SCREENSHOTS")
HOSTILE = "<script>document.title='pwned'</script>"


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: `make deps` (apt-get install chromium) installs it"
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def shot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


async def new_page(b: Browser) -> Page:
    page = await b.new_page(viewport={"width": 1366, "height": 800})
    page.set_default_timeout(15_000)
    return page


def hook_state(db: str, hook_id: Any) -> dict[str, Any]:
    return query(db, "SELECT * FROM webhooks.webhook_status WHERE id = %s", hook_id)[0]


async def test_failing_webhook_shown_failing_and_responses_shown_as_text(db: str) -> None:
    create_table(db)
    create_table(db, "orders")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT webhooks.create_event_type('order.created', 'An order was placed')")
    async with receiver([Reply(200, "thanks")]) as ok, receiver([Reply(500, HOSTILE)]) as bad, \
            dashboard(db) as base, browser() as b:
        healthy = create_webhook(db, ok.url, name="crm-sync")
        failing = create_webhook(db, bad.url, table="orders", name="billing", max_retries=5, retry_backoff_seconds=60)
        async with running(runner_config(db)):
            insert(db, 5)
            insert(db, 4, "orders")
            assert await eventually(lambda: hook_state(db, failing["id"])["state"] == "failing", timeout=30)
            assert await eventually(lambda: len(ok.requests) == 5 and hook_state(db, healthy["id"])["pending"] == 0,
                                    timeout=30)
        page = await new_page(b)
        await page.goto(f"{base}/")
        rows = page.locator("#overview tbody tr")
        assert await rows.count() == 2
        assert (await page.locator(f"tr[data-webhook='{failing['id']}'] .state").inner_text()) == "failing"
        assert (await page.locator(f"tr[data-webhook='{healthy['id']}'] .state").inner_text()) == "healthy"
        await shot(page, "overview")

        await page.click("text=billing")
        assert (await page.locator("h1 .state").inner_text()) == "failing"
        await shot(page, "webhook")
        await page.locator("#deliveries tbody tr a").first.click()
        # The receiver's <script> is text on the page, never run.
        assert HOSTILE in await page.locator("pre.response").first.inner_text()
        assert await page.title() != "pwned"
        # The request shown is the one the receiver got, byte for byte.
        shown = await page.locator("#request-body").inner_text()
        webhook_id = await page.locator("#request-headers tr:has(th:text-is('webhook-id')) td").inner_text()
        got = {r.headers["webhook-id"]: r.body for r in bad.requests}
        assert shown.encode() == got[webhook_id.strip()]
        await shot(page, "delivery")


async def test_buttons_change_the_database(db: str) -> None:
    create_table(db)
    async with receiver() as rx, dashboard(db) as base, browser() as b:
        hook = create_webhook(db, rx.url, name="inventory")
        page = await new_page(b)
        await page.goto(f"{base}/webhooks/{hook['id']}")
        await page.fill("input[name=reason]", "maintenance window")
        await page.click("button[name=pause]")
        assert "paused" in await page.locator(".notice").inner_text()
        assert hook_state(db, hook["id"])["state"] == "paused"
        assert hook_state(db, hook["id"])["paused_reason"] == "maintenance window"
        await page.click("button[name=resume]")
        assert hook_state(db, hook["id"])["state"] == "healthy"

        async with running(runner_config(db)):
            await page.click("button[name=send-test]")
            assert "/deliveries/" in page.url
            first = int(page.url.rsplit("/", 1)[1].split("?")[0])
            await rx.wait_for(1, timeout=20)
            assert await eventually(lambda: query(db, "SELECT status FROM webhooks.deliveries WHERE id = %s",
                                                  first)[0]["status"] == "delivered", timeout=10)
            await page.reload()
            assert "200" in await page.locator("#attempts tbody").inner_text()
            await page.click("button[name=replay]")
            assert await eventually(lambda: len(rx.requests) == 2, timeout=20)
        ids = {r.headers["webhook-id"] for r in rx.requests}
        assert len(ids) == 1  # a replay is the same event
        assert query(db, "SELECT count(*) AS n FROM webhooks.deliveries")[0]["n"] == 2

        await page.goto(f"{base}/webhooks/{hook['id']}")
        await page.click("button[name=rotate-secret]")
        secret = await page.locator("#secret").inner_text()
        assert secret.startswith("whsec_")
        assert query(db, "SELECT count(*) AS n FROM webhooks.secrets WHERE webhook_id = %s", hook["id"])[0]["n"] == 2

        await page.goto(f"{base}/webhooks/{hook['id']}/edit")
        await shot(page, "edit")
        await page.fill("input[name=timeout_seconds]", "9")
        await page.click("button:has-text('Save')")
        assert query(db, "SELECT timeout_seconds FROM webhooks.webhooks")[0]["timeout_seconds"] == 9

        await page.goto(f"{base}/webhooks/{hook['id']}")
        await page.click("details.danger summary")
        await page.fill("input[name=confirm]", "inventory")
        await page.click("button[name=delete]")
        assert query(db, "SELECT count(*) AS n FROM webhooks.webhooks")[0]["n"] == 0


async def test_read_only_token_sees_no_buttons(db: str) -> None:
    create_table(db)
    grant_tables(db, "items")
    create_webhook(db, "https://example.com/h", name="audit-log")
    read, admin = make_token(db, "read"), make_token(db, "admin")
    async with dashboard(db, require_tokens=True) as base, browser() as b:
        page = await new_page(b)
        await page.goto(f"{base}/")
        assert page.url.endswith("/login")
        await shot(page, "login")
        await page.fill("input[name=token]", read)
        await page.click("button:has-text('Sign in')")
        await page.click("text=audit-log")
        assert await page.locator("h1").count() == 1
        assert await page.locator("form[method=post]:not([action='/logout'])").count() == 0
        assert await page.locator("#actions").count() == 0
        assert await page.locator("text=New webhook").count() == 0
        await page.click("button:has-text('sign out')")

        await page.fill("input[name=token]", admin)
        await page.click("button:has-text('Sign in')")
        await page.click("text=audit-log")
        assert await page.locator("button[name=pause]").count() == 1


async def test_cross_site_form_post_is_refused(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute("SELECT id FROM webhooks.create_webhook('target', 'https://example.com/h',"
                           " '[{\"event_type\": \"*\"}]')").fetchone()
    assert row is not None
    async with dashboard(db) as base, evil_site(f"{base}/webhooks/{row[0]}/pause") as evil, browser() as b:
        page = await new_page(b)
        await page.goto(f"{base}/event-types")  # the victim has a session (CSRF cookie) with the dashboard
        await page.goto(evil)
        async with page.expect_response(lambda r: r.url.endswith("/pause")) as answer:
            await page.click("button")
        assert (await answer.value).status == 403
    assert query(db, "SELECT paused FROM webhooks.webhooks")[0]["paused"] is False


@asynccontextmanager
async def evil_site(target: str) -> AsyncIterator[str]:
    """Another origin (another port) serving a form that posts to the dashboard."""
    page = (f'<form method="post" action="{target}"><input name="reason" value="pwned">'
            '<input name="csrf" value="guess"><button>Win a prize</button></form>')

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://localhost:{port}/"
    finally:
        await runner.cleanup()


async def test_event_types_page_publishes(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT webhooks.create_event_type('invoice.paid', 'An invoice was paid', '{\"id\": 1}')")
        conn.execute("SELECT webhooks.create_webhook('ledger', 'https://example.com/h',"
                     " '[{\"event_type\": \"invoice.*\"}]')")
    async with dashboard(db) as base, browser() as b:
        page = await new_page(b)
        await page.goto(f"{base}/event-types")
        await shot(page, "event-types")
        await page.fill("textarea[name=data]", '{"id": 42}')
        await page.click("button[name=publish]")
        assert "published event" in await page.locator(".notice").inner_text()
    assert query(db, "SELECT count(*) AS n FROM webhooks.captures WHERE operation = 'EVENT'")[0]["n"] == 1


async def test_create_form_makes_a_webhook_and_shows_its_secret_once(db: str) -> None:
    create_table(db)
    async with dashboard(db) as base, browser() as b:
        page = await new_page(b)
        await page.goto(f"{base}/")
        await page.click("nav >> text=New webhook")
        await page.fill("input[name=name]", "search-index")
        await page.fill("input[name=url]", "https://search.example.com/hooks")
        await page.fill("textarea[name=tables]", "public.items:INSERT,UPDATE")
        await page.select_option("select[name=profile]", "supabase")
        await page.fill("input[name=retry_schedule]", "1 minute, 10 minutes")
        await page.fill("textarea[name=secret_headers]", "Authorization: Bearer sk-live-1")
        await page.click("button:has-text('Create')")
        secret = await page.locator("#secret").inner_text()
        assert secret.startswith("whsec_")
        await page.click("text=Continue")
        html = await page.content()
        assert "sk-live-1" not in html and secret not in html
        assert "public.items" in await page.locator(".subs").inner_text()
    row = query(db, "SELECT w.profile, w.max_retries, s.headers FROM webhooks.webhooks w"
                    " JOIN webhooks.secret_headers s ON s.webhook_id = w.id")[0]
    assert (row["profile"], row["max_retries"], row["headers"]) == (
        "supabase", 2, {"Authorization": "Bearer sk-live-1"})
