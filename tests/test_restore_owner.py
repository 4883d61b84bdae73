"""pg_restore --exit-on-error as the database's owner, who is no superuser (managed PostgreSQL).

The dump hands the capture functions to webhooks_capture (ALTER FUNCTION ... OWNER TO), which a
non-superuser may do only while webhooks_capture holds CREATE on the schema; the dump's grants
come at its very end. The README's one command before the restore gives it that for the length
of the restore, and the `migrate` after takes it back.
"""

from __future__ import annotations

import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import libpq_env, pg_tool, query
from psycopg.types.json import Jsonb

from conftest import Server, dsn_params
from pgwebhooks import migrations

BEFORE_RESTORE = "ALTER DEFAULT PRIVILEGES GRANT CREATE ON SCHEMAS TO webhooks_capture"
# A watched table's own capture function is named by the table's oid, which a restore changes.
OWNERS = ("SELECT regexp_replace(proname, '^_capture_table_[0-9]+$', '_capture_table_(oid)') AS proname,"
          " proowner::regrole::text AS owner FROM pg_proc"
          " WHERE pronamespace = 'webhooks'::regnamespace AND proname LIKE '\\_capture%%' ORDER BY 1")
# Each function and the tables whose triggers call it.
TABLE_FUNCTIONS = ("SELECT p.proname AS fn, array_agg(DISTINCT 'webhooks._capture_table_' || t.tgrelid) AS callers"
                   " FROM pg_proc p LEFT JOIN pg_trigger t ON t.tgfoid = p.oid"
                   " WHERE p.proname ~ '^_capture_table_[0-9]+$' GROUP BY p.proname ORDER BY 1")
SCHEMA_ACL = "SELECT nspacl::text[] AS acl FROM pg_namespace WHERE nspname = 'webhooks'"


@pytest.fixture
def owner(server: Server) -> Iterator[tuple[str, list[str]]]:
    """A CREATEROLE login that is no superuser, and the databases it owns (dropped afterwards)."""
    name = f"restorer_{uuid.uuid4().hex[:8]}"
    databases: list[str] = []
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN CREATEROLE NOSUPERUSER")
        if conn.info.server_version >= 160000:  # as tests/test_managed_install.py explains
            conn.execute(f"GRANT webhooks_admin, webhooks_runner, webhooks_capture TO {name}"
                         " WITH ADMIN TRUE, INHERIT FALSE, SET FALSE")
    try:
        yield name, databases
    finally:
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            for db in databases:
                conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            conn.execute(f"DROP OWNED BY {name}")
            conn.execute(f"DROP ROLE IF EXISTS {name}")


def owned_database(server: Server, owner: tuple[str, list[str]]) -> str:
    name = "owned_" + uuid.uuid4().hex[:10]
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {owner[0]}")
    owner[1].append(name)
    return server.dsn_for(name, user=owner[0])


def restore(server: Server, dump: Path, dsn: str) -> tuple[int, str]:
    proc = subprocess.run([str(pg_tool(server, "pg_restore")), "--exit-on-error", "--dbname",
                           dsn_params(dsn)["dbname"], str(dump)],
                          capture_output=True, text=True, env=libpq_env(dsn), timeout=120, check=False)
    return proc.returncode, proc.stderr


@pytest.fixture
def restored(server: Server, owner: tuple[str, list[str]]) -> tuple[str, str]:
    """(original, copy): an owner-installed database, and its dump restored by the owner as the
    README says (the one command, pg_restore --exit-on-error, migrate)."""
    original = owned_database(server, owner)
    migrations.migrate(original)  # as the owner: pgcrypto signer, capture functions given away
    with psycopg.connect(original, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, secret text)")
        conn.execute("SELECT webhooks.create_webhook('h', 'https://e.example/', %s)",
                     (Jsonb([{"table": "items", "exclude_columns": ["secret"]}]),))
        conn.execute("INSERT INTO items VALUES (1, 'early-secret')")  # captured before the dump, not yet sent
        # Another table first, so the copy's oids need not follow the original's order.
        conn.execute("CREATE TABLE tenants_rows (id int PRIMARY KEY, tenant int NOT NULL)")
        conn.execute("SELECT webhooks.create_webhook('tenant1', 'https://t1.example/', %s)",
                     (Jsonb([{"table": "tenants_rows", "where": "tenant = 1"}]),))
        # A watched table renamed, and a new table under its old name that nobody subscribed to.
        conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        conn.execute("SELECT webhooks.create_webhook('ledger', 'https://l.example/', %s)",
                     (Jsonb([{"table": "ledger"}]),))
        conn.execute("ALTER TABLE ledger RENAME TO ledger_2025")
        conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "app.dump"
        subprocess.run([str(pg_tool(server, "pg_dump")), "--format=custom", "--file", str(dump)],
                       env=libpq_env(original), check=True, capture_output=True, timeout=120)

        # Without the command: the failure the README warns about.
        plain = owned_database(server, owner)
        code, err = restore(server, dump, plain)
        assert code != 0 and "OWNER TO webhooks_capture" in err, err

        copy = owned_database(server, owner)
        with psycopg.connect(copy, autocommit=True) as conn:
            conn.execute(BEFORE_RESTORE)
        code, err = restore(server, dump, copy)
        assert code == 0, err
    migrations.migrate(copy)
    return original, copy


def test_the_owner_restores_with_exit_on_error_after_the_one_command(restored: tuple[str, str]) -> None:
    original, copy = restored
    assert query(copy, OWNERS) == query(original, OWNERS)
    # items is re-resolved to the copy's oid, and gets a function of its own. The renamed ledger
    # cannot be (its subscription names "ledger", now another table): its restored trigger keeps
    # the original's function, which finds TG_RELID is not its table and takes images read-only.
    own = {r["fn"]: r["callers"] for r in query(copy, TABLE_FUNCTIONS)}
    items = query(copy, "SELECT 'webhooks._capture_table_' || 'items'::regclass::oid AS fn")[0]["fn"]
    ledger = query(copy, "SELECT 'webhooks._capture_table_' || 'ledger_2025'::regclass::oid AS fn")[0]["fn"]
    assert own[items.removeprefix("webhooks.")] == [items] and len(own) == 2, own
    assert [ledger] in own.values() and ledger.removeprefix("webhooks.") not in own, own
    assert {r["owner"] for r in query(copy, OWNERS) if r["proname"] != "_capture_guarded"} == {"webhooks_capture"}
    # webhooks_capture holds USAGE only again, as in the original.
    assert set(query(copy, SCHEMA_ACL)[0]["acl"]) == set(query(original, SCHEMA_ACL)[0]["acl"])
    assert query(copy, "SELECT count(*) AS n FROM pg_default_acl") == [{"n": 0}]
    with psycopg.connect(copy, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (2, 'hidden')")
        bodies = [r[0] for r in conn.execute("SELECT body FROM webhooks.claim(10, 30)").fetchall()]
    assert any('"record":{"id":2' in b for b in bodies), bodies  # captured and sent from the copy


def test_exclude_columns_still_apply_in_a_restored_copy(restored: tuple[str, str]) -> None:
    _, copy = restored
    with psycopg.connect(copy, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (2, 'hidden')")
        bodies = [r[0] for r in conn.execute("SELECT body FROM webhooks.claim(10, 30)").fetchall()]
    assert not any("hidden" in b or "early-secret" in b for b in bodies), bodies
    assert any('"record":{"id":2' in b for b in bodies), bodies


def test_routed_filters_still_route_in_a_restored_copy(restored: tuple[str, str]) -> None:
    _, copy = restored
    with psycopg.connect(copy, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants_rows VALUES (1, 1), (2, 2)")
        rows = conn.execute("SELECT w.name, c.body FROM webhooks.claim(10, 30) c"
                            " JOIN webhooks.webhooks w ON w.id = c.webhook_id").fetchall()
    tenant_bodies = [body for name, body in rows if name == "tenant1"]
    assert len(tenant_bodies) == 1 and '"tenant":1' in tenant_bodies[0], rows


def test_a_table_that_took_a_watched_tables_old_name_is_not_watched_in_the_copy(restored: tuple[str, str]) -> None:
    _, copy = restored
    with psycopg.connect(copy, autocommit=True) as conn:
        conn.execute("INSERT INTO ledger VALUES (1, 'not subscribed')")
        conn.execute("INSERT INTO ledger_2025 VALUES (1, 'subscribed')")
        rows = conn.execute("SELECT w.name, c.body FROM webhooks.claim(20, 30) c"
                            " JOIN webhooks.webhooks w ON w.id = c.webhook_id").fetchall()
    ledger_bodies = [body for name, body in rows if name == "ledger"]
    assert not any("not subscribed" in b for b in ledger_bodies), rows
    assert any('"note":"subscribed"' in b for b in ledger_bodies), rows
