"""The chaos suite's own PostgreSQL: it is stopped, crashed and restarted, so it is never a shared one.

This overrides the session `server` fixture of tests/conftest.py (whose `db` fixture then makes
each scenario's database from our template), adds a login role in `webhooks_runner` for the
runners, and prints every scenario's tally at the end of the run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from scenario import REPORTS, RUNNER_ROLE

from pgwebhooks import migrations
from pgwebhooks.localpg import LocalPostgres

TEMPLATE_DB = "pgwebhooks_template"  # the name tests/conftest.py's `db` fixture copies


@dataclass
class ChaosServer:
    admin_dsn: str
    local: LocalPostgres

    def dsn_for(self, dbname: str, **overrides: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=dbname, **overrides)


@pytest.fixture(scope="session")
def server() -> Iterator[ChaosServer]:
    base = Path(tempfile.mkdtemp(prefix="pgwebhooks-chaos-"))
    os.chmod(base, 0o755)  # as root the server runs as `postgres`, who must reach its data
    local = LocalPostgres(base / "pgdata", settings={"max_connections": "300"}).start()
    try:
        srv = ChaosServer(local.dsn, local)
        with psycopg.connect(srv.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
        migrations.migrate(srv.dsn_for(TEMPLATE_DB))
        with psycopg.connect(srv.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {RUNNER_ROLE} LOGIN IN ROLE webhooks_runner")
        yield srv
    finally:
        local.destroy()
        shutil.rmtree(base, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORTS:
        return
    terminalreporter.section("chaos: events committed vs received")
    for report in REPORTS:
        terminalreporter.write_line(report.line())
