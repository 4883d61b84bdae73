"""Test harness: one real PostgreSQL per session, one fresh database per test.

The server is, in order of preference: the one `PGWEBHOOKS_TEST_DSN` points at (a superuser
connection), a throwaway local server started with initdb/pg_ctl in a temporary directory, or a
testcontainers PostgreSQL when no local binaries exist and a Docker engine is reachable.
`PGWEBHOOKS_TEST_PG=14..18` picks the local server's major version (tests/pg_builds.py finds or
fetches it) and `PGWEBHOOKS_TEST_SIGNER=plpython|pgcrypto` the signer; unset, the signer is
plpython wherever the server can create plpython3u. `make test-matrix` sets both.
The schema is installed once into a template database; each test gets `CREATE DATABASE ...
TEMPLATE` of it, which is fast and keeps tests independent.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pg_builds
import psycopg
import pytest
import server_crashes
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from raw_http import OK, Peer, RawServer, Respond, Script

from pgwebhooks import migrations
from pgwebhooks.localpg import LocalPostgres, find_bindir
from pgwebhooks.sender import Sender

TEMPLATE_DB = "pgwebhooks_template"
TEST_PG = os.environ.get("PGWEBHOOKS_TEST_PG")
TEST_SIGNER = os.environ.get("PGWEBHOOKS_TEST_SIGNER")


@dataclass
class Server:
    admin_dsn: str
    local: LocalPostgres | None = None  # set when the tests own the server (restart tests need it)
    signer: str = "plpython"

    def dsn_for(self, dbname: str, **overrides: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=dbname, **overrides)


def _start_server(tmp: Path) -> Iterator[Server]:
    if dsn := os.environ.get("PGWEBHOOKS_TEST_DSN"):
        yield Server(dsn)
        return
    if TEST_PG:
        local = LocalPostgres(tmp / "pgdata", bindir=pg_builds.bindir(int(TEST_PG))).start()
        try:
            yield Server(local.dsn, local)
        finally:
            local.destroy()
        return
    try:
        find_bindir()
    except RuntimeError:
        from testcontainers.postgres import PostgresContainer  # only where Docker is the way

        image = os.environ.get("PGWEBHOOKS_TEST_IMAGE", "postgres:15")
        with PostgresContainer(image, driver=None) as container:
            yield Server(container.get_connection_url())
        return
    local = LocalPostgres(tmp / "pgdata").start()
    try:
        yield Server(local.dsn, local)
    finally:
        local.destroy()


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    # Not under pytest's tmp_path: that is private to us, and as root the server runs as the
    # postgres OS user, who must reach its data directory.
    base = Path(tempfile.mkdtemp(prefix="pgwebhooks-test-"))
    os.chmod(base, 0o755)
    gen = _start_server(base)
    srv = next(gen)
    with psycopg.connect(srv.admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    template_dsn = srv.dsn_for(TEMPLATE_DB)
    srv.signer = TEST_SIGNER or ("plpython" if _can_create_plpython(template_dsn) else "pgcrypto")
    install_schema(template_dsn, srv.signer)
    with psycopg.connect(template_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgtap")
    yield srv
    if srv.local is not None:
        SERVER_CRASHES.extend(server_crashes.crashes_in(srv.local.datadir / "server.log"))
    gen.close()
    shutil.rmtree(base, ignore_errors=True)


# Backend crashes found in the test server's log when it stops (server_crashes.py).
SERVER_CRASHES: list[str] = []


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down: the server's log is read then
def pytest_sessionfinish(session: pytest.Session) -> None:
    if SERVER_CRASHES:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SERVER_CRASHES:
        terminalreporter.section("PostgreSQL backend crashes (the server restarted: every session was dropped)",
                                 red=True)
        for report in SERVER_CRASHES:
            terminalreporter.line(report)


def _can_create_plpython(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
        except psycopg.Error:
            return False
        finally:
            conn.rollback()
    return True


def install_schema(dsn: str, signer: str) -> None:
    """Install the schema with `signer`: the suite's one switch between the two signers."""
    migrations.migrate(dsn, signer=signer)


@pytest.fixture
def db(server: Server) -> Iterator[str]:
    """The DSN (superuser) of a fresh database with the schema installed."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    # A clone is a copy of the template: its first claim would start a new event-id salt and hold
    # a row lock until it commits (sql/functions/025_event_ids.sql). Settle that now, so tests of
    # concurrent claims see a database in its steady state.
    with psycopg.connect(server.dsn_for(name), autocommit=True) as conn:
        conn.execute("SELECT webhooks._ensure_identity()")
    try:
        yield server.dsn_for(name)
    finally:
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db, autocommit=True) as c:
        yield c


def dsn_params(dsn: str) -> dict[str, str]:
    return {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}


@pytest.fixture
def table(conn: psycopg.Connection) -> str:
    """A table `bulk (id, v)` for the capture and claim tests (tests/outbox_helpers.py)."""
    conn.execute("CREATE TABLE bulk (id int PRIMARY KEY, v int NOT NULL)")
    return "bulk"


@pytest.fixture
def listener(db: str) -> Iterator[psycopg.Connection]:
    """A connection listening on the runners' wake-up channel, registered as a waiting runner
    (writers NOTIFY only while one waits: sql/functions/028_wakeups.sql)."""
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("LISTEN webhooks")
        c.execute("SELECT webhooks.next_due_in()")
        yield c


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    """Starts raw HTTP servers on loopback (tests/raw_http.py) and closes them after the test."""
    servers: list[RawServer] = []

    async def start(respond: Respond = OK, host: str = "127.0.0.1") -> RawServer:
        servers.append(await RawServer(respond, host).start())
        return servers[-1]

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def peer() -> AsyncIterator[Callable[..., Awaitable[Peer]]]:
    """Starts loopback servers that run a script per connection (tests/raw_http.py); closes them after."""
    peers: list[Peer] = []

    async def start(script: Script, live: list | None = None, tls: ssl.SSLContext | None = None) -> Peer:
        peers.append(await Peer(script, live).start(tls))
        return peers[-1]

    yield start
    for p in peers:
        await p.close()


@pytest.fixture
async def open_sender() -> AsyncIterator[Sender]:
    async with Sender(allow_private_networks=True) as sender:
        yield sender


@pytest.fixture
def dconn(db: str) -> Iterator[psycopg.Connection]:
    """A dict-row connection to `db` with a `users` table: the request tests (test_signatures.py,
    test_payload_and_headers.py) override `db` to run once per signer."""
    with psycopg.connect(db, autocommit=True, row_factory=dict_row) as c:
        c.execute(
            "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email text, score numeric,"
            " tags text[], meta jsonb, active boolean DEFAULT true)"
        )
        yield c
