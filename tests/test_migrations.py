"""The install: generated SQL in sync, migrate idempotent and safe under concurrency."""

from __future__ import annotations

import threading

import psycopg
import pytest

from conftest import Server
from pgwebhooks import migrations


def test_generated_plpython_sql_is_up_to_date() -> None:
    assert migrations.PLPYTHON_SQL.read_text() == migrations.render_plpython(), (
        "sql/functions/020_plpython.sql is stale: run `make sql`"
    )


def test_install_script_contains_every_migration_in_order() -> None:
    script = migrations.install_script()
    positions = [script.index(f"===== {m.name} =====") for m in [*migrations.migrations(), *migrations.functions()]]
    assert positions == sorted(positions)
    assert len(positions) >= 8


@pytest.fixture
def empty_db(server: Server):
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS migrate_test WITH (FORCE)")
        conn.execute("CREATE DATABASE migrate_test")
    yield server.dsn_for("migrate_test")
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS migrate_test WITH (FORCE)")


def test_migrate_twice_applies_once(empty_db: str) -> None:
    first = migrations.migrate(empty_db)
    assert first == [m.name for m in migrations.migrations()]
    assert migrations.migrate(empty_db) == []


def test_two_concurrent_migrations_apply_everything_once(empty_db: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrations.migrate(empty_db))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert sorted(len(r) for r in results) == [0, len(migrations.migrations())]


def test_changed_applied_migration_is_refused(empty_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    migrations.migrate(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("UPDATE webhooks._migrations SET checksum = 'tampered' WHERE name = '0001_tables.sql'")
    with pytest.raises(migrations.MigrationError, match=r"0001_tables\.sql was applied with checksum"):
        migrations.migrate(empty_db)


def test_install_script_applies_with_psql_semantics(empty_db: str) -> None:
    """`pgwebhooks sql` is one script a migration tool can run as is."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(migrations.install_script().encode())
        count = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'webhooks'::regnamespace"
        ).fetchone()
    assert count is not None and count[0] > 20
