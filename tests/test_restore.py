"""Backup and restore: pg_dump as the database owner, pg_restore into a new database or a new
cluster, and the copy never sends a new event under an id the original used."""

from __future__ import annotations

import re
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import (
    create_webhook,
    database_copy,
    eventually,
    insert,
    libpq_env,
    pg_tool,
    query,
    receiver,
    runner_config,
    running,
)

from conftest import Server, dsn_params
from pgwebhooks import migrations, roles
from pgwebhooks.localpg import LocalPostgres

OWNER = "restore_test_owner"


def run(tool: Path, dsn: str, *args: str, stdin: str | None = None) -> None:
    proc = subprocess.run([str(tool), *args], input=stdin, capture_output=True, text=True,
                          env=libpq_env(dsn), timeout=120, check=False)
    assert proc.returncode == 0, f"{tool.name} {' '.join(args)}:\n{proc.stdout}{proc.stderr}"


@pytest.fixture
def owned_db(server: Server, db: str) -> str:
    """A database owned by a plain login role (no superuser), with a watched table of its own."""
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (OWNER,)).fetchone():
            conn.execute(f"CREATE ROLE {OWNER} LOGIN")
        conn.execute(f"ALTER DATABASE {dsn_params(db)['dbname']} OWNER TO {OWNER}")
    migrations.migrate(db)  # the owner's grants follow the database's owner
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id serial PRIMARY KEY, label text, qty int DEFAULT 0)")
        conn.execute(f"ALTER TABLE items OWNER TO {OWNER}")
    return db


def new_database(server: Server, owner: str = OWNER) -> str:
    name = "restored_" + uuid.uuid4().hex[:10]
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {owner}")
    return server.dsn_for(name)


def event(received: Any) -> tuple[str, Any]:
    payload = received.payload
    return payload["event"], payload["record"]


async def original_then_copy(server: Server, original: str, restore: Any) -> None:
    """Deliver from `original`, dump it with deliveries pending, go on delivering, restore the dump
    with `restore(dump_path) -> dsn`, write to the copy, deliver from it; compare the ids."""
    async with receiver() as rx:
        create_webhook(original, rx.url)
        async with running(runner_config(original)):
            insert(original, 5)
            assert len(await rx.wait_for(5, timeout=20)) == 5
        # Pending deliveries in the dump: 3 fanned out (leased, then handed back), 2 not yet.
        insert(original, 3)
        leases = query(original, "SELECT delivery_id, attempt FROM webhooks.claim()")
        assert len(leases) == 3
        query(original, "SELECT webhooks.release(%s::jsonb)", psycopg.types.json.Jsonb(leases))
        insert(original, 2)
        with tempfile.TemporaryDirectory() as tmp:
            dump = Path(tmp) / "original.dump"
            run(pg_tool(server, "pg_dump"), server.dsn_for(dsn_params(original)["dbname"], user=OWNER),
                "--format=custom", "--file", str(dump))
            # The original goes on: everything in the dump and 4 new changes are sent.
            async with running(runner_config(original)):
                insert(original, 4)
                assert len(await rx.wait_for(14, timeout=20)) == 14
            sent = {r.headers["webhook-id"]: event(r) for r in rx.requests}
            assert len(sent) == 14
            copy = restore(dump)

        # The copy is written to before it first claims anything, then delivers what it owes.
        with psycopg.connect(copy, autocommit=True) as conn:
            conn.execute("INSERT INTO items (label) SELECT 'copy ' || g FROM generate_series(1, 4) g")
        rx.requests.clear()
        async with running(runner_config(copy)):
            assert len(await rx.wait_for(9, timeout=20)) == 9
            assert await eventually(lambda: query(copy, "SELECT count(*) AS n FROM webhooks.deliveries"
                                                        " WHERE status <> 'delivered'")[0]["n"] == 0, 10)
    copied = [(r.headers["webhook-id"], event(r)) for r in rx.requests]
    reused = {uid for uid, _ in copied if uid in sent}
    # Only the 3 deliveries fanned out before the dump keep their ids, and they are the same events.
    assert len(reused) == 3
    assert all(sent[uid] == ev for uid, ev in copied if uid in sent)
    assert {ev[1]["label"] for uid, ev in copied if uid not in sent} == {
        "item 1", "item 2", "copy 1", "copy 2", "copy 3", "copy 4"}


async def test_restore_into_a_new_database_never_reuses_an_event_id(server: Server, owned_db: str) -> None:
    def restore(dump: Path) -> str:
        copy = new_database(server)
        run(pg_tool(server, "pg_restore"), server.admin_dsn, "--exit-on-error",
            "--dbname", dsn_params(copy)["dbname"], str(dump))
        return copy

    await original_then_copy(server, owned_db, restore)


@pytest.fixture
def second_cluster(server: Server) -> Iterator[tuple[LocalPostgres, Server]]:
    if server.local is None:
        pytest.skip("needs local server binaries for a second cluster")
    base = Path(tempfile.mkdtemp(prefix="pgwebhooks-cluster2-"))
    base.chmod(0o755)
    other = LocalPostgres(base / "pgdata", bindir=server.local.bindir).start()
    try:
        yield other, Server(other.dsn, other)
    finally:
        other.destroy()


def restore_into_new_cluster(server: Server, target: Server, dump: Path) -> str:
    """What the README says for a new cluster: your own roles (here the owner), then
    `pgwebhooks roles | psql`, then pg_restore into a new database; returns its DSN."""
    with psycopg.connect(target.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {OWNER} LOGIN")
    run(pg_tool(server, "psql"), target.admin_dsn, "-v", "ON_ERROR_STOP=1", "-q", stdin=roles.roles_sql())
    copy = new_database(target)
    run(pg_tool(server, "pg_restore"), target.admin_dsn, "--exit-on-error",
        "--dbname", dsn_params(copy)["dbname"], str(dump))
    return copy


async def test_restore_into_a_new_cluster_with_the_roles_one_liner(
        server: Server, owned_db: str, second_cluster: tuple[LocalPostgres, Server]) -> None:
    _, target = second_cluster

    await original_then_copy(server, owned_db, lambda dump: restore_into_new_cluster(server, target, dump))
    (copy,) = query(target.admin_dsn, "SELECT datname FROM pg_database WHERE datname LIKE 'restored_%%'")
    owners = ("SELECT proname, proowner::regrole::text AS owner FROM pg_proc"
              " WHERE proname LIKE '\\_capture%%' ORDER BY 1")
    assert query(target.dsn_for(copy["datname"]), owners) == query(owned_db, owners)
    assert {r["proname"]: r["owner"] for r in query(owned_db, owners)}["_capture_statement"] == "webhooks_capture"


def test_roles_sql_creates_the_roles_the_migrations_create() -> None:
    made = {name for m in migrations.migrations() for name in re.findall(r"CREATE ROLE (\w+) NOLOGIN", m.sql)}
    assert made == set(roles.ROLES)
    assert roles.roles_sql().count("CREATE ROLE") == len(made) == 5


def test_a_copy_changes_salt_once_and_the_original_never(server: Server, conn: psycopg.Connection) -> None:
    latest = "SELECT first_capture_id, salt FROM webhooks._salts ORDER BY first_capture_id DESC LIMIT 1"
    conn.execute("SELECT * FROM webhooks.claim()")  # settled already by the db fixture
    before = conn.execute(latest).fetchone()
    with psycopg.connect(conn.info.dsn, autocommit=True) as again:
        again.execute("SELECT * FROM webhooks.claim()")
    assert conn.execute(latest).fetchone() == before
    name = conn.info.dbname
    conn.close()
    with database_copy(server, name, "clone") as clone, psycopg.connect(clone, autocommit=True) as c:
        c.execute("SELECT * FROM webhooks.claim()")
        after = c.execute(latest).fetchone()
        assert after is not None and before is not None and after[1] != before[1]
        identity = c.execute("SELECT identity FROM webhooks._installation").fetchone()
        assert identity == c.execute("SELECT webhooks._database_identity()").fetchone()


def test_published_events_survive_a_restore_into_a_server_with_lower_transaction_ids(
        server: Server, owned_db: str, second_cluster: tuple[LocalPostgres, Server]) -> None:
    """A new server's transaction ids start low, below those the original stored with its events
    and cursors (041_cursors.sql): the copy still gives what the original had not, and what the
    copy publishes, each once, and nothing the original had given."""
    _, target = second_cluster
    given = "SELECT (body::jsonb -> 'data' ->> 'n')::int AS n FROM webhooks.claim(100) ORDER BY 1"
    with psycopg.connect(owned_db, autocommit=True) as conn:
        # A server that has run longer than the new one will have by the restore.
        conn.execute("DO $$ BEGIN FOR i IN 1..5000 LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$")
        conn.execute("SELECT webhooks.create_event_type('order.created')")
        conn.execute("SELECT webhooks.create_webhook('w', 'https://e.com/w', '[{\"event_type\": \"order.created\"}]')")
        for n in (1, 2):
            conn.execute("SELECT webhooks.publish('order.created', %s)", (psycopg.types.json.Jsonb({"n": n}),))
        assert [r[0] for r in conn.execute(given).fetchall()] == [1, 2]
        for n in (3, 4):
            conn.execute("SELECT webhooks.publish('order.created', %s)", (psycopg.types.json.Jsonb({"n": n}),))
        high = conn.execute("SELECT xid::text::bigint FROM webhooks.captures ORDER BY xid DESC LIMIT 1").fetchone()
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "original.dump"
        run(pg_tool(server, "pg_dump"), server.dsn_for(dsn_params(owned_db)["dbname"], user=OWNER),
            "--format=custom", "--file", str(dump))
        copy = restore_into_new_cluster(server, target, dump)
    with psycopg.connect(copy, autocommit=True) as conn:
        low = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        assert high is not None and low is not None and low[0] < high[0], "the new server's ids are not lower"
        conn.execute("SELECT webhooks.publish('order.created', '{\"n\": 5}')")  # before the copy's first claim
        assert [r[0] for r in conn.execute(given).fetchall()] == [3, 4, 5]
        conn.execute("SELECT webhooks.publish('order.created', '{\"n\": 6}')")
        assert [r[0] for r in conn.execute(given).fetchall()] == [6]
        assert conn.execute(given).fetchall() == []
