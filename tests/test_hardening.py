"""Regressions for the defects hostile testing found: privilege escalation through
create_webhook, forged events from a table owner's code, partitions, dropped tables, races
between replay and purge, and bad input that escaped without a WH SQLSTATE."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

OWNER = "pgwh_table_owner"
ADMIN = "pgwh_lesser_admin"


@pytest.fixture
def roles(db: str) -> Iterator[dict[str, str]]:
    """A login that owns an application schema, and a webhooks_admin that may read only part of it."""
    with psycopg.connect(db, autocommit=True) as conn:
        for role in (OWNER, ADMIN):
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT webhooks_admin TO {ADMIN}")
        conn.execute(f"CREATE SCHEMA app AUTHORIZATION {OWNER}")
        conn.execute(f"GRANT USAGE ON SCHEMA app TO {ADMIN}")
    yield {"owner": make_conninfo(db, user=OWNER), "admin": make_conninfo(db, user=ADMIN)}
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DROP SCHEMA app CASCADE")
        for role in (OWNER, ADMIN):
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def _create(conn: psycopg.Connection, name: str, table: str, url: str = "https://example.com/h") -> str:
    row = conn.execute(
        "SELECT id FROM webhooks.create_webhook(%s, %s, %s)", (name, url, Jsonb([{"table": table}]))
    ).fetchone()
    assert row is not None
    return str(row[0])


# -- item 2: no role obtains through pgwebhooks a row it could not SELECT ----------------------------


def test_admin_cannot_watch_a_table_it_may_not_read(roles: dict[str, str]) -> None:
    with psycopg.connect(roles["owner"], autocommit=True) as owner:
        owner.execute("CREATE TABLE app.salaries (id int PRIMARY KEY, amount int)")
        owner.execute("CREATE TABLE app.public_notes (id int PRIMARY KEY, note text)")
        owner.execute(f"GRANT SELECT ON app.public_notes TO {ADMIN}")
    with psycopg.connect(roles["admin"], autocommit=True) as admin:
        with pytest.raises(psycopg.Error) as err:
            _create(admin, "steal", "app.salaries")
        assert err.value.sqlstate == "WH014"
        assert "may not SELECT app.salaries" in str(err.value)
        # ... also through SET ROLE to a role that may not read it.
        _create(admin, "notes", "app.public_notes")
        assert admin.execute("SELECT count(*) FROM webhooks.subscriptions").fetchone() == (1,)


def test_admin_cannot_redirect_a_webhook_watching_what_it_may_not_read(db: str, roles: dict[str, str]) -> None:
    with psycopg.connect(roles["owner"], autocommit=True) as owner:
        owner.execute("CREATE TABLE app.salaries (id int PRIMARY KEY, amount int)")
    with psycopg.connect(db, autocommit=True) as su:
        hook = _create(su, "payroll", "app.salaries")
    with psycopg.connect(roles["admin"], autocommit=True) as admin:
        with pytest.raises(psycopg.Error) as err:
            admin.execute("SELECT webhooks.update_webhook(%s, %s)", (hook, Jsonb({"url": "https://attacker.example"})))
        assert err.value.sqlstate == "WH014"
        with pytest.raises(psycopg.Error) as err:
            admin.execute("SELECT * FROM webhooks.captures")
        assert err.value.sqlstate == "42501"
    with psycopg.connect(db, autocommit=True) as su:
        assert su.execute("SELECT url FROM webhooks.webhooks").fetchone() == ("https://example.com/h",)


@pytest.mark.parametrize("table", ["pg_catalog.pg_class", "information_schema.sql_features", "webhooks.secrets"])
def test_catalogs_and_the_outbox_cannot_be_watched(conn: psycopg.Connection, table: str) -> None:
    with pytest.raises(psycopg.Error) as err:
        _create(conn, "catalog", table)
    assert err.value.sqlstate == "WH006"
    assert conn.execute("SELECT count(*) FROM webhooks.webhooks").fetchone() == (0,)


def test_extension_tables_cannot_be_watched(conn: psycopg.Connection) -> None:
    # pgtap is installed in every test database; give it a member table to stand for any extension's.
    conn.execute("CREATE TABLE public.ext_owned (id int PRIMARY KEY)")
    conn.execute("ALTER EXTENSION pgtap ADD TABLE public.ext_owned")
    try:
        with pytest.raises(psycopg.Error) as err:
            _create(conn, "ext", "ext_owned")
        assert err.value.sqlstate == "WH006" and "belongs to an extension" in str(err.value)
    finally:
        conn.execute("ALTER EXTENSION pgtap DROP TABLE public.ext_owned")


# -- item 3: code run during capture cannot write the outbox -------------------------------------------


FORGING_CAST = """
CREATE TYPE app.money_t AS ENUM ('low', 'high');
CREATE FUNCTION app.forge(app.money_t) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhooks.captures (operation, relid, schema_name, table_name, webhook_ids, row_count, record)
    VALUES ('INSERT', 0, 'public', 'payments', ARRAY[%(victim)L]::uuid[], 1,
            '{"forged": true}');
    RETURN to_json($1::text);
END $$;
CREATE CAST (app.money_t AS json) WITH FUNCTION app.forge(app.money_t);
CREATE TABLE app.ledger (id int PRIMARY KEY, value app.money_t);
"""


def test_a_table_owners_cast_cannot_forge_signed_events(db: str, roles: dict[str, str]) -> None:
    with psycopg.connect(db, autocommit=True) as su:
        su.execute("CREATE TABLE public.payments (id int PRIMARY KEY)")
        victim = _create(su, "payments", "payments")
    with psycopg.connect(roles["owner"], autocommit=True) as owner:
        owner.execute(FORGING_CAST.replace("%(victim)L", f"'{victim}'"))
    with psycopg.connect(db, autocommit=True) as su:
        _create(su, "ledger", "app.ledger")
    with psycopg.connect(roles["owner"], autocommit=True) as owner:
        with pytest.raises(psycopg.Error) as err:
            owner.execute("INSERT INTO app.ledger VALUES (1, 'low')")
        assert err.value.sqlstate == "25006", str(err.value)  # read-only: the forging INSERT
        with pytest.raises(psycopg.Error):
            owner.execute("INSERT INTO app.ledger VALUES (1, 'low'), (2, 'high')")
    with psycopg.connect(db, autocommit=True) as su:
        forged = su.execute("SELECT count(*) FROM webhooks.captures WHERE %s = ANY (webhook_ids)", (victim,))
        assert forged.fetchone() == (0,)


def test_a_harmless_cast_to_json_still_shapes_the_payload(db: str, roles: dict[str, str]) -> None:
    with psycopg.connect(roles["owner"], autocommit=True) as owner:
        owner.execute("CREATE TYPE app.cents AS ENUM ('250', '300')")
        owner.execute("CREATE FUNCTION app.cents_json(app.cents) RETURNS json LANGUAGE sql "
                      "AS $$ SELECT to_json($1::text::int / 100.0) $$")
        owner.execute("CREATE CAST (app.cents AS json) WITH FUNCTION app.cents_json(app.cents)")
        owner.execute("CREATE TABLE app.prices (id int PRIMARY KEY, price app.cents)")
    with psycopg.connect(db, autocommit=True) as su:
        _create(su, "prices", "app.prices")
    with psycopg.connect(roles["owner"], autocommit=True) as owner:
        owner.execute("INSERT INTO app.prices VALUES (1, '250')")
        owner.execute("UPDATE app.prices SET price = '300'")
    with psycopg.connect(db, autocommit=True) as su:
        rows = su.execute("SELECT record::text, old_record::text FROM webhooks.captures ORDER BY id").fetchall()
    assert rows == [('{"id":1,"price":2.5000000000000000}', None),
                    ('{"id":1,"price":3.0000000000000000}', '{"id":1,"price":2.5000000000000000}')]


# -- item 4: partitions ----------------------------------------------------------------------------------


def _claimed(conn: psycopg.Connection) -> list[dict]:
    return [r[0] for r in conn.execute("SELECT body::jsonb FROM webhooks.claim(1000) ORDER BY delivery_id")]


def test_writes_straight_into_partitions_are_captured(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE public.measurements (id int, region text, v int, PRIMARY KEY (id, region))"
                 " PARTITION BY LIST (region)")
    conn.execute("CREATE TABLE public.m_eu PARTITION OF public.measurements FOR VALUES IN ('eu')")
    _create(conn, "measurements", "measurements")
    conn.execute("INSERT INTO public.measurements VALUES (1, 'eu', 1)")         # through the parent
    conn.execute("INSERT INTO public.m_eu VALUES (2, 'eu', 2), (3, 'eu', 3)")   # straight into a partition
    conn.execute("CREATE TABLE public.m_us (LIKE public.measurements)")
    conn.execute("ALTER TABLE public.measurements ATTACH PARTITION public.m_us FOR VALUES IN ('us')")
    conn.execute("INSERT INTO public.m_us VALUES (4, 'us', 4)")                 # attached later
    conn.execute("UPDATE public.m_eu SET v = v + 10 WHERE id = 2")
    conn.execute("DELETE FROM public.measurements WHERE id = 3")
    bodies = _claimed(conn)
    seen = [(b["event"], b["table"], b["record"]["id"]) for b in bodies]
    assert sorted(seen) == sorted([("INSERT", "measurements", 1), ("INSERT", "measurements", 2),
                                   ("INSERT", "measurements", 3), ("INSERT", "measurements", 4),
                                   ("UPDATE", "measurements", 2), ("DELETE", "measurements", 3)])
    update = next(b for b in bodies if b["event"] == "UPDATE")
    assert (update["record"]["v"], update["old_record"]["v"]) == (12, 2)


# -- item 5: a dropped watched table ------------------------------------------------------------------


def test_dropping_a_watched_table_keeps_management_working(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE public.gone (id int PRIMARY KEY)")
    conn.execute("CREATE TABLE public.kept (id int PRIMARY KEY)")
    hook = str(conn.execute("SELECT id FROM webhooks.create_webhook('both', 'https://e.com', %s)",
                            (Jsonb([{"table": "gone"}, {"table": "kept"}]),)).fetchone()[0])
    _create(conn, "other", "kept")
    conn.execute("DROP TABLE public.gone")
    listed = conn.execute("SELECT name, events FROM webhooks.list_webhooks() ORDER BY name").fetchall()
    assert listed[0][1] == [{"table": "public.kept", "operations": ["INSERT", "UPDATE", "DELETE"]},
                            {"table": "public.gone", "operations": ["INSERT", "UPDATE", "DELETE"], "dropped": True}]
    assert conn.execute("SELECT count(*) FROM webhooks.get_webhook(%s)", (hook,)).fetchone() == (1,)
    conn.execute("SELECT webhooks.update_webhook(%s, %s)", (hook, Jsonb({"events": [{"table": "kept"}]})))
    assert conn.execute("SELECT events FROM webhooks.get_webhook(%s)", (hook,)).fetchone()[0] == [
        {"table": "public.kept", "operations": ["INSERT", "UPDATE", "DELETE"]}]


# -- item 6: races -------------------------------------------------------------------------------------


def _finished_delivery(conn: psycopg.Connection) -> int:
    conn.execute("CREATE TABLE public.r (id int PRIMARY KEY)")
    _create(conn, "r", "r")
    conn.execute("INSERT INTO public.r VALUES (1)")
    (delivery, attempt) = conn.execute("SELECT delivery_id, attempt FROM webhooks.claim(10)").fetchone()
    conn.execute("SELECT webhooks.complete(%s)",
                 (Jsonb([{"delivery_id": delivery, "attempt": attempt, "status_code": 200}]),))
    conn.execute("UPDATE webhooks.deliveries SET completed_at = now() - interval '2 days'")
    conn.execute("UPDATE webhooks.captures SET occurred_at = now() - interval '2 days'")
    return delivery


def test_replay_of_a_purged_event_is_refused(conn: psycopg.Connection) -> None:
    delivery = _finished_delivery(conn)
    conn.execute("SELECT * FROM webhooks.purge('1 day')")
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT webhooks.replay(%s)", (delivery,))
    assert err.value.sqlstate == "WH404"


def test_replay_racing_purge_never_leaves_a_delivery_without_its_event(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        delivery = _finished_delivery(conn)
    # purge has locked the capture it is deleting; a replay waits for it, then finds it gone.
    with psycopg.connect(db) as purger, psycopg.connect(db, autocommit=True) as replayer:
        purger.execute("SELECT * FROM webhooks.purge('1 day')")
        outcome: list[str] = []

        def replay() -> None:
            try:
                replayer.execute("SELECT webhooks.replay(%s)", (delivery,))
                outcome.append("replayed")
            except psycopg.Error as exc:
                outcome.append(exc.sqlstate or "")

        t = threading.Thread(target=replay)
        t.start()
        time.sleep(0.3)
        purger.commit()
        t.join(10)
        assert outcome == ["WH404"]
    # replay first: purge skips the capture the replay holds, and the replayed delivery is sendable.
    with psycopg.connect(db, autocommit=True) as conn:
        delivery = _finished_delivery_again(conn)
    with psycopg.connect(db) as replayer, psycopg.connect(db, autocommit=True) as purger:
        replayer.execute("SELECT webhooks.replay(%s)", (delivery,))
        purger.execute("SELECT * FROM webhooks.purge('1 day')")
        replayer.commit()
        sendable = purger.execute("SELECT count(*) FROM webhooks.claim(10)").fetchone()
        assert sendable == (1,)


def _finished_delivery_again(conn: psycopg.Connection) -> int:
    conn.execute("INSERT INTO public.r VALUES (2)")
    (delivery, attempt) = conn.execute("SELECT delivery_id, attempt FROM webhooks.claim(10)").fetchone()
    conn.execute("SELECT webhooks.complete(%s)",
                 (Jsonb([{"delivery_id": delivery, "attempt": attempt, "status_code": 200}]),))
    conn.execute("UPDATE webhooks.deliveries SET completed_at = now() - interval '2 days'")
    conn.execute("UPDATE webhooks.captures SET occurred_at = now() - interval '2 days'")
    return delivery


def test_purge_removes_deliveries_left_by_a_deleted_webhook(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE public.o (id int PRIMARY KEY)")
    hook = _create(conn, "o", "o")
    conn.execute("INSERT INTO public.o VALUES (1)")
    conn.execute("SELECT webhooks._fan_out(10), webhooks._fill_from_cursors(10)")  # a one-row change: its route
    # What a fan-out (or a cursor) racing delete_webhook() could leave behind.
    conn.execute("DELETE FROM webhooks.webhooks WHERE id = %s", (hook,))
    assert conn.execute("SELECT count(*) FROM webhooks.deliveries").fetchone() == (1,)
    conn.execute("SELECT * FROM webhooks.purge('7 days')")
    assert conn.execute("SELECT count(*) FROM webhooks.deliveries").fetchone() == (0,)


# -- item 9: pre-change rows after a primary key is dropped -------------------------------------------


def test_old_record_stays_exact_after_the_primary_key_is_dropped(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE public.k (id int PRIMARY KEY, code text NOT NULL UNIQUE, v int)")
    conn.execute("CREATE TABLE public.nk (id int PRIMARY KEY, v int)")
    _create(conn, "k", "k")
    _create(conn, "nk", "nk")
    conn.execute("INSERT INTO public.k SELECT g, 'c' || g, g FROM generate_series(1, 3) g")
    conn.execute("INSERT INTO public.nk SELECT g, g FROM generate_series(1, 3) g")
    _claimed(conn)
    conn.execute("ALTER TABLE public.k DROP CONSTRAINT k_pkey")    # a unique NOT NULL key remains
    conn.execute("ALTER TABLE public.nk DROP CONSTRAINT nk_pkey")  # no key at all
    assert conn.execute("SELECT webhooks.refresh_triggers()").fetchone() == (2,)
    conn.execute("UPDATE public.k SET v = v * 10")
    conn.execute("UPDATE public.nk SET v = v * 10")
    bodies = _claimed(conn)
    assert len(bodies) == 6
    for b in bodies:
        assert b["old_record"] is not None and b["record"]["v"] == b["old_record"]["v"] * 10, b


# -- item 8: bad input gets a WH SQLSTATE and writes nothing -------------------------------------------


BAD_CREATE = [
    ({"name": "\t\u00a0\u3000"}, "WH001"),
    ({"name": "line\x01break"}, "WH001"),
    ({"url": "http://127.1/"}, "WH003"),
    ({"url": "http://2130706433/"}, "WH003"),
    ({"url": "http://0177.0.0.1/"}, "WH003"),
    ({"url": "http://0x7f.0.0.1/"}, "WH003"),
    ({"url": "http://256.1.1.1/"}, "WH003"),
    ({"url": "http://a..b/"}, "WH003"),
    ({"url": "http://[not-v6]/"}, "WH003"),
    ({"url": "http://127.0.0.1./"}, "WH003"),
    ({"headers": {"X-Name": "caf\u00e9"}}, "WH009"),
    ({"headers": {"X-Bell": "\x07"}}, "WH009"),
    ({"headers": {"X-Big": "a" * 1_000_000}}, "WH009"),
    ({"headers": {f"X-{i}": "v" for i in range(5000)}}, "WH009"),
    ({"secret": "s" * 1_000_000}, "WH011"),
    ({"secret": "whsec_MfKQ9r8GKYqr=TwjUPD8ILPZIo2LaLaSw"}, "WH011"),
    ({"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS"}, "WH011"),
]


@pytest.mark.parametrize(("override", "code"), BAD_CREATE, ids=[f"{c}-{i}" for i, (_, c) in enumerate(BAD_CREATE)])
def test_bad_create_input_is_refused_with_its_code(conn: psycopg.Connection, override: dict, code: str) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS public.t (id int PRIMARY KEY)")
    args = {"name": "n", "url": "https://example.com/h", "events": [{"table": "t"}], "headers": {}, "secret": None}
    args.update(override)
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT * FROM webhooks.create_webhook(name => %s, url => %s, events => %s, headers => %s,"
                     " secret => %s)", (args["name"], args["url"], Jsonb(args["events"]), Jsonb(args["headers"]),
                                       args["secret"]))
    assert err.value.sqlstate == code, str(err.value)
    assert len(str(err.value)) < 2000, "the message must not echo a huge value back"
    assert conn.execute("SELECT count(*) FROM webhooks.webhooks").fetchone() == (0,)


def test_good_addresses_are_still_accepted(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE public.t (id int PRIMARY KEY)")
    for i, url in enumerate(["http://192.0.2.10:8080/x", "https://[2001:db8::1]/h", "https://api.example.com./h",
                             "https://hooks_1.example.com/a?b=c#d", "https://user:pw@example.com/x"]):
        _create(conn, f"ok{i}", "t", url)
    assert conn.execute("SELECT count(*) FROM webhooks.webhooks").fetchone() == (5,)


@pytest.mark.parametrize(("call", "arg"), [
    ("SELECT * FROM webhooks.rotate_secret(%s, grace_period => %s::interval)", "1000000 years"),
    ("SELECT * FROM webhooks.purge(%s::interval)", "100000000 years"),
])
def test_huge_intervals_are_refused_with_wh013(conn: psycopg.Connection, call: str, arg: str) -> None:
    conn.execute("CREATE TABLE public.t (id int PRIMARY KEY)")
    hook = _create(conn, "n", "t")
    params = (hook, arg) if "rotate" in call else (arg,)
    with pytest.raises(psycopg.Error) as err:
        conn.execute(call, params)
    assert err.value.sqlstate == "WH013"


def test_guarded_capture_pairs_bulk_updates_like_the_direct_path(conn: psycopg.Connection) -> None:
    """A table with a user-defined type takes its images read-only; multi-row statements still pair."""
    conn.execute("CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'glad')")
    conn.execute("CREATE TABLE public.g (id int PRIMARY KEY, m public.mood, v int)")
    _create(conn, "g", "g")
    conn.execute("INSERT INTO public.g SELECT i, 'ok', i FROM generate_series(1, 50) i")
    conn.execute("UPDATE public.g SET v = v * 10, m = 'glad' WHERE id <= 20")
    conn.execute("UPDATE public.g SET id = id + 1000 WHERE id = 50")  # a changed key finds no partner
    conn.execute("DELETE FROM public.g WHERE id > 40")
    bodies = _claimed(conn)
    by_event: dict[str, list[dict]] = {}
    for b in bodies:
        by_event.setdefault(b["event"], []).append(b)
    assert len(by_event["INSERT"]) == 50
    assert len(by_event["UPDATE"]) == 21
    for b in by_event["UPDATE"]:
        if b["record"]["id"] == 1050:
            assert b["old_record"] == {"id": 50, "m": "ok", "v": 50}
        else:
            assert b["old_record"] == {"id": b["record"]["id"], "m": "ok", "v": b["record"]["v"] // 10}
    assert sorted(b["record"]["id"] for b in by_event["DELETE"]) == [*range(41, 50), 1050]
    assert all(b["old_record"] == b["record"] for b in by_event["DELETE"])


def test_an_owners_code_raising_our_sentinel_cannot_make_a_capture_vanish(conn: psycopg.Connection) -> None:
    """The read-only image step ends by raising WHR00 on purpose; the same code raised by a cast must
    fail the write, not swallow its events."""
    conn.execute("CREATE TYPE public.quiet AS ENUM ('a')")
    conn.execute("CREATE FUNCTION public.quiet_json(public.quiet) RETURNS json LANGUAGE plpgsql AS "
                 "$$ BEGIN RAISE EXCEPTION USING ERRCODE = 'WHR00'; END $$")
    conn.execute("CREATE CAST (public.quiet AS json) WITH FUNCTION public.quiet_json(public.quiet)")
    conn.execute("CREATE TABLE public.q (id int PRIMARY KEY, v public.quiet)")
    _create(conn, "q", "q")
    for statement in ("INSERT INTO public.q VALUES (1, 'a')", "INSERT INTO public.q VALUES (2, 'a'), (3, 'a')"):
        with pytest.raises(psycopg.Error) as err:
            conn.execute(statement)
        assert err.value.sqlstate == "WHR00"
    assert conn.execute("SELECT count(*) FROM public.q").fetchone() == (0,)
