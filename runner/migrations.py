"""The SQL install: `sql/migrations/` run once, then `sql/functions/` re-applied every time.

`sql/migrations/*.sql` are frozen, numbered files for tables and data: each is applied once and
must never change after a release (a changed checksum is refused). `sql/functions/*.sql` hold
every function, view and grant as idempotent `CREATE OR REPLACE` statements: there is one
definition of each function, and every `migrate` re-applies them all, so an upgrade is "run
the new migrations, then the current functions". A function whose signature changes drops its
old signature at the top of its file.

The SQL ships inside the package (`pgwebhooks/sql`, `pgwebhooks/plpython`) and is read with
importlib.resources; an editable install reads the checkout's `sql/` beside `runner/`.

Two signers implement `_sign_headers()` and `_generate_secret()` with byte-identical output:
`020_plpython.sql` (generated from `plpython/*.py`) where plpython3u can be created, and
`020_pgcrypto.sql` everywhere else (managed PostgreSQL). Exactly one of them is applied.

`migrate()` and the printed script (`pgwebhooks sql`) are the same SQL: the script keeps its own
bookkeeping (`webhooks._migrations`, name and checksum of each applied migration) inside guarded
DO blocks under a transaction-scoped advisory lock, so psql, any migration tool and `migrate`
can take turns on one database, and running the script on an up-to-date database changes nothing.
A run-once migration therefore runs through EXECUTE inside a DO block: it may hold several
statements and DO blocks of its own, but no transaction control, no CREATE INDEX CONCURRENTLY,
no VACUUM. A tool that applied the bare files leaves no record; only 0001 is recognised by its
tables (ADOPT_PROBE), so later migrations should use IF NOT EXISTS where they can.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import psycopg
from psycopg import sql as pgsql

from pgwebhooks import __version__

# The checkout (editable installs, `make sql`, the demo's scratch directory).
ROOT = Path(__file__).resolve().parent.parent
PLPYTHON_SQL = ROOT / "sql" / "functions" / "020_plpython.sql"
SIGNERS = {"plpython": "020_plpython.sql", "pgcrypto": "020_pgcrypto.sql"}
DEFAULT_SIGNER = "plpython"
# A table 0001 creates: there without a record of 0001, the schema was installed another way and
# is adopted as it stands. That covers release 0.1.0, which recorded its files by their old
# names (001_schema.sql ... 008_operations.sql; its tables are 0001 now), and any tool that
# applied the bare files.
ADOPT_PROBE = {"0001_tables.sql": "webhooks.deliveries"}
# The row that records which function files (and signer) the database last received.
FUNCTIONS_RECORD = "(functions)"
# Any constant will do, as long as it is ours: pg_advisory_xact_lock takes a bigint.
MIGRATION_LOCK_KEY = 0x7067_7768_6F6F_6B73  # "pgwhooks"
SIGN_HEADERS = "webhooks._sign_headers(text,bigint,text,text[])"
# migrate() waits at most this long for any one lock: a lock request queued behind a long
# transaction blocks every writer queued behind it, so it gives up, rolls back and tries again a
# bounded number of times rather than stall the application.
LOCK_TIMEOUT_SECONDS = 5.0
LOCK_ATTEMPTS = 3
LOCK_RETRY_PAUSE_SECONDS = 1.0


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def data_dir(name: str) -> Traversable:
    """`sql` or `plpython`: inside the installed package, else (editable install) the checkout's."""
    packaged = resources.files("pgwebhooks") / name
    if packaged.is_dir():
        return packaged
    return ROOT / name


def _read(folder: Traversable, suffix: str) -> list[Migration]:
    if not folder.is_dir():
        return []
    files = sorted((p for p in folder.iterdir() if p.name.endswith(suffix)), key=lambda p: p.name)
    return [Migration(p.name, p.read_text(encoding="utf-8")) for p in files]


def migrations() -> list[Migration]:
    """The run-once migrations, in order; an install without them is broken, not up to date."""
    found = _read(data_dir("sql") / "migrations", ".sql")
    if not found:
        raise MigrationError(
            f"no migrations found in {data_dir('sql') / 'migrations'}: this pgwebhooks install is incomplete "
            "(reinstall the package; a wheel must carry pgwebhooks/sql)"
        )
    return found


def functions(signer: str = DEFAULT_SIGNER) -> list[Migration]:
    """The idempotent files (functions, views, grants) in order, with the chosen signer's only."""
    if signer not in SIGNERS:
        raise MigrationError(f"unknown signer {signer!r}; expected one of {', '.join(SIGNERS)}")
    skip = {f for s, f in SIGNERS.items() if s != signer}
    found = [f for f in _read(data_dir("sql") / "functions", ".sql") if f.name not in skip]
    if not any(f.name == SIGNERS[signer] for f in found):
        raise MigrationError(f"the {signer} signer ({SIGNERS[signer]}) is missing from this install")
    return found


def functions_checksum(signer: str) -> str:
    return hashlib.sha256("".join(f.checksum for f in functions(signer)).encode()).hexdigest()


def _quote(sql: str, tag: str) -> str:
    if f"${tag}$" in sql:
        raise MigrationError(f"SQL contains the reserved dollar-quote tag ${tag}$")
    return f"${tag}${sql}${tag}$"


def _prelude() -> str:
    adopt = "\n".join(
        f"    IF to_regclass('{ADOPT_PROBE[m.name]}') IS NOT NULL\n"
        f"       AND NOT EXISTS (SELECT FROM webhooks._migrations WHERE name = '{m.name}') THEN\n"
        f"        INSERT INTO webhooks._migrations (name, checksum) VALUES ('{m.name}', '{m.checksum}');\n"
        "    END IF;"
        for m in migrations()
        if m.name in ADOPT_PROBE
    )
    return (
        f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY});\n"
        "CREATE SCHEMA IF NOT EXISTS webhooks;\n"
        "CREATE TABLE IF NOT EXISTS webhooks._migrations (\n"
        "    name text PRIMARY KEY,\n    checksum text NOT NULL,\n"
        "    applied_at timestamptz NOT NULL DEFAULT now());\n"
        "-- An install made without this bookkeeping (0.1.0's file names, or any tool applying the\n"
        "-- bare files) is recorded as it stands instead of failing on tables that already exist.\n"
        f"DO $pgwebhooks_adopt$\nBEGIN\n{adopt}\nEND\n$pgwebhooks_adopt$;\n"
    )


def _guarded(m: Migration) -> str:
    """A run-once migration that runs only where it is not recorded, and records itself."""
    return (
        "DO $pgwebhooks_migration$\n"
        f"DECLARE recorded text := (SELECT checksum FROM webhooks._migrations WHERE name = '{m.name}');\n"
        "BEGIN\n"
        "    IF recorded IS NULL THEN\n"
        f"        EXECUTE {_quote(m.sql, 'pgwebhooks_sql')};\n"
        f"        INSERT INTO webhooks._migrations (name, checksum) VALUES ('{m.name}', '{m.checksum}');\n"
        f"    ELSIF recorded <> '{m.checksum}' THEN\n"
        f"        RAISE EXCEPTION '{m.name} was applied with checksum % but this pgwebhooks has {m.checksum[:12]}; "
        "applied migrations must not change, add a new file instead', left(recorded, 12);\n"
        "    END IF;\n"
        "END\n$pgwebhooks_migration$;\n"
    )


def _epilogue(signer: str) -> str:
    return (
        "REVOKE ALL ON webhooks._migrations FROM PUBLIC;\n"
        "COMMENT ON TABLE webhooks._migrations IS 'pgwebhooks bookkeeping: each run-once migration applied "
        f"(name, sha256), and {FUNCTIONS_RECORD}: the checksum of the function files last applied';\n"
        f"INSERT INTO webhooks._migrations (name, checksum) VALUES ('{FUNCTIONS_RECORD}', "
        f"'{functions_checksum(signer)}')\n"
        "    ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, applied_at = now();\n"
    )


def script_parts(signer: str = DEFAULT_SIGNER, done: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(name, SQL) pieces of the install script; with `done`, recorded migrations are left out."""
    parts = [("prelude", _prelude())]
    parts += [(m.name, _guarded(m)) for m in migrations() if done is None or m.name not in done]
    parts += [(f.name, f.sql) for f in functions(signer)]
    parts.append(("epilogue", _epilogue(signer)))
    return parts


def install_script(signer: str = DEFAULT_SIGNER, done: dict[str, str] | None = None) -> str:
    """The whole install or upgrade as one script; applying it again changes nothing."""
    parts = [
        f"-- pgwebhooks {__version__} install script, {signer} signer: sql/migrations/ then sql/functions/.\n"
        "-- Safe to run again: recorded migrations are skipped. Run it in one transaction and stop at\n"
        "-- the first error, e.g. psql -v ON_ERROR_STOP=1 -1 -f pgwebhooks.sql\n"
    ]
    parts += [f"\n-- ===== {name} =====\n{sql}" for name, sql in script_parts(signer, done)]
    return "".join(parts)


def render_plpython() -> str:
    """The SQL of every PL/Python function, from the header comments of plpython/*.py.

    A source file starts with `# SQL:` lines (the CREATE FUNCTION head) and one `# CALL:` line
    (the statement that returns the function's result); the rest is the body.
    """
    out = [
        "-- pgwebhooks: PL/Python functions.\n",
        "-- GENERATED from plpython/*.py by `make sql`; edit those files, not this one.\n",
        "-- The plpython signer; 020_pgcrypto.sql is the other one (see runner/migrations.py).\n",
        "\nCREATE EXTENSION IF NOT EXISTS plpython3u;\n",
    ]
    for path in sorted((p for p in data_dir("plpython").iterdir() if p.name.endswith(".py")), key=lambda p: p.name):
        lines = path.read_text(encoding="utf-8").splitlines()
        head = [line.removeprefix("# SQL:").strip() for line in lines if line.startswith("# SQL:")]
        calls = [line.removeprefix("# CALL:").strip() for line in lines if line.startswith("# CALL:")]
        body = [line for line in lines if not line.startswith(("# SQL:", "# CALL:"))]
        if not head or len(calls) != 1:
            raise MigrationError(f"{path}: needs '# SQL:' header lines and exactly one '# CALL:' line")
        source = "\n".join(body).strip("\n")
        out.append(
            f"\n-- from plpython/{path.name}\n{chr(10).join(head)}\nAS $python$\n"
            f"{source}\n\n{calls[0]}\n$python$;\n"
        )
    return "".join(out)


def recorded(conn: psycopg.Connection) -> dict[str, str]:
    """name -> checksum of what the database has recorded (empty when nothing is)."""
    if conn.execute("SELECT to_regclass('webhooks._migrations')").fetchone() == (None,):
        return {}
    return dict(conn.execute("SELECT name, checksum FROM webhooks._migrations").fetchall())


def installed_signer(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT CASE l.lanname WHEN 'plpython3u' THEN 'plpython' ELSE 'pgcrypto' END"
        " FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.oid = to_regprocedure(%s)",
        (SIGN_HEADERS,),
    ).fetchone()
    return row[0] if row else None


def choose_signer(conn: psycopg.Connection, requested: str | None = None) -> str:
    """The signer asked for, else the one installed, else plpython where it can be created."""
    if requested:
        if requested not in SIGNERS:
            raise MigrationError(f"unknown signer {requested!r}; expected one of {', '.join(SIGNERS)}")
        return requested
    if current := installed_signer(conn):
        return current
    try:
        with conn.transaction():  # a savepoint: a refused CREATE EXTENSION leaves no trace
            conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
    except psycopg.Error:
        return "pgcrypto"
    return "plpython"


class LockBusy(MigrationError):
    """A lock migrate() needs was held by another session for longer than its lock_timeout, or
    waiting for it would have deadlocked."""


def _migrate_once(dsn: str, signer: str | None, lock_timeout: float) -> list[str]:
    known = {m.name for m in migrations()}
    with psycopg.connect(dsn, autocommit=False) as conn:
        conn.execute(pgsql.SQL("SET lock_timeout = {}").format(pgsql.Literal(f"{int(lock_timeout * 1000)}ms")))
        part = "prelude"
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            chosen = choose_signer(conn, signer)
            before = recorded(conn)
            for part, sql in script_parts(chosen):
                try:
                    conn.execute(sql.encode())
                except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
                    raise
                except psycopg.Error as exc:
                    raise MigrationError(f"{part}: {exc.diag.message_primary or exc}") from exc
            after = recorded(conn)
            conn.commit()
        # A deadlock with a session that holds one of our tables and wants another rolls back the
        # whole run, as a lock held too long does: both are tried again.
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
            raise LockBusy(f"{part}: {exc.diag.message_primary or exc}") from exc
    return [m.name for m in migrations() if m.name in known and m.name in after and m.name not in before]


def migrate(
    dsn: str,
    signer: str | None = None,
    *,
    lock_timeout: float = LOCK_TIMEOUT_SECONDS,
    attempts: int = LOCK_ATTEMPTS,
    on_retry: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Install or upgrade; returns the migrations recorded now (applied, or adopted as they stood).

    Everything runs in one transaction with `lock_timeout`; when a lock stays busy that long the
    transaction is rolled back (nothing applied) and tried again, `attempts` times in all;
    `on_retry(attempt, reason)` hears of each retry.
    """
    if lock_timeout <= 0 or attempts < 1:
        raise MigrationError("lock_timeout must be positive and attempts at least 1")
    for attempt in range(1, attempts + 1):
        try:
            return _migrate_once(dsn, signer, lock_timeout)
        except LockBusy as exc:
            if attempt == attempts:
                raise LockBusy(
                    f"gave up after {attempts} attempt(s): another session held a lock for more than "
                    f"{lock_timeout:g}s each time ({exc}); nothing was applied. Find it in pg_stat_activity "
                    "(a long or idle-in-transaction session on webhooks tables) and run migrate again"
                ) from exc
            if on_retry is not None:
                on_retry(attempt, str(exc))
            time.sleep(LOCK_RETRY_PAUSE_SECONDS)
    raise AssertionError("unreachable")


def pending_script(dsn: str, signer: str | None = None) -> str:
    """What the database at `dsn` still lacks, as a script; a comment only when it lacks nothing."""
    with psycopg.connect(dsn, autocommit=False) as conn:
        chosen = choose_signer(conn, signer)
        done = recorded(conn)
        adoptable = {
            name for name, probe in ADOPT_PROBE.items()
            if conn.execute("SELECT to_regclass(%s)", (probe,)).fetchone() != (None,)
        }
        conn.rollback()  # choose_signer may have created plpython3u; printing changes nothing
    lacking = [m.name for m in migrations() if m.name not in done and m.name not in adoptable]
    if not lacking and done.get(FUNCTIONS_RECORD) == functions_checksum(chosen):
        return f"-- pgwebhooks {__version__}: the database is up to date ({chosen} signer); nothing to apply.\n"
    return install_script(chosen, done={**done, **dict.fromkeys(adoptable, "")})


def uninstall(dsn: str) -> list[str]:
    """Drop every capture trigger and the webhooks schema; returns the tables that were watched.

    The roles stay: they are cluster-wide and other databases may use them.
    """
    with psycopg.connect(dsn, autocommit=False) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        if conn.execute("SELECT to_regnamespace('webhooks')").fetchone() == (None,):
            return []
        triggers = conn.execute(
            "SELECT t.tgname, t.tgrelid::regclass::text FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
            " WHERE p.pronamespace = 'webhooks'::regnamespace AND NOT t.tgisinternal"
            " AND t.tgrelid NOT IN (SELECT oid FROM pg_class WHERE relnamespace = 'webhooks'::regnamespace)"
        ).fetchall()
        for name, table in triggers:
            conn.execute(f"DROP TRIGGER {pgsql.Identifier(name).as_string(conn)} ON {table}")
        conn.execute("DROP SCHEMA webhooks CASCADE")
        conn.commit()
    return sorted({table for _, table in triggers})
