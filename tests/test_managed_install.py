"""Managed PostgreSQL: installed and run by a database owner with CREATEROLE who is no superuser.

That is what RDS, Cloud SQL, Azure Flexible Server and Supabase hand out. plpython3u cannot be
created there, so the install picks the pgcrypto signer by itself; the signatures it produces
must verify with the standardwebhooks library at a real receiver.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from helpers import query, wait_until
from psycopg.conninfo import make_conninfo
from receivers import ScriptedReceiver
from standardwebhooks.webhooks import Webhook

from conftest import Server
from pgwebhooks import migrations
from pgwebhooks.worker import Runner, RunnerConfig


@pytest.fixture
def owner_db(server: Server) -> Iterator[tuple[str, str]]:
    """(installer DSN, superuser DSN) of a new database owned by a CREATEROLE non-superuser."""
    suffix = uuid.uuid4().hex[:8]
    owner, dbname = f"dbowner_{suffix}", f"managed_{suffix}"
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {owner} LOGIN CREATEROLE NOSUPERUSER")
        conn.execute(f"CREATE DATABASE {dbname} OWNER {owner}")
        conn.execute(f"REVOKE CREATE ON DATABASE {dbname} FROM PUBLIC")
        if conn.info.server_version >= 160000:
            # From 16 a CREATEROLE login may grant only roles it holds WITH ADMIN, which it gets by
            # creating them. Here the superuser who built the template created the three roles
            # first; give the owner exactly what creating them would have given it.
            conn.execute(f"GRANT webhooks_admin, webhooks_runner, webhooks_capture TO {owner}"
                         " WITH ADMIN TRUE, INHERIT FALSE, SET FALSE")
    try:
        yield server.dsn_for(dbname, user=owner), server.dsn_for(dbname)
    finally:
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
            for role in (f"runner_{suffix}", f"writer_{suffix}", owner):  # they own nothing elsewhere
                conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_installer_is_not_a_superuser(owner_db: tuple[str, str]) -> None:
    installer, _ = owner_db
    row = query(installer, "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")[0]
    assert row == {"rolsuper": False, "rolcreaterole": True}
    with pytest.raises(psycopg.Error):  # not permitted, or not even there in this build
        query(installer, "CREATE EXTENSION plpython3u")


async def test_database_owner_installs_with_pgcrypto_and_delivers_verified_signatures(
    owner_db: tuple[str, str],
) -> None:
    installer, _ = owner_db
    applied = migrations.migrate(installer)  # no --signer: plpython3u is refused, pgcrypto chosen
    assert "0001_tables.sql" in applied
    assert migrations.migrate(installer) == []  # re-applying the functions needs no superuser either
    assert query(installer, "SELECT webhooks.signer() AS s")[0]["s"] == "pgcrypto"
    owners = query(installer, "SELECT proname, proowner::regrole::text AS owner FROM pg_proc"
                              " WHERE proname IN ('_capture_row', '_capture_statement') ORDER BY 1")
    assert [r["owner"] for r in owners] == ["webhooks_capture", "webhooks_capture"]

    suffix = installer.split("dbowner_")[1][:8]
    runner_role, writer_role = f"runner_{suffix}", f"writer_{suffix}"
    query(installer, f"CREATE ROLE {runner_role} LOGIN IN ROLE webhooks_runner")
    query(installer, f"CREATE ROLE {writer_role} LOGIN")
    query(installer, "CREATE TABLE orders (id int PRIMARY KEY, item text)")
    query(installer, f"GRANT INSERT ON orders TO {writer_role}")

    rx = await ScriptedReceiver().start()
    try:
        hook = query(installer, "SELECT * FROM webhooks.create_webhook(name => 'orders', url => %s,"
                                " events => '[{\"table\": \"orders\"}]')", rx.url)[0]
        assert hook["secret"].startswith("whsec_")
        query(make_conninfo(installer, user=writer_role), "INSERT INTO orders VALUES (1, 'book'), (2, 'pen')")
        runner = Runner(RunnerConfig(dsn=make_conninfo(installer, user=runner_role), poll_interval=0.2,
                                     allowed_cidrs=("127.0.0.1/32",), shutdown_grace=5.0))
        task = asyncio.create_task(runner.run())
        try:
            received = await rx.wait_for(2, timeout=60)
        finally:
            runner.request_stop()
            await asyncio.wait_for(task, timeout=30)
    finally:
        await rx.stop()
    assert len(received) == 2
    verifier = Webhook(hook["secret"])
    assert sorted(verifier.verify(r.body, dict(r.headers))["record"]["id"] for r in received) == [1, 2]
    assert wait_until(lambda: query(installer, "SELECT count(*) AS n FROM webhooks.deliveries"
                                               " WHERE status = 'delivered'")[0]["n"] == 2, timeout=10)


def test_printed_script_installs_as_the_owner_too(owner_db: tuple[str, str]) -> None:
    """The psql route on a managed server: `pgwebhooks sql --signer pgcrypto | psql -1`."""
    installer, _ = owner_db
    with psycopg.connect(installer) as conn:
        conn.execute(migrations.install_script("pgcrypto").encode())
        conn.commit()
    assert query(installer, "SELECT webhooks.signer() AS s")[0]["s"] == "pgcrypto"
    assert query(installer, "SELECT webhooks._generate_secret() ~ '^whsec_' AS ok")[0]["ok"]
