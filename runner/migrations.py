"""The SQL install: `sql/migrations/` run once, then `sql/functions/` re-applied every time.

`sql/migrations/*.sql` are frozen, numbered files for tables and data: each is applied once and
must never change after a release (a changed checksum is refused). `sql/functions/*.sql` hold
every function, view and grant as idempotent `CREATE OR REPLACE` statements: there is one
definition of each function, and every `migrate` re-applies them all, so an upgrade is "run
the new migrations, then the current functions". A function whose signature changes drops its
old signature at the top of its file.

All of it is plain SQL so psql and external migration tools can apply it as it stands. The one
generated file, `sql/functions/020_plpython.sql`, wraps the PL/Python bodies whose single source
is `plpython/*.py`; `render_plpython()` writes it and a test checks it is up to date.

`migrate()` adds bookkeeping (`webhooks._migrations`: name and checksum of each applied
migration) and a transaction-scoped advisory lock, so two runners starting at once apply
everything once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = ROOT / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
FUNCTIONS_DIR = SQL_DIR / "functions"
PLPYTHON_DIR = ROOT / "plpython"
PLPYTHON_SQL = FUNCTIONS_DIR / "020_plpython.sql"
# Release 0.1.0 kept every file in sql/ as a run-once migration; its tables are 0001 now.
LEGACY_BASE = {"001_schema.sql": "0001_tables.sql"}
# Any constant will do, as long as it is ours: pg_advisory_xact_lock takes a bigint.
MIGRATION_LOCK_KEY = 0x7067_7768_6F6F_6B73  # "pgwhooks"


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """The run-once migrations, in order."""
    return [Migration(p.name, p.read_text()) for p in sorted(MIGRATIONS_DIR.glob("*.sql"))]


def functions() -> list[Migration]:
    """The idempotent files (functions, views, grants), in order; re-applied by every migrate."""
    return [Migration(p.name, p.read_text()) for p in sorted(FUNCTIONS_DIR.glob("*.sql"))]


def install_script() -> str:
    """Every migration, then every functions file, as one script for tools that want one file."""
    parts = ["-- pgwebhooks install script: sql/migrations/ then sql/functions/, in order.\n"]
    parts += [f"\n-- ===== {m.name} =====\n{m.sql}" for m in [*migrations(), *functions()]]
    return "".join(parts)


def render_plpython() -> str:
    """The SQL of every PL/Python function, from the header comments of plpython/*.py.

    A source file starts with `# SQL:` lines (the CREATE FUNCTION head) and one `# CALL:` line
    (the statement that returns the function's result); the rest is the body.
    """
    out = [
        "-- pgwebhooks: PL/Python functions.\n",
        "-- GENERATED from plpython/*.py by `make sql`; edit those files, not this one.\n",
        "\nCREATE EXTENSION IF NOT EXISTS plpython3u;\n",
    ]
    for path in sorted(PLPYTHON_DIR.glob("*.py")):
        lines = path.read_text().splitlines()
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


def migrate(dsn: str) -> list[str]:
    """Apply the pending migrations; returns the names applied."""
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=False) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS webhooks")
        conn.execute(
            """CREATE TABLE IF NOT EXISTS webhooks._migrations (
                   name text PRIMARY KEY,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = dict(conn.execute("SELECT name, checksum FROM webhooks._migrations").fetchall())
        for legacy, current in LEGACY_BASE.items():
            if legacy in done and current not in done:
                base = next(m for m in migrations() if m.name == current)
                conn.execute(
                    "INSERT INTO webhooks._migrations (name, checksum) VALUES (%s, %s)", (base.name, base.checksum)
                )
                done[current] = base.checksum
        for m in migrations():
            if m.name in done:
                if done[m.name] != m.checksum:
                    raise MigrationError(
                        f"{m.name} was applied with checksum {done[m.name][:12]} but the file now has "
                        f"{m.checksum[:12]}; applied migrations must not change, add a new file instead"
                    )
                continue
            try:
                conn.execute(m.sql.encode())
            except psycopg.Error as exc:
                raise MigrationError(f"{m.name}: {exc}") from exc
            conn.execute(
                "INSERT INTO webhooks._migrations (name, checksum) VALUES (%s, %s)", (m.name, m.checksum)
            )
            applied_now.append(m.name)
        for f in functions():
            try:
                conn.execute(f.sql.encode())
            except psycopg.Error as exc:
                raise MigrationError(f"{f.name}: {exc}") from exc
        conn.execute("REVOKE ALL ON webhooks._migrations FROM PUBLIC")
        conn.commit()
    return applied_now
