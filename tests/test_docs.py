"""psql's \\d+ and \\df+ are the manual of a SQL API: every table, view and public function says what it is."""

from __future__ import annotations

import psycopg


def test_every_table_view_and_public_function_has_a_comment(conn: psycopg.Connection) -> None:
    undocumented = conn.execute(
        """SELECT c.oid::regclass::text FROM pg_class c
           WHERE c.relnamespace = 'webhooks'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
             AND c.relname <> '_migrations' AND obj_description(c.oid, 'pg_class') IS NULL
           UNION ALL
           SELECT p.oid::regprocedure::text FROM pg_proc p
           WHERE p.pronamespace = 'webhooks'::regnamespace AND p.proname NOT LIKE '\\_%'
             AND obj_description(p.oid, 'pg_proc') IS NULL
           ORDER BY 1"""
    ).fetchall()
    assert [r[0] for r in undocumented] == []


def test_comments_survive_a_second_migrate(db: str) -> None:
    from pgwebhooks import migrations

    migrations.migrate(db)
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT obj_description('webhooks.create_webhook'::regproc, 'pg_proc')").fetchone()
    assert row is not None and row[0].startswith("Create a webhook")
