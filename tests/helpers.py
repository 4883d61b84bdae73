"""The helpers tests share; test modules import from here, never from one another.

Install helpers (empty databases, signers, the schema's shape, the 0.1.0 release), runner helpers
(a watched table, webhooks, a running runner, a scripted receiver) and the PostgreSQL client tools.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pg_builds
import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, settings
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from receivers import Reply, ScriptedReceiver

from conftest import Server, dsn_params
from pgwebhooks.cli import main as cli_main
from pgwebhooks.worker import Runner, RunnerConfig


@contextmanager
def empty_database(server: Server, prefix: str = "inst") -> Iterator[str]:
    """A new database without the schema; its DSN (superuser). Dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield server.dsn_for(name)
    finally:
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def database_copy(server: Server, original: str, prefix: str = "copy") -> Iterator[str]:
    """A copy of the database named `original`, made with CREATE DATABASE ... TEMPLATE (what a
    restore of it gives); its DSN. No session may be connected to the original meanwhile.
    Dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {original}")
    try:
        yield server.dsn_for(name)
    finally:
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


SIGNER_EXTENSIONS = {"plpython": "plpython3u", "pgcrypto": "pgcrypto"}


def signer_available(dsn: str, signer: str) -> bool:
    """Whether this server build can create the signer's extension. Listed is not enough: some
    builds list plpython3u but cannot load it (linked against a Python this machine lacks)."""
    with psycopg.connect(dsn) as conn:
        try:
            conn.execute(f"CREATE EXTENSION IF NOT EXISTS {SIGNER_EXTENSIONS[signer]}")
        except psycopg.Error:
            return False
        finally:
            conn.rollback()
    return True


_BUILD_SIGNERS: dict[str, str] = {}


def build_signer(server: Server) -> str:
    """The signer the suite's template database was installed with: plpython where this server
    build can create plpython3u, else pgcrypto (or what PGWEBHOOKS_TEST_SIGNER asked for)."""
    if server.admin_dsn not in _BUILD_SIGNERS:
        with psycopg.connect(server.dsn_for("pgwebhooks_template")) as conn:
            row = conn.execute("SELECT webhooks.signer()").fetchone()
        assert row is not None and row[0] in ("plpython", "pgcrypto")
        _BUILD_SIGNERS[server.admin_dsn] = row[0]
    return _BUILD_SIGNERS[server.admin_dsn]


def skip_unless_signer_available(dsn: str, signer: str) -> None:
    """A signer whose extension this server build lacks cannot be tested on it; say so."""
    if not signer_available(dsn, signer):
        pytest.skip(f"this PostgreSQL build cannot create {SIGNER_EXTENSIONS[signer]} (the {signer} signer)")


def query(dsn: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def schema_shape(dsn: str) -> dict[str, list[str]]:
    """Functions with signatures and results, columns, constraints, indexes, triggers and grants
    of the webhooks schema: two installs with equal shapes behave alike."""
    q = {
        "functions": """SELECT p.oid::regprocedure::text || ' -> ' || pg_get_function_result(p.oid)
                          || ' ' || l.lanname || ' ' || p.provolatile::text
                          || CASE WHEN p.prosecdef THEN ' definer' ELSE '' END
                          || ' owner=' || p.proowner::regrole::text || ' ' || coalesce(p.proconfig::text, '')
                        FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
                        WHERE p.pronamespace = 'webhooks'::regnamespace""",
        "function_bodies": """SELECT p.oid::regprocedure::text || ' ' || md5(p.prosrc) FROM pg_proc p
                              WHERE p.pronamespace = 'webhooks'::regnamespace""",
        "columns": """SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable
                        || ' ' || coalesce(column_default, '')
                      FROM information_schema.columns WHERE table_schema = 'webhooks'""",
        "constraints": """SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
                          FROM pg_constraint WHERE connamespace = 'webhooks'::regnamespace""",
        "indexes": "SELECT indexdef FROM pg_indexes WHERE schemaname = 'webhooks'",
        "views": "SELECT viewname || ' ' || md5(definition) FROM pg_views WHERE schemaname = 'webhooks'",
        "grants": """SELECT c.relname || ' ' || coalesce(c.relacl::text, '') FROM pg_class c
                     WHERE c.relnamespace = 'webhooks'::regnamespace
                     UNION ALL
                     SELECT p.oid::regprocedure::text || ' ' || coalesce(p.proacl::text, '') FROM pg_proc p
                     WHERE p.pronamespace = 'webhooks'::regnamespace""",
        "comments": """SELECT coalesce(obj_description(p.oid, 'pg_proc'), '') || ' ' || p.oid::regprocedure::text
                       FROM pg_proc p WHERE p.pronamespace = 'webhooks'::regnamespace""",
    }
    with psycopg.connect(dsn) as conn:
        return {k: sorted(r[0] for r in conn.execute(sql).fetchall()) for k, sql in q.items()}


RELEASE_0_1_0 = Path(__file__).resolve().parent / "fixtures" / "release-0.1.0" / "sql"


def install_0_1_0(dsn: str) -> None:
    """What `pgwebhooks migrate` of 0.1.0 did: each file once, recorded by name and sha256.
    0.1.0 needed plpython3u; on a build without it there is no 0.1.0 install to upgrade."""
    skip_unless_signer_available(dsn, "plpython")
    files = sorted(RELEASE_0_1_0.glob("*.sql"))
    assert [f.name for f in files][:1] == ["001_schema.sql"] and len(files) == 8
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS webhooks")
        conn.execute("CREATE TABLE IF NOT EXISTS webhooks._migrations (name text PRIMARY KEY,"
                     " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        for path in files:
            sql = path.read_text()
            conn.execute(sql.encode())
            conn.execute("INSERT INTO webhooks._migrations (name, checksum) VALUES (%s, %s)",
                         (path.name, hashlib.sha256(sql.encode()).hexdigest()))
        conn.execute("REVOKE ALL ON webhooks._migrations FROM PUBLIC")
        conn.commit()


# -- the runner end to end -----------------------------------------------------------------------


def create_table(dsn: str, name: str = "items") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, label text, qty int DEFAULT 0)")


def create_webhook(dsn: str, url: str, table: str = "items", **options: Any) -> dict[str, Any]:
    args = {"name": f"hook-{os.urandom(4).hex()}", "url": url, "events": Jsonb([{"table": table}]), **options}
    named = ", ".join(f"{k} => %({k})s" for k in args)
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute(f"SELECT * FROM webhooks.create_webhook({named})", args).fetchone()
    assert row is not None
    return row


def insert(dsn: str, count: int, table: str = "items") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {table} (label) SELECT 'item ' || g FROM generate_series(1, %s) g", (count,))


def runner_config(dsn: str, **overrides: Any) -> RunnerConfig:
    settings: dict[str, Any] = {
        "dsn": dsn, "poll_interval": 0.2, "allowed_cidrs": ("127.0.0.1/32",),
        "reconnect_min": 0.05, "reconnect_max": 0.5, "shutdown_grace": 5.0,
    }
    settings.update(overrides)
    return RunnerConfig(**settings)


@asynccontextmanager
async def running(config: RunnerConfig) -> AsyncIterator[Runner]:
    runner = Runner(config)
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        runner.request_stop()
        await asyncio.wait_for(task, timeout=30)


@asynccontextmanager
async def receiver(script: list[Reply] | None = None) -> AsyncIterator[ScriptedReceiver]:
    r = await ScriptedReceiver(script).start()
    try:
        yield r
    finally:
        await r.stop()


async def eventually(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """wait_until for async tests: the event loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(interval)
    return check()


def attempts_of(dsn: str, webhook_id: Any) -> list[dict[str, Any]]:
    return query(
        dsn,
        "SELECT a.* FROM webhooks.deliveries d JOIN LATERAL webhooks.get_delivery_attempts(d.id) a ON true"
        " WHERE d.webhook_id = %s ORDER BY a.attempt",
        webhook_id,
    )


# -- PostgreSQL client tools (dump and restore) ----------------------------------------------------


def pg_tool(server: Server, name: str) -> Path:
    """`name` (pg_dump, pg_restore, psql) of the server's major, else the closest newer one."""
    with psycopg.connect(server.admin_dsn) as conn:
        major = conn.info.server_version // 10000
    dirs = [server.local.bindir] if server.local else []
    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    dirs += pg_builds.client_bindirs(fetch_missing=False)
    usable = []
    for d in dirs:
        if (d / name).exists():
            version = subprocess.run([str(d / name), "--version"], capture_output=True, text=True, check=True)
            found = re.search(r"\(PostgreSQL\) (\d+)", version.stdout)
            if found and int(found.group(1)) >= major:
                usable.append((int(found.group(1)), d / name))
    if not usable:
        # The npm server builds of the matrix carry none; `make deps-matrix` fetches them.
        pytest.skip(f"no {name} >= {major} here: `python tests/pg_builds.py` fetches them")
    return min(usable)[1]


def libpq_env(dsn: str) -> dict[str, str]:
    p = dsn_params(dsn)
    return {"PGHOST": p.get("host", "127.0.0.1"), "PGPORT": str(p.get("port", 5432)),
            "PGUSER": p.get("user", "postgres"), "PGDATABASE": p["dbname"], "PATH": "/usr/bin:/bin"}


# -- fuzzing the SQL API (Hypothesis) --------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])


class World:
    """A database with a watched table, a webhook and two finished deliveries to aim at."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        self.conn = conn
        conn.execute("CREATE TABLE items (id serial PRIMARY KEY, label text)")
        conn.execute("CREATE SCHEMA other; CREATE TABLE other.t (id int)")
        hook = conn.execute(
            "SELECT id FROM webhooks.create_webhook(name => 'existing', url => 'https://example.com/h',"
            " events => '[{\"table\": \"items\"}]', max_retries => 0)").fetchone()
        assert hook is not None
        self.webhook_id = str(hook["id"])
        conn.execute("INSERT INTO items (label) SELECT 'x' FROM generate_series(1, 2)")
        leased = conn.execute("SELECT delivery_id, attempt FROM webhooks.claim(10)").fetchall()
        assert len(leased) == 2
        results = [{"delivery_id": r["delivery_id"], "attempt": r["attempt"], "status_code": code,
                    "response_excerpt": "x"} for r, code in zip(leased, (200, 500), strict=True)]
        conn.execute("SELECT * FROM webhooks.complete(%s)", (Jsonb(results),))
        self.delivery_ids = [r["delivery_id"] for r in leased]
        self.tables = [r["relname"] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'webhooks' AND c.relkind IN ('r', 'p') ORDER BY 1").fetchall()]
        conn.execute("SET statement_timeout = '20s'")  # a pathological input must not hang the suite

    def snapshot(self) -> list[Any]:
        """Everything a management call may write: the webhooks tables and every user trigger."""
        state: list[Any] = []
        for table in self.tables:
            row = self.conn.execute(
                f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) AS h FROM webhooks.{table} t"
            ).fetchone()
            state.append((table, row["h"] if row else None))
        row = self.conn.execute(
            "SELECT string_agg(tgrelid::regclass || '.' || tgname, ',' ORDER BY 1) AS t FROM pg_trigger"
            " WHERE NOT tgisinternal").fetchone()
        state.append(("triggers", row["t"] if row else None))
        return state

    def reaches(self, casts: str, params: dict[str, Any]) -> bool:
        """Whether the arguments survive the parameter casts alone (else they never reach our function)."""
        try:
            with self.conn.transaction():
                self.conn.execute(f"SELECT {casts}", params)
        except psycopg.DataError:
            return False
        return True

    def call(
        self, sql: str, params: dict[str, Any], then: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> tuple[psycopg.Error | None, list[dict[str, Any]]]:
        """Run one call in a transaction rolled back afterwards; the error, if any, and the rows.
        `then` gets the rows of a call that succeeded, before the rollback (to use what it made)."""
        with self.conn.transaction(force_rollback=True):
            before = self.snapshot()
            try:
                with self.conn.transaction():
                    rows = self.conn.execute(sql, params).fetchall()
            except psycopg.Error as exc:
                if exc.sqlstate is None:
                    raise  # refused by the driver: the input never reached the server
                after = self.snapshot()
                assert after == before, f"a failing call wrote something: {sql} {short(params)}"
                return exc, []
            if then is not None:
                then(rows)
        return None, rows


def short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def assert_ours(fn: str, params: dict[str, Any], error: psycopg.Error | None) -> None:
    if error is None:
        return
    assert error.sqlstate is not None and error.sqlstate.startswith("WH"), (
        f"{fn}({short(params)}) raised {error.sqlstate}: {error.diag.message_primary}")


def invoke(*args: str) -> tuple[int, str]:
    """The `pgwebhooks` command in process: its exit code and output."""
    result = CliRunner().invoke(cli_main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def make_table(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, total int)")


def claimed_while_writers_commit_out_of_order(
        dsn: str, write: Callable[[psycopg.Connection, int], object], claim: Callable[[psycopg.Connection], list[Any]],
        drain: Callable[[psycopg.Connection, int], list[Any]], expected: int, writers: int = 4,
        per_writer: int = 40) -> list[Any]:
    """`writers` threads each write items w * 1000 + i (`write(conn, n)`), holding each transaction
    open a little after writing, so that they commit out of xid order, while this thread claims;
    then drains until `expected` came (bounded). Everything claimed; fails if a writer failed."""
    failures: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            with psycopg.connect(dsn) as conn:
                for i in range(per_writer):
                    write(conn, w * 1000 + i)
                    time.sleep(0.002 * ((w + i) % 5))  # commit later than a writer that began after
                    conn.commit()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    got: list[Any] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            got += claim(conn)
        for t in threads:
            t.join(timeout=30)
        got += drain(conn, expected - len(got))
    assert not failures, failures
    return got
