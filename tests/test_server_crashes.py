"""The suite's watch for backend crashes (server_crashes.py), on a real crash of a server of its own:
a backend killed with SIGSEGV while it runs a statement, which the server restarts from."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import pg_builds
import psycopg
import server_crashes

from conftest import TEST_PG
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
    # The matrix's major version: PostgreSQL 18 names the process ("client backend (PID ...)"),
    # earlier ones say "server process".
    if TEST_PG:
        local = LocalPostgres(base / "pgdata", bindir=pg_builds.bindir(int(TEST_PG))).start()
    else:
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


def test_a_crash_of_a_worker_is_reported_too(tmp_path: Path) -> None:
    """How PostgreSQL 18 names a crashed backend, and workers, whose crash restarts the server too."""
    log = tmp_path / "server.log"
    log.write_text(
        '2026-12-08 00:22:06.100 UTC [100] LOG:  background worker "parallel worker" (PID 31074)'
        " was terminated by signal 11: Segmentation fault\n"
        "2026-12-08 00:22:06.100 UTC [100] DETAIL:  Failed process was running: SELECT 1\n"
        "2026-12-08 00:22:07.000 UTC [100] LOG:  autovacuum worker (PID 31075) was terminated by signal 6: Aborted\n"
        "2026-12-08 00:22:07.500 UTC [100] LOG:  client backend (PID 31077) was terminated by signal 11:"
        " Segmentation fault\n"
        "2026-12-08 00:22:08.000 UTC [100] LOG:  server process (PID 31076) was terminated by signal 9: Killed\n")
    reports = server_crashes.crashes_in(log)
    assert len(reports) == 3
    assert "parallel worker" in reports[0] and "Failed process was running: SELECT 1" in reports[0]
    assert "autovacuum worker" in reports[1] and "client backend" in reports[2]
