"""The install: generated SQL in sync, migrate and the printed script idempotent, adopting and safe
under concurrency."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from pathlib import Path

import psycopg
import pytest
from helpers import build_signer, schema_shape

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


@pytest.fixture(scope="module")
def signer(server: Server) -> str:
    """The signer this server build allows (see installs.build_signer)."""
    return build_signer(server)


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


def test_install_script_applies_with_psql_semantics(empty_db: str, signer: str) -> None:
    """`pgwebhooks sql` is one script a migration tool can run as is."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(migrations.install_script(signer).encode())
        count = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'webhooks'::regnamespace"
        ).fetchone()
    assert count is not None and count[0] > 20


# -- the printed script as users apply it ------------------------------------------------------

PSQL = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"


def psql_file(dsn: str, script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"script-{len(list(tmp_path.iterdir()))}.sql"
    path.write_text(script)
    return subprocess.run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(path), "-d", dsn],
                          capture_output=True, text=True, timeout=120)


def records(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return migrations.recorded(conn)


def test_printed_script_applied_twice_with_psql_changes_nothing(empty_db: str, tmp_path: Path, signer: str) -> None:
    first = psql_file(empty_db, migrations.install_script(signer), tmp_path)
    assert first.returncode == 0, first.stderr
    shape, recorded_once = schema_shape(empty_db), records(empty_db)
    assert set(recorded_once) == {m.name for m in migrations.migrations()} | {migrations.FUNCTIONS_RECORD}
    second = psql_file(empty_db, migrations.install_script(signer), tmp_path)
    assert second.returncode == 0, second.stderr
    assert schema_shape(empty_db) == shape
    assert records(empty_db) == recorded_once
    assert migrations.migrate(empty_db) == []  # and migrate agrees there is nothing to do


def test_printed_script_refuses_a_changed_migration_in_one_line(empty_db: str, tmp_path: Path, signer: str) -> None:
    assert psql_file(empty_db, migrations.install_script(signer), tmp_path).returncode == 0
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("UPDATE webhooks._migrations SET checksum = 'tampered' WHERE name = '0001_tables.sql'")
    proc = psql_file(empty_db, migrations.install_script(signer), tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "ERROR:" in line]
    assert len(errors) == 1 and "0001_tables.sql was applied with checksum tampered" in errors[0], proc.stderr


def test_migrate_adopts_an_install_made_from_the_bare_files(empty_db: str, tmp_path: Path, signer: str) -> None:
    """A tool that applied sql/migrations/*.sql and sql/functions/*.sql itself, with no bookkeeping."""
    bare = "".join(m.sql for m in [*migrations.migrations(), *migrations.functions(signer)])
    assert psql_file(empty_db, bare, tmp_path).returncode == 0
    assert records(empty_db) == {}
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("""SELECT webhooks.create_webhook('kept', 'https://example.com/h', '[{"table": "t"}]')""")
    adopted = migrations.migrate(empty_db)
    assert "0001_tables.sql" in adopted
    assert set(records(empty_db)) >= {m.name for m in migrations.migrations()}
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM webhooks.webhooks").fetchone() == (1,)
    assert migrations.migrate(empty_db) == []


def test_pending_prints_only_what_the_database_lacks(empty_db: str, tmp_path: Path, signer: str) -> None:
    everything = migrations.pending_script(empty_db)
    assert all(f"===== {m.name} =====" in everything for m in migrations.migrations())
    assert psql_file(empty_db, everything, tmp_path).returncode == 0
    assert "nothing to apply" in migrations.pending_script(empty_db)
    # Functions changed since (an upgrade with no new migration): only the function files remain.
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("UPDATE webhooks._migrations SET checksum = 'older' WHERE name = %s",
                     (migrations.FUNCTIONS_RECORD,))
    upgrade = migrations.pending_script(empty_db)
    assert not any(f"===== {m.name} =====" in upgrade for m in migrations.migrations())
    assert all(f"===== {f.name} =====" in upgrade for f in migrations.functions(signer))
    assert psql_file(empty_db, upgrade, tmp_path).returncode == 0
    assert "nothing to apply" in migrations.pending_script(empty_db)


def test_pending_for_a_bare_install_adopts_instead_of_recreating(empty_db: str, tmp_path: Path, signer: str) -> None:
    bare = "".join(m.sql for m in [*migrations.migrations(), *migrations.functions(signer)])
    assert psql_file(empty_db, bare, tmp_path).returncode == 0
    pending = migrations.pending_script(empty_db)
    assert "===== 0001_tables.sql =====" not in pending
    assert psql_file(empty_db, pending, tmp_path).returncode == 0
    assert "0001_tables.sql" in records(empty_db)


def test_script_has_no_text_alembic_reads_as_a_bind_parameter() -> None:
    """SQLAlchemy's text() takes `:word` (not after a colon, word character or backslash) for a
    parameter, in comments and strings too: op.execute(script) would fail on it."""
    bind = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")
    for signer in migrations.SIGNERS:
        script = migrations.install_script(signer)
        assert [m.group(0) for m in bind.finditer(script)] == []


def test_migrate_reports_a_failing_file_by_name(empty_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = [*migrations.migrations(), migrations.Migration("9999_broken.sql", "SELECT no_such_function();")]
    monkeypatch.setattr(migrations, "migrations", lambda: broken)
    with pytest.raises(migrations.MigrationError, match=r"9999_broken\.sql.*no_such_function"):
        migrations.migrate(empty_db)
    with psycopg.connect(empty_db) as conn:  # all or nothing
        assert conn.execute("SELECT to_regnamespace('webhooks')").fetchone() == (None,)


def test_uninstall_drops_triggers_and_schema_and_keeps_roles(empty_db: str) -> None:
    from click.testing import CliRunner

    from pgwebhooks.cli import main

    migrations.migrate(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE watched (id int PRIMARY KEY)")
        conn.execute("""SELECT webhooks.create_webhook('w', 'https://example.com/h', '[{"table": "watched"}]')""")
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'watched'::regclass").fetchone()[0] > 0
    refused = CliRunner().invoke(main, ["uninstall", "--dsn", empty_db])
    assert refused.exit_code != 0 and "--yes" in refused.output
    result = CliRunner().invoke(main, ["uninstall", "--dsn", empty_db, "--yes"])
    assert result.exit_code == 0, result.output
    assert "1 table(s)" in result.output
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert conn.execute("SELECT to_regnamespace('webhooks')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'watched'::regclass").fetchone() == (0,)
        conn.execute("INSERT INTO watched VALUES (1)")  # the table works without pgwebhooks
        roles = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'webhooks\\_%'").fetchone()
        assert roles == (5,)  # admin, runner, capture, publisher, viewer
    assert migrations.migrate(empty_db) == [m.name for m in migrations.migrations()]  # and installs again


def test_cli_migrate_forces_and_reports_the_signer(empty_db: str) -> None:
    from click.testing import CliRunner

    from pgwebhooks.cli import main

    first = CliRunner().invoke(main, ["migrate", "--dsn", empty_db, "--signer", "pgcrypto"])
    assert first.exit_code == 0, first.output
    assert "applied" in first.output and "signer: pgcrypto" in first.output
    again = CliRunner().invoke(main, ["migrate", "--dsn", empty_db])
    assert again.exit_code == 0 and "schema is up to date" in again.output and "signer: pgcrypto" in again.output
    pending = CliRunner().invoke(main, ["sql", "--pending", "--dsn", empty_db])
    assert pending.exit_code == 0 and "up to date (pgcrypto signer); nothing to apply" in pending.output
    wrong = CliRunner().invoke(main, ["migrate", "--dsn", empty_db, "--signer", "rot13"])
    assert wrong.exit_code != 0 and "rot13" in wrong.output
