"""The runner against hostile receivers and races: NUL bytes and invalid UTF-8 in responses,
credentials in URLs, a result the database refuses, a webhook deleted during fan-out."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from aiohttp import web
from helpers import attempts_of, create_table, create_webhook, eventually, insert, query, runner_config, running

from pgwebhooks.redact import clean_text, origin, scrub
from pgwebhooks.worker import Runner


@asynccontextmanager
async def raw_receiver(status: int, body: bytes) -> AsyncIterator[tuple[str, list[bytes]]]:
    """Answers every POST with `status` and exactly `body`; yields its URL and the bodies received."""
    seen: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.Response(status=status, body=body, content_type="text/plain")

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", seen
    finally:
        await runner.cleanup()


def statuses(dsn: str, webhook_id: object) -> list[tuple[str, int]]:
    rows = query(dsn, "SELECT status, attempts FROM webhooks.deliveries WHERE webhook_id = %s ORDER BY id", webhook_id)
    return [(r["status"], r["attempts"]) for r in rows]


async def test_nul_and_invalid_utf8_answers_are_reported_once_each(db: str) -> None:
    create_table(db)
    create_table(db, "other")
    async with raw_receiver(200, b"a\x00b") as (nul_url, nul_seen), \
            raw_receiver(500, b"bad \xff\xfe utf-8 \x00 here") as (bad_url, bad_seen):
        nul_hook = create_webhook(db, nul_url, table="items", max_retries=3)
        bad_hook = create_webhook(db, bad_url, table="other", max_retries=0)
        async with running(runner_config(db, lease_margin_seconds=1)) as runner:
            insert(db, 3)
            insert(db, 2, table="other")
            done = await eventually(
                lambda: statuses(db, nul_hook["id"]) == [("delivered", 1)] * 3
                and statuses(db, bad_hook["id"]) == [("failed", 1)] * 2, timeout=20)
            await asyncio.sleep(2.5)  # past the 1 s lease margin: nothing may be sent again
    assert done, (statuses(db, nul_hook["id"]), statuses(db, bad_hook["id"]))
    assert len(nul_seen) == 3 and len(bad_seen) == 2  # each sent exactly once
    assert runner.stats.unreported == 0
    nul_attempts = attempts_of(db, nul_hook["id"])
    assert [(a["attempt"], a["status_code"], a["response_excerpt"]) for a in nul_attempts] == [(1, 200, "ab")] * 3
    bad_attempts = attempts_of(db, bad_hook["id"])
    assert [(a["attempt"], a["status_code"]) for a in bad_attempts] == [(1, 500)] * 2
    assert all(a["response_excerpt"] == "bad \ufffd\ufffd utf-8  here" for a in bad_attempts)


async def test_a_result_the_database_refuses_does_not_sink_its_batch(db: str) -> None:
    """Past the sanitizing (here: results put straight into the queue), a data error makes the
    runner report result by result; the unstorable one goes without its excerpt."""
    create_table(db)
    hook = create_webhook(db, "http://127.0.0.1:9/hook")
    insert(db, 3)
    leased = query(db, "SELECT delivery_id, attempt FROM webhooks.claim(10)")
    assert len(leased) == 3
    runner = Runner(runner_config(db))
    for i, r in enumerate(leased):
        runner.reporter.submit({
            "delivery_id": r["delivery_id"], "attempt": r["attempt"], "status_code": 200,
            "response_excerpt": "a\x00b" if i == 1 else "fine", "error": None, "latency_ms": 5,
            "retry_after_seconds": None})
    runner.request_stop()  # the reporter ends once everything is reported
    await asyncio.wait_for(runner.reporter.run(), timeout=20)
    assert runner.reporter.pending == 0
    assert statuses(db, hook["id"]) == [("delivered", 1)] * 3
    excerpts = sorted((a["response_excerpt"] or "-", a["error"] or "-") for a in attempts_of(db, hook["id"]))
    assert excerpts == [("-", "the response could not be stored (refused by the database)"),
                        ("fine", "-"), ("fine", "-")]
    assert runner.stats.unreported == 0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: connections are refused


async def test_logs_never_show_credentials_path_or_query(db: str, caplog: object) -> None:
    create_table(db)
    port = closed_port()
    url = f"http://user:pass@127.0.0.1:{port}/secret-path?token=abc"
    hook = create_webhook(db, url, max_retries=0)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    logger = logging.getLogger("pgwebhooks")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        async with running(runner_config(db)):
            insert(db, 2)
            await eventually(lambda: len(attempts_of(db, hook["id"])) == 2, timeout=15)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    failed = [r for r in records if r.getMessage() == "delivery attempt failed"]
    assert len(failed) == 2
    assert failed[0].url == f"http://127.0.0.1:{port}"
    for record in records:
        text = record.getMessage() + " " + " ".join(f"{k}={v}" for k, v in record.__dict__.items()
                                                      if k not in ("msg", "args", "name", "pathname"))
        for secret in ("user", "pass", "secret-path", "token", "abc"):
            assert secret not in text, (secret, text)


def test_redaction_helpers() -> None:
    assert origin("https://u:p@Example.com:8443/a/b?c=d#e") == "https://example.com:8443"
    assert origin("http://[::1]:80/x") == "http://[::1]:80"
    assert origin("http://h") == "http://h"
    url = "http://user:pass@h:1/secret?token=abc"
    assert scrub(f"failed to reach {url}: refused", url) == "failed to reach http://h:1: refused"
    assert scrub("user:pass@h:1/secret?token=abc broke", url) == "h:1 broke"
    assert clean_text("a\x00b\udcff") == "ab?"


def test_a_webhook_deleted_during_fan_out_leaves_no_orphans(db: str) -> None:
    """delete_webhook() waits for a fan-out in progress and deletes what it created."""
    create_table(db)
    hook = create_webhook(db, "https://receiver.example/hook")
    insert(db, 5)
    errors: list[BaseException] = []
    with psycopg.connect(db) as fan_out:  # a transaction held open mid-claim
        assert fan_out.execute("SELECT webhooks._fan_out(100)").fetchone() == (5,)

        def delete() -> None:
            try:
                with psycopg.connect(db, autocommit=True) as conn:
                    conn.execute("SELECT webhooks.delete_webhook(%s)", (hook["id"],))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        deleter = threading.Thread(target=delete)
        deleter.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not query(
                db, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"):
            time.sleep(0.05)
        blocked = deleter.is_alive()
        fan_out.commit()
        deleter.join(timeout=20)
    assert not errors and not deleter.is_alive()
    assert blocked, "delete_webhook should wait for the fan-out holding the webhook"
    assert query(db, "SELECT count(*) AS n FROM webhooks.deliveries")[0]["n"] == 0
