"""The suite's watch for backend crashes (server_crashes.py), on a real crash of a server of its own:
a backend killed with SIGSEGV while it runs a statement, which the server restarts from."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import server_crashes

from pgwebhooks.localpg import LocalPostgres


def _backend_running(dsn: str, statement: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(100):  # bounded: 5 s
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE query = %s", (statement,)).fetchone()
            if row:
                return row[0]
            time.sleep(0.05)
    raise AssertionError(f"no backend ran {statement!r}")


def _run_until_dropped(dsn: str, statement: str) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement)
    except psycopg.OperationalError:
        pass  # the crash drops this session, as it drops every other


def _wait_for_restart(dsn: str, log: Path, logged: str) -> None:
    for _ in range(200):  # bounded: 20 s
        if logged in log.read_text() and "ready to accept" in log.read_text().split(logged)[-1]:
            psycopg.connect(dsn).close()
            return
        time.sleep(0.1)
    raise AssertionError(f"the server did not log {logged!r} and restart")


def test_a_backend_crash_is_reported_with_its_statement_and_a_kill_is_not() -> None:
    base = Path(tempfile.mkdtemp(prefix="pgwebhooks-crash-"))
    os.chmod(base, 0o755)
    local = LocalPostgres(base / "pgdata").start()
    try:
        dsn = local.dsn_for("postgres")
        log = local.datadir / "server.log"
        assert server_crashes.crashes_in(log) == []
        for sig, statement in ((signal.SIGKILL, "SELECT pg_sleep(30) AS killed"),
                               (signal.SIGSEGV, "SELECT pg_sleep(30) AS crashed")):
            worker = threading.Thread(target=_run_until_dropped, args=(dsn, statement))
            worker.start()
            pid = _backend_running(dsn, statement)
            os.kill(pid, sig)
            worker.join(timeout=30)
            assert not worker.is_alive()
            _wait_for_restart(dsn, log, f"(PID {pid}) was terminated by signal {sig.value}")
        (report,) = server_crashes.crashes_in(log)
        assert "terminated by signal 11" in report
        assert "Failed process was running: SELECT pg_sleep(30) AS crashed" in report
    finally:
        local.destroy()
