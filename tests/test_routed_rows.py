"""On a table routed by value on one column, a one-row statement takes a path whose plan is kept
for the session (webhooks._routed_row); larger statements and any other filter take the general
query, planned at every write. Both must route every row alike: two tables with the same tenant
webhooks, one of them given a predicate filter besides (so its triggers take the general query),
receive the same statements, one row at a time or in bulk, and each tenant gets the same rows
from both."""

from __future__ import annotations

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

# Route values: text with quotes, backslashes, spaces and non-ASCII (";" and "--" are refused in
# filters), or integers around the edges of their type.
TEXTS = st.text(alphabet=st.sampled_from(list("ab'\" \\é漢Z0")), max_size=6)
INTS = st.sampled_from([0, 1, -1, 7, 2**31 - 1, -(2**31), 2**62, -(2**62)])



@st.composite
def cases(draw: st.DrawFn) -> tuple[str, list, list, list]:
    """A column type, its tenants' values, the rows' values (mostly tenants', some of no tenant,
    some NULL) and the values an UPDATE gives every third row."""
    kind, values = draw(st.sampled_from([("text", TEXTS), ("bigint", INTS)]))
    tenants = draw(st.lists(values, min_size=1, max_size=4, unique=True))
    value = st.one_of(st.sampled_from(tenants), st.none(), values)
    rows = draw(st.lists(value, min_size=1, max_size=20))
    return kind, tenants, rows, draw(st.lists(value, min_size=len(rows), max_size=len(rows)))


def _literal(value: object) -> str:
    return "'" + value.replace("'", "''") + "'" if isinstance(value, str) else str(value)


def _got(conn: psycopg.Connection, hook: str) -> list[tuple[str, int, bool]]:
    """(operation, row id, whether the old row came too) of every delivery of `hook`."""
    conn.execute("SELECT webhooks._fan_out(100000)")
    return conn.execute(
        "SELECT c.operation, (coalesce(e.record, c.record, e.records[d.n - e.n + 1]::json) ->> 'id')::int,"
        " coalesce(e.old_record, c.old_record, e.old_records[d.n - e.n + 1]::json) IS NOT NULL"
        " FROM webhooks.deliveries d JOIN webhooks.captures c ON c.id = d.capture_id"
        " LEFT JOIN webhooks.events e ON e.capture_id = d.capture_id"
        "  AND d.n BETWEEN e.n AND e.n + coalesce(cardinality(e.records), 1) - 1"
        " JOIN webhooks.webhooks w ON w.id = d.webhook_id WHERE w.name = %s ORDER BY 1, 2", (hook,)).fetchall()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases(), st.booleans())
def test_the_route_path_routes_every_row_as_the_general_query(
        conn: psycopg.Connection, case: tuple[str, list, list, list], one_statement: bool) -> None:
    kind, tenants, values, moved = case
    conn.execute("SELECT webhooks.delete_webhook(id) FROM webhooks.webhooks")
    conn.execute("DELETE FROM webhooks.deliveries; DELETE FROM webhooks.events; DELETE FROM webhooks.captures")
    for table in ("routed", "general"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, tenant {kind})")
        for i, tenant in enumerate(tenants):
            conn.execute("SELECT webhooks.create_webhook(%s, 'https://r.example/t', %s)",
                         (f"{table}-{i}", Jsonb([{"table": table,
                                                  "where": f"tenant = {_literal(tenant)}"}])))
    conn.execute("SELECT webhooks.create_webhook('general-never', 'https://r.example/n', %s)",
                 (Jsonb([{"table": "general", "where": "id < 0"}]),))
    routed_args = conn.execute("SELECT tgnargs FROM pg_trigger WHERE tgrelid = 'routed'::regclass"
                               " AND tgname = 'webhooks_capture_insert'").fetchone()
    general_args = conn.execute("SELECT tgnargs FROM pg_trigger WHERE tgrelid = 'general'::regclass"
                                " AND tgname = 'webhooks_capture_insert'").fetchone()
    assert (routed_args, general_args) == ((3,), (2,))  # the two paths under test
    for table in ("routed", "general"):
        rows = list(enumerate(values, start=1))
        if one_statement:
            conn.execute(f"INSERT INTO {table} SELECT * FROM unnest(%s::int[], %s::{kind}[])",
                         ([i for i, _ in rows], [v for _, v in rows]))
            conn.execute(f"DELETE FROM {table} WHERE id % 2 = 0")
            conn.execute(f"UPDATE {table} t SET tenant = m.v FROM unnest(%s::int[], %s::{kind}[]) m(id, v)"
                         " WHERE t.id = m.id AND t.id %% 3 = 0", ([i for i, _ in rows], moved))
        else:
            for i, v in rows:
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s::{kind})", (i, v))
                if i % 2 == 0:
                    conn.execute(f"DELETE FROM {table} WHERE id = %s", (i,))
                elif i % 3 == 0:
                    conn.execute(f"UPDATE {table} SET tenant = %s::{kind} WHERE id = %s", (moved[i - 1], i))
    for i, tenant in enumerate(tenants):
        expected = sorted([("INSERT", n, False) for n, v in enumerate(values, start=1) if v == tenant]
                          + [("DELETE", n, False) for n, v in enumerate(values, start=1) if v == tenant and n % 2 == 0]
                          # An UPDATE goes to the row's new tenant, with the old row if it was that tenant's too.
                          + [("UPDATE", n, values[n - 1] == tenant) for n, v in enumerate(moved, start=1)
                             if v == tenant and n % 2 != 0 and n % 3 == 0])
        assert _got(conn, f"routed-{i}") == _got(conn, f"general-{i}") == expected
