"""Capture filters are data, not code: what a webhooks_admin can do with a `where` filter, tried as
an attacker would (code run as the installer at validation, statements smuggled through quoting,
filters that sleep, lock or read the writer's session, a filter error leaking one tenant's rows to
another, row-level security), and a fuzz of `where` texts."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

OWNER = "pgwh_filter_owner"
ADMIN = "pgwh_filter_admin"


@pytest.fixture
def roles(db: str) -> Iterator[dict[str, str]]:
    """A table owner with app.orders, and a webhooks_admin that may read it."""
    with psycopg.connect(db, autocommit=True) as conn:
        for role in (OWNER, ADMIN):
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT webhooks_admin TO {ADMIN}")
        conn.execute(f"CREATE SCHEMA app AUTHORIZATION {OWNER}")
        conn.execute(f"GRANT USAGE ON SCHEMA app TO {ADMIN}")
        # Something only the installer may write: if it is ever written, the admin's text ran as it.
        conn.execute("CREATE TABLE public.canary (v text)")
    with psycopg.connect(make_conninfo(db, user=OWNER), autocommit=True) as owner:
        owner.execute("CREATE TABLE app.orders (id int PRIMARY KEY, tenant_id int, amount int, qty int, note text)")
        owner.execute(f"GRANT SELECT ON app.orders TO {ADMIN}")
    yield {"owner": make_conninfo(db, user=OWNER), "admin": make_conninfo(db, user=ADMIN)}
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DROP SCHEMA app CASCADE")
        conn.execute("DROP TABLE public.canary")
        for role in (OWNER, ADMIN):
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def _create(conn: psycopg.Connection, name: str, where: str | None, table: str = "app.orders") -> str:
    entry: dict[str, object] = {"table": table}
    if where is not None:
        entry["where"] = where
    row = conn.execute("SELECT id FROM webhooks.create_webhook(%s, %s, %s)",
                       (name, "https://example.com/" + name, Jsonb([entry]))).fetchone()
    assert row is not None
    return str(row[0])


def _refused(conn: psycopg.Connection, where: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as err:
        _create(conn, "x", where)
    assert err.value.sqlstate is not None and err.value.sqlstate.startswith("WH"), err.value
    return err.value


def test_pg_temp_immutable_function_never_runs_as_the_installer(roles: dict[str, str]) -> None:
    notices: list[str] = []
    with psycopg.connect(roles["admin"], autocommit=True) as admin:
        admin.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        # Planning the predicate would fold this IMMUTABLE call, running it as the definer.
        admin.execute("""
            CREATE FUNCTION pg_temp.peek() RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS $$
            BEGIN
                RAISE NOTICE 'ran as % seeing % secrets', current_user, (SELECT count(*) FROM webhooks.secrets);
                RETURN true;
            END $$""")
        for where in ("pg_temp.peek()", "id > 0 AND pg_temp.peek()", "CASE WHEN pg_temp.peek() THEN true END"):
            err = _refused(admin, where)
            assert err.sqlstate == "WH027"
            assert "not built in" in str(err)
    assert notices == []


def test_domain_check_never_runs_as_the_installer_while_parsing(roles: dict[str, str]) -> None:
    # Parsing alone types a string literal: an array of a domain checks each element on input.
    notices: list[str] = []
    with psycopg.connect(roles["admin"], autocommit=True) as admin:
        admin.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        admin.execute("""
            CREATE FUNCTION pg_temp.boom(int) RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN RAISE NOTICE 'ran as %', current_user; RETURN true; END $$""")
        admin.execute("CREATE DOMAIN pg_temp.d AS int CHECK (pg_temp.boom(VALUE))")
        err = _refused(admin, "'{1}'::pg_temp.d[] IS NOT NULL")
        assert err.sqlstate == "WH026"
        err = _refused(admin, "ARRAY[1]::pg_temp.d[] IS NOT NULL")
        assert err.sqlstate == "WH027"
    assert notices == []


def test_e_string_cannot_smuggle_a_statement(roles: dict[str, str]) -> None:
    # The old scanner took E'\'' for a closed string and a new one opened: everything after it,
    # the `;` and a statement reading the signing secrets included, looked quoted to it.
    # Its depth count missed the `))` it thought quoted; the `)` after the comment's quote balanced it.
    smuggled = ("(true OR E'\\'' IS NULL)) ; SELECT ('secr' || 'et:' || (SELECT pg_catalog.string_agg(secret, ',')"
                " FROM webhooks.secrets))::pg_catalog.int4 ; SELECT (true -- ')\n")
    with psycopg.connect(roles["admin"], autocommit=True) as admin:
        _create(admin, "existing", None)
        err = _refused(admin, smuggled)
        assert err.sqlstate == "WH018"
        assert "secret:" not in str(err) and "whsec_" not in str(err)
        assert "not even inside quotes" in str(err)


@pytest.mark.parametrize("where", [
    "pg_sleep(1) IS NOT NULL",
    "pg_catalog.pg_sleep(0.1) IS NULL",
    "pg_advisory_lock(42) IS NOT NULL",
    "pg_try_advisory_xact_lock(42)",
    "current_setting('application_name') = 'x'",
    "current_query() LIKE '%password%'",
    "current_user = 'postgres'",
    "note ~ '(a+)+$'",
    "substring(note from '(a+)+$') IS NULL",
    "EXISTS (SELECT 1 FROM webhooks.secrets)",
    "'webhooks.secrets'::regclass IS NOT NULL",
    "txid_current() > 0",
])
def test_filters_that_wait_lock_read_the_session_or_other_tables_are_refused(roles: dict[str, str], where: str) -> None:
    with psycopg.connect(roles["admin"], autocommit=True) as admin:
        err = _refused(admin, where)
        assert err.sqlstate == "WH027", err


def _got(conn: psycopg.Connection, hook: str) -> list[tuple[int, int | None]]:
    """(id, old tenant_id or None) of each row queued for `hook`."""
    conn.execute("SELECT webhooks._fan_out(10000)")
    rows = conn.execute(
        "SELECT (coalesce(e.record, c.record) ->> 'id')::int,"
        " (coalesce(e.old_record, c.old_record) ->> 'tenant_id')::int"
        " FROM webhooks.deliveries d JOIN webhooks.captures c ON c.id = d.capture_id"
        " LEFT JOIN webhooks.events e ON e.capture_id = d.capture_id AND e.n = d.n"
        " WHERE d.webhook_id = %s ORDER BY d.id", (hook,)).fetchall()
    return [(r[0], r[1]) for r in rows]


def test_filter_error_fails_closed_for_its_webhook_only(db: str, roles: dict[str, str]) -> None:
    with psycopg.connect(db, autocommit=True) as su:
        t1 = _create(su, "tenant1", "tenant_id = 1")
        t2 = _create(su, "tenant2", "tenant_id = 2")
        ratio = _create(su, "ratio", "amount / qty > 100")
        su.execute("LISTEN webhooks_alerts")
        with psycopg.connect(roles["owner"], autocommit=True) as owner:
            # qty = 0: data any writer controls makes one filter divide by zero.
            owner.execute("INSERT INTO app.orders VALUES (1, 1, 10, 1, 'a'), (2, 2, 5000, 0, 'b'), (3, 2, 500, 1, 'c')")
        assert _got(su, t1) == [(1, None)]
        assert _got(su, t2) == [(2, None), (3, None)]
        assert _got(su, ratio) == []
        held = su.execute("SELECT record ->> 'id', held_error FROM webhooks.held_rows"
                          " WHERE webhook_id = %s ORDER BY id", (ratio,)).fetchall()
        assert held == [("1", "division by zero"), ("2", "division by zero"), ("3", "division by zero")]
        listed = su.execute("SELECT status, error FROM webhooks.get_deliveries(%s)", (ratio,)).fetchall()
        assert listed == [("held", "division by zero")] * 3
        alerts = [n.payload for n in su.notifies(timeout=1, stop_after=1)]
        assert alerts and '"filter_failed"' in alerts[0] and ratio in alerts[0]
        # Fixed filter: the held rows are judged by it and the matching ones queued.
        su.execute("SELECT webhooks.update_webhook(%s, %s)",
                   (ratio, Jsonb({"events": [{"table": "app.orders", "where": "amount > 100 * qty"}]})))
        assert su.execute("SELECT * FROM webhooks.release_held(%s)", (ratio,)).fetchone() == (2, 1, 0)
        assert sorted(_got(su, ratio)) == [(2, None), (3, None)]
        assert su.execute("SELECT count(*) FROM webhooks.held_rows").fetchone() == (0,)


def test_release_held_keeps_rows_whose_filter_still_fails(db: str, roles: dict[str, str]) -> None:
    with psycopg.connect(db, autocommit=True) as su:
        ratio = _create(su, "ratio", "amount / qty > 100")
        with psycopg.connect(roles["owner"], autocommit=True) as owner:
            owner.execute("INSERT INTO app.orders VALUES (1, 1, 10, 0, 'a')")
        assert su.execute("SELECT * FROM webhooks.release_held(%s)", (ratio,)).fetchone() == (0, 0, 1)
        assert _got(su, ratio) == []
    with psycopg.connect(roles["admin"], autocommit=True) as admin:
        assert admin.execute("SELECT status FROM webhooks.get_deliveries(%s)", (ratio,)).fetchall() == [("held",)]


def test_update_into_a_tenant_sends_no_old_image_from_outside(db: str, roles: dict[str, str]) -> None:
    with psycopg.connect(db, autocommit=True) as su:
        t2 = _create(su, "tenant2", "tenant_id = 2")
        big = _create(su, "big2", "tenant_id = 2 AND amount > 100")
        with psycopg.connect(roles["owner"], autocommit=True) as owner:
            owner.execute("INSERT INTO app.orders VALUES (1, 1, 500, 1, 'a'), (2, 2, 500, 1, 'b')")
            su.execute("DELETE FROM webhooks.deliveries; DELETE FROM webhooks.events; DELETE FROM webhooks.captures")
            owner.execute("UPDATE app.orders SET tenant_id = 2, note = 'moved' WHERE id = 1")
            owner.execute("UPDATE app.orders SET note = 'stays'")
        # Row 1 came from tenant 1: neither tenant 2 webhook sees its old image; row 2's is theirs.
        for hook in (t2, big):
            got = _got(su, hook)
            assert got[0] == (1, None) and sorted(got[1:]) == [(1, 2), (2, 2)]


def test_rls_table_refused_to_an_admin_who_does_not_bypass_it(db: str, roles: dict[str, str]) -> None:
    with psycopg.connect(roles["owner"], autocommit=True) as owner:
        owner.execute("CREATE TABLE app.secrets_by_tenant (id int PRIMARY KEY, tenant text)")
        owner.execute("ALTER TABLE app.secrets_by_tenant ENABLE ROW LEVEL SECURITY")
        owner.execute("CREATE POLICY own ON app.secrets_by_tenant USING (tenant = current_user)")
        owner.execute(f"GRANT SELECT ON app.secrets_by_tenant TO {ADMIN}")
        owner.execute("INSERT INTO app.secrets_by_tenant VALUES (1, 'someone else')")
    with psycopg.connect(roles["admin"], autocommit=True) as admin:
        assert admin.execute("SELECT count(*) FROM app.secrets_by_tenant").fetchone() == (0,)
        with pytest.raises(psycopg.Error) as err:
            _create(admin, "rls", None, table="app.secrets_by_tenant")
        assert err.value.sqlstate == "WH028"
        assert admin.execute("SELECT count(*) FROM webhooks.subscriptions").fetchone() == (0,)
    # The owner (no FORCE) sees every row, and so does a superuser: both may watch it.
    with psycopg.connect(db, autocommit=True) as su:
        su.execute(f"GRANT webhooks_admin TO {OWNER}")
    with psycopg.connect(roles["owner"], autocommit=True) as owner:
        _create(owner, "owner-rls", None, table="app.secrets_by_tenant")
        owner.execute("ALTER TABLE app.secrets_by_tenant FORCE ROW LEVEL SECURITY")
        with pytest.raises(psycopg.Error) as err:
            _create(owner, "owner-forced", None, table="app.secrets_by_tenant")
        assert err.value.sqlstate == "WH028"


# -- fuzz ------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

_fragments = st.sampled_from([
    "id", "tenant_id", "amount", "qty", "note", "(old).note", "(old).id", "x.old", "r.id", "1", "0", "-1",
    "'a'", "''", "E'\\''", "E'\\\\'", "U&'\\0041'", "U&\"id\"", "$$a$$", "$q$;$q$", "'--'", "'/*'", "';'",
    "=", "<>", "<", ">", "+", "-", "*", "/", "%", "||", "AND", "OR", "NOT", "IS NULL", "IS NOT NULL", "(", ")",
    ",", ";", "--", "/*", "*/", "::text", "::int", "::boolean", "LIKE", "~", "IN", "BETWEEN", "CASE", "WHEN",
    "THEN", "ELSE", "END", "SELECT", "FROM", "webhooks.secrets", "public.canary", "pg_sleep(0)",
    "lower(note)", "length(note)", "coalesce(qty, 0)", "chr(59)", "current_user", "now()", "true", "false",
    "NULL", "INSERT INTO public.canary VALUES ('x')", "COPY", "\\", "\"", "'", "$", "é", "\u2028", "ß", "\x00",
])
_where = st.one_of(
    st.lists(_fragments, min_size=1, max_size=8).map(" ".join),
    st.text(min_size=1, max_size=40),
)


@FUZZ
@given(where=_where)
def test_fuzz_where_is_refused_with_wh_or_only_ever_a_filter(roles: dict[str, str], db: str, where: str) -> None:
    where = where.replace("\x00", "")
    with psycopg.connect(roles["admin"], autocommit=True) as admin:
        try:
            hook = _create(admin, "fuzz", where)
        except psycopg.Error as err:
            assert err.sqlstate is not None and err.sqlstate.startswith("WH"), (where, err.sqlstate, err)
            hook = None
    try:
        with psycopg.connect(roles["owner"], autocommit=True) as owner:
            owner.execute("INSERT INTO app.orders VALUES (1, 1, 10, 0, 'n') ON CONFLICT (id) DO UPDATE SET qty = 0")
            owner.execute("UPDATE app.orders SET note = 'u'")
            owner.execute("DELETE FROM app.orders")
    finally:
        with psycopg.connect(db, autocommit=True) as su:
            assert su.execute("SELECT count(*) FROM public.canary").fetchone() == (0,), where
            if hook is not None:
                su.execute("SELECT webhooks.delete_webhook(%s)", (hook,))
