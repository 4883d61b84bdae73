"""The SQL behind the dashboard and API: the delivery log, re-rendered requests, API tokens, roles."""

from __future__ import annotations

import hashlib

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb


def _hook(conn: psycopg.Connection, name: str, events: list, **extra: object) -> str:
    row = conn.execute(
        "SELECT id FROM webhooks.create_webhook(name => %s, url => 'https://example.com/h', events => %s,"
        " secret_headers => %s)",
        (name, Jsonb(events), Jsonb(extra.get("secret_headers", {}))),
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_delivery_log_names_published_events_by_type_and_filters(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
    conn.execute("SELECT webhooks.create_event_type('order.created', 'an order')")
    hook = _hook(conn, "log", [{"table": "items"}, {"event_type": "order.*"}])
    conn.execute("INSERT INTO items VALUES (1, 'a')")
    conn.execute("SELECT webhooks.publish('order.created', '{\"n\": 1}')")
    conn.execute("SELECT count(*) FROM webhooks.claim(10, 30)")  # fan out into deliveries
    rows = conn.execute("SELECT event, status FROM webhooks.delivery_log(%s::uuid)", (hook,)).fetchall()
    assert sorted(r[0] for r in rows) == ["INSERT", "order.created"]
    assert "EVENT" not in {r[0] for r in rows}
    only = conn.execute("SELECT event FROM webhooks.delivery_log(%s::uuid, only_event => 'order.created')",
                        (hook,)).fetchall()
    assert only == [("order.created",)]
    assert conn.execute("SELECT count(*) FROM webhooks.delivery_log(%s::uuid, only_status => 'failed')",
                        (hook,)).fetchone() == (0,)
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT * FROM webhooks.delivery_log(%s::uuid, only_status => %s)",
                     (hook, "x'); DROP TABLE items; --"))
    assert err.value.sqlstate == "WH040"
    assert "DROP TABLE" in str(err.value)  # the message names the value it refused


def test_delivery_request_masks_secret_headers_and_signatures(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
    hook = _hook(conn, "req", [{"table": "items"}], secret_headers={"Authorization": "Bearer topsecret"})
    conn.execute("INSERT INTO items VALUES (1, '<script>alert(1)</script>')")
    claimed = conn.execute("SELECT delivery_id, body, headers FROM webhooks.claim(10, 30)").fetchall()
    assert len(claimed) == 1
    delivery_id, body, sent_headers = claimed[0]
    webhook_id, url, shown_body, shown = conn.execute(
        "SELECT * FROM webhooks.delivery_request(%s)", (delivery_id,)).fetchone()
    assert str(webhook_id) == hook
    assert url == "https://example.com/h"
    assert shown_body == body  # byte-identical to what claim() handed the runner
    assert "topsecret" not in str(shown)
    assert shown["Authorization"] == "[secret]"
    assert set(shown) == set(sent_headers)
    assert shown["webhook-id"] == sent_headers["webhook-id"]
    assert all("v1," not in v for v in shown.values())


def test_tokens_are_stored_as_hashes_and_map_to_roles(conn: psycopg.Connection) -> None:
    admin = conn.execute("SELECT * FROM webhooks.create_api_token('ops', 'admin')").fetchone()
    read = conn.execute("SELECT * FROM webhooks.create_api_token('viewer')").fetchone()
    assert admin is not None and read is not None
    token = admin[3]
    assert token.startswith("pgwh_") and len(token) == 69
    stored = conn.execute("SELECT token_sha256 FROM webhooks.api_tokens WHERE id = %s", (admin[0],)).fetchone()
    assert stored == (hashlib.sha256(token.encode()).digest(),)
    dump = conn.execute("SELECT string_agg(t::text, ' ') FROM webhooks.api_tokens t").fetchone()
    assert token not in dump[0] and read[3] not in dump[0]
    assert conn.execute("SELECT webhooks.authenticate_api_token(%s)", (token,)).fetchone() == ("webhooks_admin",)
    assert conn.execute("SELECT webhooks.authenticate_api_token(%s)", (read[3],)).fetchone() == ("webhooks_viewer",)
    assert conn.execute("SELECT webhooks.authenticate_api_token(%s)", (token + "x",)).fetchone() == (None,)
    conn.execute("SELECT webhooks.revoke_api_token(%s)", (admin[0],))
    assert conn.execute("SELECT webhooks.authenticate_api_token(%s)", (token,)).fetchone() == (None,)
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT webhooks.create_api_token('x', 'superuser')")
    assert err.value.sqlstate == "WH040"
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT webhooks.revoke_api_token(gen_random_uuid())")
    assert err.value.sqlstate == "WH042"


def test_viewer_reads_but_cannot_change_or_mint_tokens(conn: psycopg.Connection) -> None:
    hook = _hook(conn, "ro", [{"event_type": "*"}])
    with conn.transaction():
        conn.execute("SET LOCAL ROLE webhooks_viewer")
        assert conn.execute("SELECT count(*) FROM webhooks.list_webhooks()").fetchone() == (1,)
        conn.execute("SELECT * FROM webhooks.delivery_log(%s::uuid)", (hook,))
        conn.execute("SELECT * FROM webhooks.delivery_histogram()")
    for call in ("SELECT webhooks.pause_webhook(%s::uuid)", "SELECT webhooks.delete_webhook(%s::uuid)",
                 "SELECT webhooks.replay_failed(%s::uuid)", "SELECT webhooks.create_api_token(%s, 'admin')"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("SET LOCAL ROLE webhooks_viewer")
            conn.execute(call, (hook,))
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM webhooks.webhook_status")
        assert cur.fetchone()["name"] == "ro"


def test_get_deliveries_lists_published_events_by_type(conn: psycopg.Connection) -> None:
    conn.execute("SELECT webhooks.create_event_type('invoice.paid', 'paid')")
    hook = _hook(conn, "events", [{"event_type": "invoice.*"}])
    conn.execute("SELECT webhooks.publish('invoice.paid', '{}')")
    queued = conn.execute("SELECT event, status FROM webhooks.get_deliveries(%s::uuid)", (hook,)).fetchall()
    assert queued == [("invoice.paid", "queued")]
    conn.execute("SELECT count(*) FROM webhooks.claim(10, 30)")
    leased = conn.execute("SELECT event, status FROM webhooks.get_deliveries(%s::uuid)", (hook,)).fetchall()
    assert leased == [("invoice.paid", "leased")]


def test_runner_role_reads_the_backlog_and_nothing_more(conn: psycopg.Connection) -> None:
    _hook(conn, "backlog", [{"event_type": "*"}])
    with conn.transaction():
        conn.execute("SET LOCAL ROLE webhooks_runner")
        rows = conn.execute("SELECT name, state, pending, circuit FROM webhooks.runner_backlog()").fetchall()
        assert rows == [("backlog", "healthy", 0, "closed")]
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("SET LOCAL ROLE webhooks_runner")
        conn.execute("SELECT * FROM webhooks.delivery_log(gen_random_uuid())")


def test_log_and_request_need_the_right_to_read_the_watched_table(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE payroll (id int PRIMARY KEY, salary int)")
    hook = _hook(conn, "payroll", [{"table": "payroll"}])
    conn.execute("INSERT INTO payroll VALUES (1, 99000)")
    (delivery,) = conn.execute("SELECT delivery_id FROM webhooks.claim(10, 30)").fetchone()
    for role in ("webhooks_admin", "webhooks_viewer"):  # neither may SELECT payroll
        for call in ("SELECT * FROM webhooks.delivery_log(%s::uuid)", "SELECT * FROM webhooks.delivery_request(%s)"):
            with pytest.raises(psycopg.Error) as err, conn.transaction():
                conn.execute(f"SET LOCAL ROLE {role}")
                conn.execute(call, (hook if "log" in call else delivery,))
            assert err.value.sqlstate == "WH014", (role, call, err.value)
    conn.execute("GRANT SELECT ON payroll TO webhooks_viewer")
    with conn.transaction():
        conn.execute("SET LOCAL ROLE webhooks_viewer")
        body = conn.execute("SELECT body FROM webhooks.delivery_request(%s)", (delivery,)).fetchone()
        assert body is not None and '"salary":99000' in body[0]
