"""What every benchmark shares: the throwaway server, fresh databases, subprocesses and waiting.

Every subprocess (receivers, runners, plain clients, pgbench) is started through `PROCS`, which
kills whatever is still alive when the benchmark exits, however it exits. Every wait is bounded.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgwebhooks import migrations
from pgwebhooks.localpg import LocalPostgres, free_port

BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable
PGWEBHOOKS = str(Path(sys.executable).parent / "pgwebhooks")

# The realistic table of the write-path benchmarks, created identically under several names.
ORDERS_DDL = """
CREATE TABLE {name} (
    id          bigserial PRIMARY KEY,
    customer_id int NOT NULL,
    amount      numeric(12, 2) NOT NULL,
    status      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(){extra}
);
CREATE INDEX {name}_customer_id ON {name} (customer_id);
"""


class BenchError(RuntimeError):
    """A measurement could not be completed; the report shows the message instead of a number."""


def create_orders(conn: psycopg.Connection[Any], name: str, extra: str = "") -> None:
    conn.execute(ORDERS_DDL.format(name=name, extra=f",\n    {extra}" if extra else ""))


def create_webhook(conn: psycopg.Connection[Any], name: str, url: str, table: str) -> str:
    row = conn.execute(
        "SELECT id FROM webhooks.create_webhook(name => %s, url => %s, events => %s)",
        (name, url, Jsonb([{"table": table, "operations": ["INSERT"]}])),
    ).fetchone()
    assert row is not None
    return str(row[0])


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (user + system, from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid: int, field_name: str) -> int | None:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM) in KiB, or None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


# -- subprocesses ----------------------------------------------------------------------------------


class Processes:
    def __init__(self) -> None:
        self.alive: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        # Output goes to a file, never a pipe nobody reads: a chatty child must not block on a full pipe.
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(args), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                # Its own process group: a terminal's Ctrl-C reaches us, and we decide how children stop.
                start_new_session=True,
            )
        self.alive.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        with contextlib.suppress(ValueError):
            self.alive.remove(proc)
        return proc.returncode

    def kill_all(self) -> None:
        for proc in list(self.alive):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        self.alive.clear()


PROCS = Processes()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- receiver --------------------------------------------------------------------------------------


@dataclass
class Receiver:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, path: str = "hook") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.url(path), method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "_stats"))

    def reset(self) -> None:
        self._call("POST", "_reset")

    def arrivals(self) -> dict[str, list[float]]:
        return {k: [float(t) for t in v] for k, v in self._call("GET", "_arrivals").items()}

    def tokens(self) -> list[tuple[int, float]]:
        return [(int(t), float(at)) for t, at in self._call("GET", "_tokens")]


# -- the environment -------------------------------------------------------------------------------


@dataclass
class Env:
    workdir: Path
    pg: LocalPostgres | None = None
    databases: list[str] = field(default_factory=list)
    _counter: int = 0

    def start(self) -> Env:
        # As root the server runs as the postgres OS user, who must reach its data directory.
        os.chmod(self.workdir, 0o755)
        # fsync on: LocalPostgres turns it off for tests, but benchmarks must use default durability.
        self.pg = LocalPostgres(self.workdir / "pgdata", settings={"fsync": "on"}).start()
        return self

    @property
    def server(self) -> LocalPostgres:
        if self.pg is None:
            raise BenchError("PostgreSQL is not started")
        return self.pg

    def fresh_db(self, label: str) -> str:
        """A new database with the webhooks schema installed, as `pgwebhooks migrate` does."""
        self._counter += 1
        name = f"bench_{self._counter}_{label}"
        with psycopg.connect(self.server.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        self.databases.append(name)
        dsn = self.server.dsn_for(name)
        migrations.migrate(dsn)
        return dsn

    def drop_db(self, dsn: str) -> None:
        """Drop a finished measurement's database, so the next one does not share its disk and cache."""
        name = dsn.rsplit("/", 1)[1]
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.server.dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def start_receiver(self, name: str, delay: float = 0.0, record_tokens: bool = False,
                       fail_first: bool = False, port: int | None = None) -> Receiver:
        port = port or free_port()
        args = [PYTHON, str(BENCH_DIR / "receiver.py"), "--port", str(port)]
        if fail_first:
            args.append("--fail-first")
        if delay:
            args += ["--delay", str(delay)]
        if record_tokens:
            args.append("--record-tokens")
        log = self.log(f"receiver-{name}")
        receiver = Receiver(PROCS.spawn(args, log), port, log)

        def up() -> bool:
            if receiver.proc.poll() is not None:
                raise BenchError(f"receiver exited with {receiver.proc.returncode}:\n{tail(log)}")
            try:
                receiver.stats()
            except OSError:
                return False
            return True

        wait_until(up, 20, "the receiver to listen", interval=0.1)
        return receiver

    def start_runner(self, dsn: str, name: str, *options: str) -> subprocess.Popen[bytes]:
        """A real `pgwebhooks run` process, allowed to deliver to 127.0.0.1 only."""
        args = [PGWEBHOOKS, "run", "--dsn", dsn, "--allow-cidr", "127.0.0.1/32", *options]
        return PROCS.spawn(args, self.log(f"runner-{name}"))

    def stop(self) -> None:
        PROCS.kill_all()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.destroy()
            self.pg = None


def install_exit_handlers(env: Env) -> None:
    """Tear everything down on any exit: normal, exception, Ctrl-C, SIGTERM or SIGHUP."""
    atexit.register(env.stop)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through finally blocks, then atexit runs

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)


def delivered_count(conn: psycopg.Connection[Any], webhook_id: str) -> int:
    row = conn.execute("SELECT count(*) FROM webhooks.deliveries WHERE webhook_id = %s AND status = 'delivered'",
                       (webhook_id,)).fetchone()
    return int(row[0]) if row else 0


def paced(conn: psycopg.Connection[Any], statement: str, count: int, rate: float) -> None:
    """Run `statement` `count` times at `rate` per second (one transaction each, autocommit)."""
    begin = time.perf_counter()
    for i in range(count):
        pause = begin + i / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        conn.execute(statement, prepare=True)


def wait_delivered(conn: psycopg.Connection[Any], webhook_id: str, expected: int,
                   runner: subprocess.Popen[bytes], timeout: float, interval: float = 0.05) -> None:
    """Wait (bounded) until `expected` deliveries of `webhook_id` are delivered, the runner alive."""
    deadline = time.monotonic() + timeout
    while delivered_count(conn, webhook_id) < expected:
        if runner.poll() is not None:
            raise BenchError(f"runner exited with {runner.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"{delivered_count(conn, webhook_id)} of {expected} delivered after {timeout:.0f}s")
        time.sleep(interval)
