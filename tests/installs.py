"""Helpers for the install tests: empty databases, subprocess CLIs, waiting with a deadline."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from conftest import Server


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
    import pytest

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
