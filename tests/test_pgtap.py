"""The pgTAP suites in tests/sql, each run with pg_prove against a fresh database."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import dsn_params

SQL_TESTS = sorted((Path(__file__).parent / "sql").glob("*.sql"))


@pytest.mark.parametrize("path", SQL_TESTS, ids=[p.stem for p in SQL_TESTS])
def test_pgtap(path: Path, db: str) -> None:
    pg_prove = shutil.which("pg_prove")
    assert pg_prove, "pg_prove is missing: install libtap-parser-sourcehandler-pgtap-perl (make deps)"
    params = dsn_params(db)
    env = {
        **os.environ,
        "PGHOST": params.get("host", "127.0.0.1"),
        "PGPORT": str(params.get("port", "5432")),
        "PGUSER": params.get("user", "postgres"),
        "PGDATABASE": params["dbname"],
    }
    if "password" in params:
        env["PGPASSWORD"] = params["password"]
    proc = subprocess.run(
        [pg_prove, "--verbose", "--failures", str(path)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
