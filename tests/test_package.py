"""The wheel as a user gets it: built, installed into a fresh venv outside the repository, and used.

Nothing here imports the checkout's pgwebhooks for the install: the venv's own `pgwebhooks`
command installs the schema from the SQL inside the wheel, creates a webhook and delivers it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from helpers import empty_database, query, wait_until
from receivers import ScriptedReceiver
from standardwebhooks.webhooks import Webhook

from conftest import Server

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    assert REPO not in base.parents
    # Built from a copy of what the build reads: setuptools leaves a build/ directory in the
    # source tree, and a stale one there could slip files into the wheel that no longer exist.
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("runner", "sql", "plpython"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    wheels = list((base / "dist").glob("pgwebhooks-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    subprocess.run([str(env_dir / "bin" / "pip"), "install", "-q", str(wheels[0])],
                   check=True, capture_output=True, timeout=600)
    return env_dir


def cli(env_dir: Path, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run([str(env_dir / "bin" / "pgwebhooks"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=env_dir.parent, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_wheel_carries_its_sql_and_plpython(wheel_venv: Path) -> None:
    out = subprocess.run(
        [str(wheel_venv / "bin" / "python"), "-c",
         "import pgwebhooks, pgwebhooks.migrations as m; print(pgwebhooks.__file__);"
         " print(m.data_dir('sql')); print(len(m.migrations()), len(m.functions('pgcrypto')))"],
        capture_output=True, text=True, check=True, cwd=wheel_venv.parent,
    ).stdout.split()
    assert all(str(wheel_venv) in p for p in out[:2]), out
    assert int(out[2]) >= 1 and int(out[3]) >= 7
    script = cli(wheel_venv, "sql")
    assert "===== 0001_tables.sql =====" in script and "LANGUAGE plpython3u" in script
    assert "hmac(" in cli(wheel_venv, "sql", "--signer", "pgcrypto")


async def test_wheel_installs_the_schema_and_a_delivery_arrives(wheel_venv: Path, server: Server) -> None:
    rx = await ScriptedReceiver().start()
    try:
        with empty_database(server, "wheel") as dsn:
            out = cli(wheel_venv, "migrate", "--dsn", dsn)
            assert "applied" in out and "0001_tables.sql" in out, out
            assert "schema is up to date" in cli(wheel_venv, "migrate", "--dsn", dsn)
            query(dsn, "CREATE TABLE orders (id int PRIMARY KEY, item text)")
            hook = json.loads(cli(wheel_venv, "webhooks", "create", "--dsn", dsn, "orders-hook", rx.url,
                                  "--table", "orders", "--json"))
            query(dsn, "INSERT INTO orders VALUES (1, 'book'), (2, 'pen')")
            runner = subprocess.Popen(
                [str(wheel_venv / "bin" / "pgwebhooks"), "run", "--dsn", dsn, "--allow-cidr", "127.0.0.1/32",
                 "--poll-interval", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=wheel_venv.parent,
            )
            try:
                received = await rx.wait_for(2, timeout=60)
            finally:
                runner.send_signal(signal.SIGTERM)
                assert runner.wait(timeout=30) == 0
            assert len(received) == 2
            verifier = Webhook(hook["secret"])
            records = sorted(verifier.verify(r.body, dict(r.headers))["record"]["id"] for r in received)
            assert records == [1, 2]
            assert wait_until(lambda: query(dsn, "SELECT count(*) AS n FROM webhooks.deliveries"
                                                 " WHERE status = 'delivered'")[0]["n"] == 2, timeout=10)
    finally:
        await rx.stop()


def test_migrate_without_sql_fails_loudly(wheel_venv: Path, server: Server, tmp_path: Path) -> None:
    """A package missing its SQL must not report "up to date" and exit 0."""
    broken = tmp_path / "site"
    code = (
        "import shutil, sys, pgwebhooks, pathlib;"
        f"dst = pathlib.Path({str(broken)!r}) / 'pgwebhooks';"
        "shutil.copytree(pathlib.Path(pgwebhooks.__file__).parent, dst, ignore=shutil.ignore_patterns('sql'))"
    )
    subprocess.run([str(wheel_venv / "bin" / "python"), "-c", code], check=True)
    with empty_database(server, "nosql") as dsn:
        proc = subprocess.run(
            [str(wheel_venv / "bin" / "python"), "-c", "from pgwebhooks.cli import main; main()", "migrate",
             "--dsn", dsn], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(broken)},
            cwd=tmp_path, timeout=60,
        )
        assert proc.returncode != 0
        assert "no migrations found" in proc.stderr
        assert query(dsn, "SELECT to_regnamespace('webhooks') AS s")[0]["s"] is None


def test_wheel_carries_the_dashboard_templates_and_styles(wheel_venv: Path) -> None:
    code = ("from importlib import resources; d = resources.files('pgwebhooks.dashboard');"
            " print((d / 'templates' / 'overview.html').is_file(), (d / 'static' / 'app.css').is_file());"
            " from pgwebhooks.dashboard.app import Settings, create_app;"
            " create_app('', Settings('127.0.0.1', 8080, False, b'k' * 32))")
    out = subprocess.run([str(wheel_venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         check=True, cwd=wheel_venv.parent).stdout
    assert out.split() == ["True", "True"]
