"""Application events from the outside: the publisher role, `webhooks test --wait`, and
`pgwebhooks listen --forward-to`. Real PostgreSQL, real runner, real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import uuid

import httpx
import psycopg
import pytest
from click.testing import CliRunner
from helpers import create_webhook, receiver, runner_config, running
from psycopg import sql
from psycopg.types.json import Jsonb
from receivers import Reply, ScriptedReceiver

from conftest import Server, dsn_params
from pgwebhooks.cli import main
from pgwebhooks.receiver import Receiver, forward_url

SECRET = "a-plain-string-secret-for-events"


def login_role(server: Server, db: str, *grants: str) -> str:
    """A new login role with the given roles granted; returns its DSN for `db`."""
    name = "r_" + uuid.uuid4().hex[:10]
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(name)))
        for role in grants:
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(name)))
    return server.dsn_for(dsn_params(db)["dbname"], user=name, password="pw")


def test_publisher_may_publish_and_nothing_else(server: Server, db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT webhooks.create_event_type('order.completed')")
        conn.execute("SELECT webhooks.create_webhook('h', 'https://e.example', '[{\"event_type\": \"*\"}]')")
    publisher = login_role(server, db, "webhooks_publisher")
    with psycopg.connect(publisher, autocommit=True) as conn:
        event_id = conn.execute("SELECT webhooks.publish('order.completed', '{\"n\": 1}')").fetchone()
        assert event_id is not None and isinstance(event_id[0], uuid.UUID)
        for forbidden in ("SELECT * FROM webhooks.captures", "SELECT * FROM webhooks.list_webhooks()",
                          "SELECT webhooks.create_event_type('x.y')", "SELECT * FROM webhooks.claim()",
                          "SELECT webhooks.send_test('00000000-0000-0000-0000-000000000000')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)
    outsider = login_role(server, db)
    with psycopg.connect(outsider, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT webhooks.publish('order.completed', '{}')")
    admin = login_role(server, db, "webhooks_admin")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT webhooks.publish('order.completed', '{\"n\": 2}')")
    with psycopg.connect(db, autocommit=True) as conn:
        bodies = [r[0] for r in conn.execute("SELECT body FROM webhooks.claim(10) ORDER BY delivery_id")]
    assert bodies[0].startswith(f'{{"id":"{event_id[0]}","type":"order.completed",')
    assert [b.split('"data":')[1].split(",")[0] for b in bodies] == ['{"n":1}', '{"n":2}']


def test_publish_in_a_loop_is_one_notification(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT webhooks.create_event_type('tick.tock')")
        conn.execute("SELECT webhooks.create_webhook('h', 'https://e.example', '[{\"event_type\": \"tick.*\"}]')")
    with psycopg.connect(db, autocommit=True) as listener, psycopg.connect(db) as writer:
        listener.execute("LISTEN webhooks")
        listener.execute("SELECT webhooks.next_due_in()")  # a waiting runner: writers notify it
        writer.execute("SELECT webhooks.publish('tick.tock', jsonb_build_object('n', g))"
                       " FROM generate_series(1, 500) g")
        writer.commit()
        notes = list(listener.notifies(timeout=1.0))
    assert len(notes) == 1


async def test_webhooks_test_wait_prints_status_latency_and_response(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
        conn.execute("SELECT webhooks.create_event_type('order.completed')")
    async with receiver([Reply(201, "created by the dev server")]) as rx:
        hook = create_webhook(db, rx.url, secret=SECRET)
        async with running(runner_config(db)):
            plain = await asyncio.to_thread(
                CliRunner().invoke, main,
                ["webhooks", "test", str(hook["id"]), "--dsn", db, "--wait", "--timeout", "20"])
            typed = await asyncio.to_thread(
                CliRunner().invoke, main, ["webhooks", "test", str(hook["id"]), "--dsn", db, "--wait",
                                           "--event-type", "order.completed", "--data", '{"orderId": "ord_1"}'])
    assert plain.exit_code == 0, plain.output
    assert "attempt 1: 201 in " in plain.output and "response: created by the dev server" in plain.output
    assert typed.exit_code == 0, typed.output
    assert [r.payload.get("type") for r in rx.requests] == [None, "order.completed"]
    assert rx.requests[1].payload["data"] == {"orderId": "ord_1"}


def test_webhooks_test_wait_gives_up_without_a_runner(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    hook = create_webhook(db, "https://e.example/hook", secret=SECRET)
    result = CliRunner().invoke(main, ["webhooks", "test", str(hook["id"]), "--dsn", db, "--wait", "--timeout", "0.5"])
    assert result.exit_code != 0 and "is a runner running?" in result.output


async def test_listen_forwards_verified_requests_raw_and_answers_with_the_dev_server(db: str) -> None:
    dev = await ScriptedReceiver([Reply(202, "dev handled it")]).start()
    out = io.StringIO()
    rx = await Receiver([SECRET], out=out, forward_to=dev.url.replace("http://", "")).start()
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            body = '{"id":"e1","type":"order.completed","timestamp":"2025-01-01T00:00:00.000Z","data":{"a":1}}'
            headers = conn.execute("SELECT webhooks._sign_headers('e1', extract(epoch FROM now())::bigint, %s, %s)",
                                   (body, [SECRET])).fetchone()[0]
        async with httpx.AsyncClient() as client:
            good = await client.post(f"http://127.0.0.1:{rx.port}/hook", content=body.encode(),
                                     headers={**headers, "Content-Type": "application/json", "X-Custom": "kept"})
            forged = await client.post(f"http://127.0.0.1:{rx.port}/hook", content=body.encode() + b" ",
                                       headers={**headers, "Content-Type": "application/json"})
    finally:
        await rx.stop()
        await dev.stop()
    assert (good.status_code, good.text) == (202, "dev handled it")
    assert forged.status_code == 401
    assert len(dev.requests) == 1, "a request that does not verify is not forwarded"
    arrived = dev.requests[0]
    assert arrived.body == body.encode()
    assert arrived.headers["webhook-signature"] == headers["webhook-signature"]
    assert arrived.headers["X-Custom"] == "kept"
    assert f"forwarded to {dev.url}: 202 dev handled it" in out.getvalue()
    assert "order.completed" in out.getvalue()


async def test_listen_forward_to_an_absent_server_answers_502() -> None:
    out = io.StringIO()
    # Port 9 (discard) is not served here: nothing answers.
    rx = await Receiver([], out=out, forward_to="127.0.0.1:9/hook").start()
    try:
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"http://127.0.0.1:{rx.port}/hook", content=b"{}")
    finally:
        await rx.stop()
    assert answer.status_code == 502
    assert "forwarded to http://127.0.0.1:9/hook: ConnectError" in out.getvalue()


@pytest.mark.parametrize("target", ["example.invalid:3000/hook", "http://10.0.0.1/x", "ftp://localhost/x"])
def test_forward_to_is_for_local_servers_only(target: str) -> None:
    with pytest.raises(ValueError):
        forward_url(target)
    result = CliRunner().invoke(main, ["listen", "--forward-to", target])
    assert result.exit_code == 2 and "--forward-to" in result.output


def test_forward_to_accepts_the_flux_cli_shorthand() -> None:
    assert forward_url("localhost:3000/webhooks/flux") == "http://localhost:3000/webhooks/flux"


def test_compact_bodies_for_row_changes_and_test_events(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
        hook = conn.execute("SELECT id FROM webhooks.create_webhook('h', 'https://e.example', %s)",
                            (Jsonb([{"table": "items"}]),)).fetchone()[0]
        conn.execute("INSERT INTO items VALUES (1, 'a, b: c')")
        conn.execute("SELECT webhooks.send_test(%s)", (hook,))
        conn.execute("SELECT webhooks.send_test(%s, event => 'UPDATE', \"table\" => 'items', record => %s,"
                     " old_record => %s)", (hook, Jsonb({"id": 1, "label": "x"}), Jsonb({"id": 1, "label": "y"})))
        bodies = {json.loads(r[0])["event"]: r[0] for r in conn.execute("SELECT body FROM webhooks.claim(10)")}
    assert set(bodies) == {"INSERT", "TEST", "UPDATE"}
    for body in bodies.values():
        assert body == json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False)
    assert '"record":{"id":1,"label":"a, b: c"}' in bodies["INSERT"]
    assert '"record":{"id":1,"label":"x"},"old_record":{"id":1,"label":"y"}' in bodies["UPDATE"]


def test_cli_creates_a_webhook_with_a_profile_and_a_retry_schedule(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    result = CliRunner().invoke(main, ["webhooks", "create", "t", "https://e.example/h", "--table", "items",
                                       "--profile", "truss", "--retry-schedule", "{1 minute,5 minutes}", "--dsn", db])
    assert result.exit_code == 0, result.output
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute("SELECT profile, retry_schedule::text, max_retries FROM webhooks.webhooks").fetchone()
    assert row == ("truss", '{00:01:00,00:05:00}', 2)
    bad = CliRunner().invoke(main, ["webhooks", "create", "u", "https://e.example/h", "--table", "items",
                                    "--profile", "stripe", "--dsn", db])
    assert bad.exit_code != 0 and "WH022" in bad.output
