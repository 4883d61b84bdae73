"""webhooks.maintain(): one caller at a time, only for the roles that should, never removing work a
delivery or a replay still needs while claims and replays run beside it, and called by the runner
on its timer. Old rows are made old by moving their timestamps back, never by waiting."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import psycopg
import pytest
from helpers import create_table, create_webhook, eventually, insert, receiver, runner_config, running, wait_until
from psycopg.conninfo import make_conninfo


def _age(conn: psycopg.Connection, by: str = "30 days") -> None:
    conn.execute("UPDATE webhooks.deliveries SET created_at = created_at - %s::interval,"
                 " completed_at = completed_at - %s::interval", (by, by))
    conn.execute("UPDATE webhooks.captures SET occurred_at = occurred_at - %s::interval", (by,))


def _fail_all(conn: psycopg.Connection) -> None:
    for _ in range(50):
        n = conn.execute(
            """SELECT count(*) FROM webhooks.complete((
                   SELECT coalesce(jsonb_agg(jsonb_build_object('delivery_id', c.delivery_id, 'attempt', c.attempt,
                                                                'status_code', 400)), '[]')
                   FROM webhooks.claim(200) c))""").fetchone()
        if n == (0,):
            return


def test_a_second_caller_returns_at_once_saying_so(db: str) -> None:
    with psycopg.connect(db) as first, psycopg.connect(db, autocommit=True) as second:
        assert first.execute("SELECT busy FROM webhooks.maintain()").fetchone() == (False,)
        # `first` is still in its transaction, holding the lock: `second` must not wait for it.
        second.execute("SET lock_timeout = '2s'")
        row = second.execute("SELECT deliveries, attempts, captures, more, busy FROM webhooks.maintain()").fetchone()
        assert row == (0, 0, 0, True, True)
        first.rollback()
        assert second.execute("SELECT busy FROM webhooks.maintain()").fetchone() == (False,)


@pytest.mark.parametrize(("role", "allowed"), [("webhooks_admin", True), ("webhooks_runner", True),
                                               ("maintain_app", False), ("webhooks_publisher", False),
                                               ("webhooks_viewer", False)])
def test_who_may_call_maintain(conn: psycopg.Connection, role: str, allowed: bool) -> None:
    # Roles are cluster-wide: this one is dropped again, and named apart from the pgTAP suites' roles.
    conn.execute("DO $$ BEGIN CREATE ROLE maintain_app NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    conn.execute(f"SET ROLE {role}")
    try:
        if allowed:
            assert conn.execute("SELECT busy FROM webhooks.maintain()").fetchone() == (False,)
        else:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT webhooks.maintain()")
        # Only an admin changes the retention; the runner may not, an application role even less.
        if role == "webhooks_admin":
            assert conn.execute("SELECT webhooks.set_retention('1 day')").fetchone() is not None
        else:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT webhooks.set_retention('0')")
    finally:
        conn.execute("RESET ROLE")
        conn.execute("DROP ROLE IF EXISTS maintain_app")


def _hammer(db: str, sql: str, stop: threading.Event, errors: list[str], outcomes: list[Any],
            params: Any = None, go: threading.Event | None = None) -> None:
    with psycopg.connect(db, autocommit=True) as c:
        if go is not None:
            go.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                outcomes.append(c.execute(sql, params).fetchall())
            except psycopg.Error as exc:
                errors.append(f"{exc.sqlstate}: {exc}")


def test_nothing_needed_goes_under_concurrent_claim_and_replay(conn: psycopg.Connection) -> None:
    """Attack: maintain() with retention 0 runs in a loop while one session replays old failed
    deliveries (each replay needs the event maintain() wants to remove) and another claims. Every
    delivery left pending or leased must still find its capture and its row image."""
    conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    hook = conn.execute("SELECT id FROM webhooks.create_webhook('m', 'https://example.com/m', "
                        "'[{\"table\": \"items\"}]', max_retries => 0)").fetchone()
    assert hook is not None
    # Multi-row statements (captures with events) and one-row statements (images inline).
    conn.execute("INSERT INTO items SELECT g FROM generate_series(1, 300) g")
    for i in range(301, 401):
        conn.execute("INSERT INTO items VALUES (%s)", (i,))
    _fail_all(conn)
    failed = [r[0] for r in conn.execute("SELECT id FROM webhooks.deliveries WHERE status = 'failed' ORDER BY id")]
    assert len(failed) == 400
    conn.execute("SELECT webhooks.set_retention('0')")
    _age(conn, "1 second")

    stop = threading.Event()
    # The hammers start when the replays do: a connection opened late (a slow CI machine) must not
    # let maintain() remove all 400 before the first replay, which would prove nothing.
    go = threading.Event()
    errors: list[str] = []
    replays: list[Any] = []
    claims: list[Any] = []
    maintained: list[Any] = []
    threads = [
        threading.Thread(target=_hammer, args=(conn.info.dsn, "SELECT deliveries, captures, busy FROM "
                                               "webhooks.maintain('20 milliseconds', 2)", stop, errors, maintained),
                         kwargs={"go": go}),
        threading.Thread(target=_hammer, args=(conn.info.dsn, "SELECT delivery_id FROM webhooks.claim(5)",
                                               stop, errors, claims), kwargs={"go": go}),
    ]
    for t in threads:
        t.start()
    try:
        with psycopg.connect(conn.info.dsn, autocommit=True) as c:
            go.set()
            for delivery in failed[::-3]:  # newest first: maintain() walks from the oldest
                try:
                    replays.append(c.execute("SELECT webhooks.replay(%s)", (delivery,)).fetchone())
                except psycopg.Error as exc:
                    # maintain() took the delivery or its event first: refused, and said so.
                    if exc.sqlstate == "WH404" and ("purged" in str(exc) or "no delivery" in str(exc)):
                        replays.append("purged")
                    else:
                        errors.append(f"{exc.sqlstate}: {exc}")
    finally:
        go.set()
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert errors == []
    assert any(r != "purged" for r in replays), "no replay won the race: the test proves nothing"
    assert sum(m[0][0] for m in maintained) > 0, "maintain() removed nothing: the test proves nothing"
    # Every delivery still to do (or done in the race) has what claim() needs to send it.
    orphans = conn.execute(
        """SELECT d.id, d.status FROM webhooks.deliveries d
           LEFT JOIN webhooks.captures c ON c.id = d.capture_id
           WHERE d.status IN ('pending', 'leased')
             AND (c.id IS NULL OR (c.row_count > 1 AND NOT EXISTS (
                      SELECT 1 FROM webhooks._event_images(d.capture_id, d.n) e WHERE e.record IS NOT NULL)))"""
    ).fetchall()
    assert orphans == []
    # And no claim failed a delivery because its event had gone.
    gone = conn.execute("SELECT count(*) FROM webhooks.delivery_attempts WHERE error LIKE '%purged%'").fetchone()
    assert gone == (0,)


async def test_the_runner_removes_old_finished_rows_on_its_timer(db: str) -> None:
    create_table(db)
    async with receiver() as r:
        create_webhook(db, r.url)
        insert(db, 20)
        async with running(runner_config(db, maintain_interval=0.3)) as runner:
            with psycopg.connect(db, autocommit=True) as conn:
                def delivered() -> bool:
                    row = conn.execute("SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'").fetchone()
                    return row == (20,)

                assert await eventually(delivered, timeout=20)
                _age(conn)
                insert(db, 5)  # recent: must stay

                def only_recent_left() -> bool:
                    row = conn.execute("SELECT count(*), count(*) FILTER (WHERE created_at > now() - interval '1 day')"
                                       " FROM webhooks.deliveries").fetchone()
                    return row is not None and row[0] == row[1] == 5

                assert await eventually(only_recent_left, timeout=20)
                attempts = conn.execute("SELECT count(*) FROM webhooks.delivery_attempts a WHERE NOT EXISTS "
                                        "(SELECT 1 FROM webhooks.deliveries d WHERE d.id = a.delivery_id)").fetchone()
                assert attempts == (0,)
            # The runner counts what it removed once maintain()'s answer reaches it, which may be
            # a moment after the rows are gone for everyone else.
            assert await eventually(lambda: runner.maintainer.removed_deliveries == 20, timeout=10)


def _one_failed_old_delivery(conn: psycopg.Connection) -> int:
    conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    conn.execute("SELECT webhooks.create_webhook('r', 'https://example.com/r', '[{\"table\": \"items\"}]', "
                 "max_retries => 0)")
    conn.execute("INSERT INTO items VALUES (1), (2)")  # a multi-row capture: the row images are in events
    _fail_all(conn)
    conn.execute("SELECT webhooks.set_retention('0')")
    _age(conn, "1 second")
    row = conn.execute("SELECT min(id) FROM webhooks.deliveries WHERE status = 'failed'").fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


def _unsendable(conn: psycopg.Connection) -> list[Any]:
    return conn.execute(
        """SELECT d.id FROM webhooks.deliveries d
           WHERE d.status IN ('pending', 'leased')
             AND NOT EXISTS (SELECT 1 FROM webhooks._event_images(d.capture_id, d.n) e WHERE e.record IS NOT NULL)"""
    ).fetchall()


def test_a_replay_in_flight_keeps_its_event_and_maintain_does_not_wait_for_it(conn: psycopg.Connection) -> None:
    """Attack: replay an old failed delivery and keep the transaction open while maintain() runs.
    maintain() must neither wait for the replay nor remove the event it is about to need."""
    delivery = _one_failed_old_delivery(conn)
    with psycopg.connect(conn.info.dsn) as replaying:
        replaying.execute("SELECT webhooks.replay(%s)", (delivery,))  # holds the capture until it commits
        done = threading.Event()
        result: list[Any] = []

        def maintain() -> None:
            with psycopg.connect(conn.info.dsn, autocommit=True) as c:
                c.execute("SET lock_timeout = '20s'")
                result.append(c.execute("SELECT deliveries, captures FROM webhooks.maintain()").fetchone())
            done.set()

        worker = threading.Thread(target=maintain)
        worker.start()
        finished_before_commit = done.wait(10)
        replaying.commit()
        worker.join(timeout=30)
    assert finished_before_commit, "maintain() waited for an open replay"
    assert result == [(2, 0)], "the finished deliveries go, the capture the replay holds stays"
    assert conn.execute("SELECT * FROM webhooks.maintain()").fetchone() is not None
    assert conn.execute("SELECT count(*) FROM webhooks.deliveries WHERE status = 'pending'").fetchone() == (1,)
    assert _unsendable(conn) == []


def test_a_replay_after_maintain_removed_the_event_is_refused(conn: psycopg.Connection) -> None:
    """Attack: replay while maintain() has removed the event but not committed yet: the replay
    waits, then is refused (WH404), and leaves no delivery without its event."""
    delivery = _one_failed_old_delivery(conn)
    with psycopg.connect(conn.info.dsn) as maintaining:
        assert maintaining.execute("SELECT deliveries, captures FROM webhooks.maintain()").fetchone() == (2, 1)
        errors: list[str] = []

        def replay() -> None:
            with psycopg.connect(conn.info.dsn, autocommit=True) as c:
                try:
                    c.execute("SELECT webhooks.replay(%s)", (delivery,))
                except psycopg.Error as exc:
                    errors.append(f"{exc.sqlstate} {exc}")

        worker = threading.Thread(target=replay)
        worker.start()
        # Commit once the replay waits on the capture maintain() is removing.
        waiting = wait_until(lambda: conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%replay%'"
        ).fetchone() == (1,), timeout=10)
        maintaining.commit()
        worker.join(timeout=30)
    assert waiting, "the replay never waited for maintain(): the race was not reached"
    assert len(errors) == 1 and errors[0].startswith("WH404") and "purged" in errors[0], errors
    assert conn.execute("SELECT count(*) FROM webhooks.deliveries").fetchone() == (0,)
    assert _unsendable(conn) == []


async def test_a_failing_maintain_is_logged_and_delivery_goes_on(db: str, caplog: pytest.LogCaptureFixture) -> None:
    create_table(db)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DO $$ BEGIN CREATE ROLE maintain_runner LOGIN IN ROLE webhooks_runner; "
                     "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        conn.execute("REVOKE EXECUTE ON FUNCTION webhooks.maintain FROM webhooks_runner")
    try:
        async with receiver() as r:
            create_webhook(db, r.url)
            insert(db, 10)
            config = runner_config(make_conninfo(db, user="maintain_runner"), maintain_interval=0.2)
            async with running(config) as runner:
                with psycopg.connect(db, autocommit=True) as conn:
                    def delivered() -> bool:
                        return conn.execute("SELECT count(*) FROM webhooks.deliveries "
                                            "WHERE status = 'delivered'").fetchone() == (10,)

                    assert await eventually(delivered, timeout=20)
                    assert await eventually(lambda: runner.maintainer.failures >= 2, timeout=20)
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("GRANT EXECUTE ON FUNCTION webhooks.maintain TO webhooks_runner")
            with contextlib.suppress(psycopg.Error):  # roles are cluster-wide: leave none behind
                conn.execute("DROP ROLE IF EXISTS maintain_runner")
    assert any("maintain failed" in rec.getMessage() for rec in caplog.records)


@pytest.mark.parametrize("level", ["repeatable read", "serializable"])
def test_maintain_and_purge_refuse_a_snapshot_that_cannot_see_late_work(db: str, level: str) -> None:
    """Both check again, in a statement of their own, what committed meanwhile (a late write into a
    closed block, a replay): a snapshot held from the first statement would not see it."""
    for call in ("SELECT * FROM webhooks.maintain()", "SELECT * FROM webhooks.purge('0')"):
        with psycopg.connect(db) as conn:
            conn.execute(f"SET TRANSACTION ISOLATION LEVEL {level}")
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(call)
            assert refused.value.sqlstate == "WH057"
            assert refused.value.diag.message_primary == (
                f"transaction_isolation: {call.split('.')[1].split('(')[0]}() needs READ COMMITTED,"
                f" and this transaction is {level.upper()}")
    with psycopg.connect(db) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        assert conn.execute("SELECT busy FROM webhooks.maintain()").fetchone() == (False,)


async def test_the_runner_and_the_cli_keep_read_committed_whatever_the_database_default(db: str) -> None:
    from pgwebhooks.cli.common import sql_api
    from pgwebhooks.connection import connect

    with psycopg.connect(db, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        conn.execute(f"ALTER DATABASE {name} SET default_transaction_isolation = 'repeatable read'")
    with psycopg.connect(db, autocommit=True) as plain, pytest.raises(psycopg.Error) as refused:
        plain.execute("SELECT * FROM webhooks.maintain()")
    assert refused.value.sqlstate == "WH057"
    runner = await connect(db)
    try:
        assert await (await runner.execute("SHOW transaction_isolation")).fetchone() == ("read committed",)
        assert await (await runner.execute("SELECT busy FROM webhooks.maintain()")).fetchone() == (False,)
    finally:
        await runner.close()
    with sql_api(db) as cli:
        assert cli.execute("SELECT deliveries FROM webhooks.purge('1 day')").fetchone() == {"deliveries": 0}
