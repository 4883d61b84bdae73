"""Upgrades from release 0.1.0 (commit 18dd984), whose sql/ is frozen in tests/fixtures/release-0.1.0.

0.1.0 applied every file in sql/ as a run-once migration and recorded each by name and checksum.
HEAD's migrate must take such a database over while a runner delivers from it, lose nothing
pending or leased, and leave the same schema a fresh install builds (procrastinate's check: a
replayed history and a fresh schema must not drift).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import psycopg
from helpers import empty_database, install_0_1_0, query, schema_shape, wait_until
from psycopg.types.json import Jsonb
from receivers import Reply, ScriptedReceiver
from standardwebhooks.webhooks import Webhook

from conftest import Server
from pgwebhooks import migrations
from pgwebhooks.worker import Runner, RunnerConfig


def create_webhook(dsn: str, name: str, url: str) -> dict:
    return query(dsn, "SELECT * FROM webhooks.create_webhook(name => %s, url => %s, events => %s,"
                      " timeout_seconds => 1)", name, url, Jsonb([{"table": "items"}]))[0]


def insert(dsn: str, first: int, count: int, statements: int = 1) -> None:
    per = count // statements
    for s in range(statements):
        start = first + s * per
        query(dsn, "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(%s::int, %s::int) g",
              start, start + per - 1)


async def test_upgrade_from_0_1_0_while_a_runner_runs_delivers_everything(server: Server) -> None:
    rx = await ScriptedReceiver([Reply(200, delay=0.01)]).start()
    try:
        with empty_database(server, "upgrade") as dsn:
            install_0_1_0(dsn)
            query(dsn, "CREATE TABLE items (id int PRIMARY KEY, label text)")
            hooks = {path: create_webhook(dsn, path, f"http://127.0.0.1:{rx.port}/{path}") for path in ("a", "b")}
            insert(dsn, 1, 20)  # one statement, 20 rows
            insert(dsn, 21, 5, statements=5)  # five single-row statements
            # Leased under 0.1.0 and never reported, as by a runner that died before the upgrade.
            leased = query(dsn, "SELECT * FROM webhooks.claim(6, 1)")
            assert len(leased) == 6
            pending = query(dsn, "SELECT count(*) AS n FROM webhooks.deliveries WHERE status = 'pending'")[0]["n"]
            assert pending > 0

            runner = Runner(RunnerConfig(dsn=dsn, poll_interval=0.2, allowed_cidrs=("127.0.0.1/32",),
                                         lease_margin_seconds=1, shutdown_grace=5.0))
            task = asyncio.create_task(runner.run())
            try:
                await rx.wait_for(5, timeout=30)  # the runner is delivering while the schema changes
                await asyncio.to_thread(migrations.migrate, dsn)
                recorded = query(dsn, "SELECT name FROM webhooks._migrations")
                assert {"001_schema.sql", "0001_tables.sql"} <= {r["name"] for r in recorded}
                assert query(dsn, "SELECT webhooks.signer() AS s")[0]["s"] == "plpython"
                insert(dsn, 26, 5)  # captured by HEAD's triggers
                expected = 30 * 2
                done = await asyncio.to_thread(
                    wait_until, lambda: len({(r.path, r.headers["webhook-id"]) for r in rx.requests}) >= expected, 60)
                assert done, f"{len({(r.path, r.headers['webhook-id']) for r in rx.requests})} of {expected} arrived"
                assert await asyncio.to_thread(wait_until, lambda: query(
                    dsn, "SELECT count(*) AS n FROM webhooks.deliveries WHERE status <> 'delivered'")[0]["n"] == 0, 30)
            finally:
                runner.request_stop()
                await asyncio.wait_for(task, timeout=30)
    finally:
        await rx.stop()
    per_hook = Counter(r.path for r in {(r.path, r.headers["webhook-id"]): r for r in rx.requests}.values())
    assert per_hook == {"/a": 30, "/b": 30}
    for r in rx.requests:  # signed with the secrets 0.1.0 generated, before and after the upgrade
        record = Webhook(hooks[r.path.strip("/")]["secret"]).verify(r.body, dict(r.headers))["record"]
        assert 1 <= record["id"] <= 30


def test_upgraded_0_1_0_and_fresh_install_have_the_same_schema(server: Server) -> None:
    with empty_database(server, "fresh") as fresh, empty_database(server, "upgraded") as upgraded:
        migrations.migrate(fresh)
        install_0_1_0(upgraded)
        migrations.migrate(upgraded)
        a, b = schema_shape(fresh), schema_shape(upgraded)
        assert len(a["functions"]) > 20 and len(a["columns"]) > 50 and len(a["constraints"]) > 20
        for kind in a:
            assert sorted(set(a[kind]) ^ set(b[kind])) == [], kind
        assert migrations.migrate(upgraded) == []


def test_upgraded_0_1_0_switched_to_pgcrypto_matches_a_fresh_pgcrypto_install(server: Server) -> None:
    with empty_database(server, "switch") as dsn, empty_database(server, "freshpgc") as fresh:
        install_0_1_0(dsn)
        migrations.migrate(dsn, signer="pgcrypto")
        assert query(dsn, "SELECT webhooks.signer() AS s")[0]["s"] == "pgcrypto"
        migrations.migrate(fresh, signer="pgcrypto")
        assert schema_shape(dsn) == schema_shape(fresh)


def test_printed_script_upgrades_0_1_0_too(server: Server) -> None:
    """The psql route: `pgwebhooks sql` run over a 0.1.0 install takes it over the same way."""
    with empty_database(server, "fresh") as fresh, empty_database(server, "scripted") as scripted:
        migrations.migrate(fresh)
        install_0_1_0(scripted)
        with psycopg.connect(scripted) as conn:
            conn.execute(migrations.install_script().encode())
            conn.commit()
        assert schema_shape(scripted) == schema_shape(fresh)
        assert "nothing to apply" in migrations.pending_script(scripted)
