"""The install through the migration tools users already run, each from its own registry:
psql, yoyo-migrations and Alembic (PyPI, test extras), dbmate (npm) and sqitch (Debian), the
last two installed by `make migration-tools`. After each, `pgwebhooks migrate` finds nothing to
do, the tool's second run changes nothing, and the schema captures and signs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import build_signer, empty_database, query, schema_shape
from psycopg.conninfo import conninfo_to_dict
from standardwebhooks.webhooks import Webhook

from conftest import Server
from pgwebhooks import migrations

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DBMATE = REPO / ".tools" / "node_modules" / ".bin" / "dbmate"


@pytest.fixture(scope="module")
def tools() -> dict[str, Path]:
    """dbmate and sqitch, installed through the project's own `make migration-tools` if missing
    (so a bare `pytest` or a matrix run that skipped `make test` gets them the same way)."""
    if not (DBMATE.exists() and shutil.which("sqitch")):
        proc = subprocess.run(["make", "-s", "-C", str(REPO), "migration-tools"], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"make migration-tools failed:\n{proc.stdout}\n{proc.stderr}"
    sqitch = shutil.which("sqitch")
    assert DBMATE.exists() and sqitch, "make migration-tools did not install dbmate and sqitch"
    return {"dbmate": DBMATE, "sqitch": Path(sqitch)}


@pytest.fixture(scope="module")
def signer(server: Server) -> str:
    return build_signer(server)


@pytest.fixture
def dsn(server: Server) -> Iterator[str]:
    with empty_database(server, "tool") as d:
        yield d


def url(dsn: str, scheme: str = "postgresql") -> str:
    p = conninfo_to_dict(dsn)
    return f"{scheme}://{p.get('user', 'postgres')}@{p['host']}:{p['port']}/{p['dbname']}"


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=180, cwd=cwd,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def pgwebhooks(*args: str | Path) -> str:
    return run(BIN / "pgwebhooks", *args)


def assert_installed_and_usable(dsn: str, signer: str) -> None:
    """Recorded as current (migrate has nothing to do) and working end to end."""
    assert migrations.migrate(dsn) == []
    assert "nothing to apply" in pgwebhooks("sql", "--signer", signer, "--pending", "--dsn", dsn)
    query(dsn, "CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY)")
    hook = query(dsn, "SELECT * FROM webhooks.create_webhook(name => 'h' || (SELECT count(*) FROM webhooks.webhooks),"
                      " url => 'https://example.com/h', events => '[{\"table\": \"items\"}]')")[0]
    query(dsn, "INSERT INTO items VALUES ((SELECT count(*) FROM items) + 1)")
    claimed = query(dsn, "SELECT * FROM webhooks.claim(10)")
    assert len(claimed) == 1
    Webhook(hook["secret"]).verify(claimed[0]["body"], claimed[0]["headers"])


def test_psql_single_transaction_on_error_stop(dsn: str, tmp_path: Path, signer: str) -> None:
    script = tmp_path / "pgwebhooks.sql"
    script.write_text(pgwebhooks("sql", "--signer", signer))
    for _ in range(2):  # the second run is a no-op, not an error
        run(shutil.which("psql") or "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", script, "-d", dsn)
    assert_installed_and_usable(dsn, signer)


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg"])
def test_yoyo_migrations(dsn: str, tmp_path: Path, scheme: str, signer: str) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_pgwebhooks.sql").write_text(pgwebhooks("sql", "--signer", signer))
    yoyo = [BIN / "yoyo", "apply", "--batch", "--no-config-file", "--database", url(dsn, scheme), folder]
    run(*yoyo)
    shape = schema_shape(dsn)
    # An upgrade as yoyo users would do it: the next release's script as a new migration file.
    (folder / "0002_pgwebhooks.sql").write_text(pgwebhooks("sql", "--signer", signer))
    run(*yoyo)
    assert schema_shape(dsn) == shape
    assert_installed_and_usable(dsn, signer)


ALEMBIC_REVISION = '''
"""pgwebhooks install"""
from alembic import op

from pgwebhooks import migrations

revision = "{rev}"
down_revision = {down!r}


def upgrade() -> None:
    op.execute(migrations.install_script({signer!r}))


def downgrade() -> None:
    pass
'''


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_alembic_op_execute(dsn: str, tmp_path: Path, driver: str, signer: str) -> None:
    run(BIN / "alembic", "init", "alembic", cwd=tmp_path)
    versions = tmp_path / "alembic" / "versions"
    (versions / "a1_pgwebhooks.py").write_text(ALEMBIC_REVISION.format(rev="a1", down=None, signer=signer))
    # A later revision (as the next release's upgrade would be) that also switches to pgcrypto.
    (versions / "a2_pgwebhooks.py").write_text(ALEMBIC_REVISION.format(rev="a2", down="a1", signer="pgcrypto"))
    env = {"PYTHONPATH": str(tmp_path)}
    sqlalchemy_url = url(dsn, f"postgresql+{driver}")
    ini = tmp_path / "alembic.ini"
    ini.write_text(ini.read_text().replace("driver://user:pass@localhost/dbname", sqlalchemy_url))
    run(BIN / "alembic", "upgrade", "a1", cwd=tmp_path, env=env)
    assert query(dsn, "SELECT webhooks.signer() AS s")[0]["s"] == signer
    run(BIN / "alembic", "upgrade", "head", cwd=tmp_path, env=env)
    assert query(dsn, "SELECT webhooks.signer() AS s")[0]["s"] == "pgcrypto"
    assert_installed_and_usable(dsn, "pgcrypto")


def test_dbmate(dsn: str, tmp_path: Path, signer: str, tools: dict[str, Path]) -> None:
    folder = tmp_path / "db" / "migrations"
    assert "wrote" in pgwebhooks("sql", "--signer", signer, "--format", "dbmate", "--out", folder)
    assert "already has" in pgwebhooks("sql", "--signer", signer, "--format", "dbmate", "--out", folder)
    (written,) = folder.glob("*.sql")
    assert written.read_text().startswith("-- migrate:up\n")
    dbmate = [tools["dbmate"], "--url", url(dsn, "postgres") + "?sslmode=disable", "--migrations-dir", folder,
              "--no-dump-schema"]
    run(*dbmate, "up")
    shape = schema_shape(dsn)
    # The next release's export lands as a newer file; on an up-to-date schema it changes nothing.
    newer = folder / ("99991231235959_" + written.name.split("_", 1)[1].replace(".sql", "_next.sql"))
    newer.write_text(written.read_text())
    run(*dbmate, "up")
    assert schema_shape(dsn) == shape
    assert "99991231235959" in run(*dbmate, "status")
    assert_installed_and_usable(dsn, signer)


def test_sqitch(dsn: str, tmp_path: Path, signer: str, tools: dict[str, Path]) -> None:
    sqitch = tools["sqitch"]
    env = {"HOME": str(tmp_path), "SQITCH_FULLNAME": "Test", "SQITCH_EMAIL": "test@example.invalid"}
    target = "db:pg://" + url(dsn).split("://", 1)[1]
    run(sqitch, "init", "app", "--engine", "pg", "--target", target, cwd=tmp_path, env=env)
    run(sqitch, "add", "pgwebhooks_0_1_0", "-n", "pgwebhooks 0.1.0", cwd=tmp_path, env=env)
    deploy = pgwebhooks("sql", "--signer", signer, "--format", "sqitch")
    (tmp_path / "deploy" / "pgwebhooks_0_1_0.sql").write_text(deploy)
    run(sqitch, "deploy", cwd=tmp_path, env=env)
    assert "pgwebhooks_0_1_0" in run(sqitch, "status", cwd=tmp_path, env=env)
    assert_installed_and_usable(dsn, signer)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM sqitch.changes").fetchone() == (1,)
