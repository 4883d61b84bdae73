"""Watched tables run the capture triggers inside other roles' writes: they must not lend the
installer's rights to code those roles control."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

ATTACKER = "pgwh_attacker"


@pytest.fixture
def attacker(db: str):
    """A login role owning a schema of its own, as an application's role often does."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {ATTACKER}")
        conn.execute(f"CREATE ROLE {ATTACKER} LOGIN")
        conn.execute(f"CREATE SCHEMA app AUTHORIZATION {ATTACKER}")
    yield _as(db, ATTACKER)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DROP SCHEMA app CASCADE")
        conn.execute(f"DROP OWNED BY {ATTACKER}")
        conn.execute(f"DROP ROLE {ATTACKER}")


def _as(dsn: str, user: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, user=user)


def _is_superuser(db: str) -> bool:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (ATTACKER,)).fetchone()
    assert row is not None
    return bool(row[0])


ESCALATE = sql.SQL(
    "CREATE FUNCTION app.escalate() RETURNS void LANGUAGE plpgsql AS "
    "$$ BEGIN EXECUTE 'ALTER ROLE {role} SUPERUSER'; END $$"
).format(role=sql.Identifier(ATTACKER))


def test_a_cast_to_json_of_the_table_owners_type_runs_without_the_installers_rights(
    db: str, attacker: str
) -> None:
    with psycopg.connect(attacker, autocommit=True) as conn:
        conn.execute(ESCALATE)
        conn.execute("CREATE TYPE app.mood AS ENUM ('ok')")
        conn.execute(
            "CREATE FUNCTION app.mood_json(app.mood) RETURNS json LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM app.escalate(); RETURN '\"ok\"'::json; END $$"
        )
        conn.execute("CREATE CAST (app.mood AS json) WITH FUNCTION app.mood_json(app.mood)")
        conn.execute("CREATE TABLE app.t (id int PRIMARY KEY, m app.mood)")
    with psycopg.connect(db, autocommit=True) as admin:  # an admin watches the table
        admin.execute(
            "SELECT webhooks.create_webhook('watch-app', 'https://example.com/h', %s)",
            (Jsonb([{"table": "app.t"}]),),
        )
    with psycopg.connect(attacker, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("INSERT INTO app.t VALUES (1, 'ok')")
    assert not _is_superuser(db)


def test_an_operator_planted_on_the_search_path_is_not_used_by_update_capture(db: str, attacker: str) -> None:
    with psycopg.connect(attacker, autocommit=True) as conn:
        conn.execute(ESCALATE)
        conn.execute(
            "CREATE FUNCTION app.eq(int, int) RETURNS boolean LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM app.escalate(); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$"
        )
        conn.execute("CREATE OPERATOR app.= (LEFTARG = int, RIGHTARG = int, FUNCTION = app.eq)")
        conn.execute("CREATE TABLE app.t (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO app.t SELECT g, 0 FROM generate_series(1, 3) g")
    with psycopg.connect(db, autocommit=True) as admin:
        admin.execute(
            "SELECT webhooks.create_webhook('watch-app', 'https://example.com/h', %s)",
            (Jsonb([{"table": "app.t", "operations": ["UPDATE"]}]),),
        )
    with psycopg.connect(attacker, autocommit=True) as conn:
        conn.execute("SET search_path = app, pg_catalog")
        conn.execute("UPDATE app.t SET v = v + 1")  # several rows: the primary-key pairing path
    assert not _is_superuser(db)
    with psycopg.connect(db) as admin:
        row = admin.execute(
            "SELECT (SELECT count(*) FROM webhooks.events WHERE old_record IS NOT NULL)"
            " + (SELECT count(*) FROM webhooks.events e, unnest(e.old_records) o WHERE o IS NOT NULL)"
        ).fetchone()
    assert row is not None and row[0] == 3
