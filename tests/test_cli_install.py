"""`pgwebhooks sql`, `migrate` and `demo`: installing the schema, and errors that say what to run."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
from click.testing import CliRunner
from helpers import empty_database, invoke

from conftest import Server
from pgwebhooks import migrations
from pgwebhooks.cli import common, main


def test_sql_prints_the_install_script() -> None:
    code, out = invoke("sql")
    assert code == 0
    assert out == migrations.install_script()


def test_migrate_reports_up_to_date_on_an_installed_database(db: str) -> None:
    code, out = invoke("migrate", "--dsn", db)
    assert code == 0 and "up to date" in out


def test_demo_runs_from_a_checkout_the_postgres_user_cannot_enter(tmp_path: Path) -> None:
    # Like root's home or a `mktemp -d` folder: mode 0700, so as root the server's OS user
    # (postgres) can neither use it as its working directory nor hold its data under it.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    before = set(Path(tempfile.gettempdir()).glob("pgwebhooks-demo-*"))
    proc = subprocess.run([sys.executable, "-m", "pgwebhooks.demo"], cwd=private, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "5 events received, 5 with both signatures verified" in proc.stdout
    assert set(Path(tempfile.gettempdir()).glob("pgwebhooks-demo-*")) == before  # cleaned up


def test_a_missing_schema_says_to_migrate(server: Server) -> None:
    with empty_database(server, "noschema") as dsn:
        result = CliRunner().invoke(main, ["webhooks", "list", "--dsn", dsn])
    assert result.exit_code == 1 and "run `pgwebhooks migrate`" in result.output, result.output


def test_the_pg16_role_grant_error_names_the_grant_to_run() -> None:
    exc = psycopg.errors.InsufficientPrivilege('permission denied to grant role "webhooks_capture"')
    hint = common.hint_for(exc)
    assert hint is not None and "GRANT webhooks_capture TO CURRENT_USER WITH ADMIN OPTION" in hint
