"""The README's quick start, run as written: its commands and SQL are read from the README itself,
with only the placeholders a reader fills in (the connection string, the port, the secret)
put in, so the quick start cannot drift from what works.

A fresh database, `pgwebhooks migrate`, the `orders` table and `create_webhook` in SQL, then
`pgwebhooks listen` and `pgwebhooks run` as processes of their own, and the INSERT: `listen`
must print the row's event with both signatures verified. The first block (a venv and
`pip install .`) is not run: the suite runs in the venv `make test` installs the same way."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from helpers import empty_database

from conftest import Server
from pgwebhooks.localpg import free_port

README = Path(__file__).resolve().parent.parent / "README.md"
PLACEHOLDER_DSN = "postgresql://postgres@localhost/app"
PLACEHOLDER_PORT = "8000"
PLACEHOLDER_SECRET = "whsec_…"


def quick_start() -> list[tuple[str, str]]:
    """The quick start's code blocks, in order: (language, text)."""
    text = README.read_text()
    section = text[text.index("## Quick start on your own database"):text.index("### Verifying a signature")]
    return re.findall(r"```(sh|sql)\n(.*?)```", section, re.S)


def command(line: str, dsn: str, port: int, secret: str = PLACEHOLDER_SECRET) -> list[str]:
    """A README command line, its placeholders filled in, run with this venv's `pgwebhooks`."""
    words = shlex.split(line)
    assert words[0] == "pgwebhooks", line
    filled = {PLACEHOLDER_DSN: dsn, PLACEHOLDER_PORT: str(port), PLACEHOLDER_SECRET: secret}
    return [str(Path(sys.executable).with_name("pgwebhooks")), *(filled.get(w, w) for w in words[1:])]


def test_the_quick_start_delivers_a_verified_event_as_written(server: Server, tmp_path: Path) -> None:
    blocks = quick_start()
    assert [lang for lang, _ in blocks] == ["sh", "sh", "sql", "sh", "sh", "sql"], "the quick start's shape changed"
    assert "pip install ." in blocks[0][1]
    port = free_port()
    with empty_database(server, "quickstart") as dsn:
        migrate = subprocess.run(command(blocks[1][1].strip(), dsn, port), capture_output=True, text=True,
                                 timeout=300)
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        with psycopg.connect(dsn, autocommit=True) as conn:
            sql = blocks[2][1].replace(f"127.0.0.1:{PLACEHOLDER_PORT}", f"127.0.0.1:{port}")
            create_table, create_webhook = sql.split(";")[:2]
            conn.execute(create_table)
            row = conn.execute(create_webhook).fetchone()
            assert row is not None and row[1].startswith("whsec_")
            secret = row[1]
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            printed = tmp_path / "listen.out"
            with printed.open("w") as out:
                listen = subprocess.Popen(command(blocks[3][1].strip(), dsn, port, secret), stdout=out,
                                          stderr=subprocess.STDOUT, env=env)
                runner = subprocess.Popen(command(blocks[4][1].strip(), dsn, port), stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, env=env)
                try:
                    deadline = time.monotonic() + 30
                    while "listening on" not in printed.read_text() and time.monotonic() < deadline:
                        time.sleep(0.1)
                    conn.execute(blocks[5][1])
                    while "INSERT public.orders" not in printed.read_text() and time.monotonic() < deadline:
                        time.sleep(0.1)
                finally:
                    for proc in (runner, listen):
                        proc.send_signal(signal.SIGTERM)
                    for proc in (runner, listen):
                        try:
                            proc.wait(timeout=15)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                            proc.wait(timeout=10)
    output = printed.read_text()
    assert "INSERT public.orders" in output, output
    assert "webhook-signature: verified;  X-Webhook-Signature: verified" in output, output
    assert '"customer": "ada"' in output and '"total": 42' in output, output
    assert listen.returncode == 0 and runner.returncode == 0, (listen.returncode, runner.returncode)
