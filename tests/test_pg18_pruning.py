"""PostgreSQL 18.0 to 18.6 crash in run-time partition pruning after an EvalPlanQual recheck.

A READ COMMITTED statement that locks or changes a row another transaction changed meanwhile
re-reads it (EvalPlanQual). In those releases the recheck rebuilds the statement's run-time
pruning state in memory it frees afterwards, while the statement goes on pruning through it
(fixed upstream after 18.6, commit 1b5dd3a). Our outbox is partitioned and pruned by
parameters, so a fan-out that waited for a webhook row crashed the backend in
perform_pruning_base_step about every other time. On those releases our functions that lock or
change rows run without run-time pruning (096_pg18_pruning.sql). These tests make the recheck
happen on purpose on every version in the matrix, and check which functions carry the setting.
"""

from __future__ import annotations

import threading
import time

import psycopg
from psycopg.types.json import Jsonb

from pgwebhooks import migrations

ROUNDS = 8  # on 18.6 without the setting, about half of the rounds crashed the backend
WARM_UP = 6
AFFECTED = range(180000, 180007)
PRUNING_OFF = "enable_partition_pruning=off"


def _server_version(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT current_setting('server_version_num')").fetchone()[0])


def _wait_until_blocked(conn: psycopg.Connection, pid: int) -> bool:
    for _ in range(100):  # bounded: 5 s
        if conn.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                        (pid,)).fetchone()[0]:
            return True
        time.sleep(0.05)
    return False


def _fan_out(conn: psycopg.Connection, made: list[int], failed: list[BaseException]) -> None:
    try:
        made.append(conn.execute("SELECT webhooks._fan_out(100, 0)").fetchone()[0])
    except BaseException as exc:  # reported by the test, in its own thread
        failed.append(exc)


def test_a_fan_out_rechecking_a_webhook_changed_while_it_waited_survives(db: str) -> None:
    """The fan-out locks each webhook it fans out to (FOR KEY SHARE). A webhook row locked FOR
    UPDATE and then changed makes it wait and then recheck: the statement must finish, and make
    exactly one delivery per row, round after round."""
    with psycopg.connect(db, autocommit=True) as admin:
        admin.execute("CREATE TABLE items (id serial PRIMARY KEY, label text)")
        hook = admin.execute("SELECT (webhooks.create_webhook(name => 'rechecked', url => 'http://127.0.0.1:9/x',"
                             " events => %s)).id", (Jsonb([{"table": "items"}]),)).fetchone()[0]
        # With statistics the planner picks the plan that prunes at run time; on a database
        # never analyzed it did not, and no recheck crashed.
        for _ in range(WARM_UP):
            admin.execute("INSERT INTO items (label) SELECT 'x' FROM generate_series(1, 3)")
            admin.execute("SELECT webhooks._fan_out(100, 0)")
        admin.execute("ANALYZE")
        for round_ in range(ROUNDS):
            with psycopg.connect(db, autocommit=True) as fanner:
                # Three rows in one statement: one capture, fanned out by _fan_out (not a route).
                admin.execute("INSERT INTO items (label) SELECT 'x' FROM generate_series(1, 3)")
                admin.execute("BEGIN")
                admin.execute("SELECT 1 FROM webhooks.webhooks WHERE id = %s FOR UPDATE", (hook,))
                made: list[int] = []
                failed: list[BaseException] = []
                worker = threading.Thread(target=_fan_out, args=(fanner, made, failed))
                worker.start()
                blocked = _wait_until_blocked(admin, fanner.info.backend_pid)
                admin.execute("UPDATE webhooks.webhooks SET description = coalesce(description, '') || '.'"
                              " WHERE id = %s", (hook,))
                admin.execute("COMMIT")
                worker.join(30)
                assert blocked, f"round {round_}: the fan-out never waited for the webhook's row"
                assert not failed, f"round {round_}: {failed[0]!r}"
                assert made == [3], f"round {round_}: {made}"
        delivered = admin.execute("SELECT count(*), count(DISTINCT (capture_id, n)) FROM webhooks.deliveries"
                                  " WHERE webhook_id = %s", (hook,)).fetchone()
        assert delivered == (3 * (ROUNDS + WARM_UP),) * 2


def test_functions_that_lock_rows_run_without_pruning_only_where_it_crashes(conn: psycopg.Connection) -> None:
    version = _server_version(conn)
    settings = dict(conn.execute(
        "SELECT p.proname, %s = ANY (coalesce(p.proconfig, '{}')) FROM pg_proc p"
        " WHERE p.pronamespace = 'webhooks'::regnamespace AND p.prokind = 'f'", (PRUNING_OFF,)).fetchall())
    lockers = {"claim", "complete", "_fan_out", "_give_from_cursor", "maintain", "replay", "purge", "release"}
    if version in AFFECTED:
        assert {name for name in lockers if not settings[name]} == set()
    else:
        assert [name for name, off in settings.items() if off] == []
    # Never on a function the planner inlines into claim(), nor on the capture triggers, whose
    # SET clause every write would pay for.
    for name in ("_lock_exact", "_capture_statement", "_capture_row", "_capture_filtered", "_one_row_route"):
        assert not settings[name], name


def test_migrate_brings_the_setting_in_line_with_the_server(db: str) -> None:
    """A server upgraded past 18.6 (or a copy restored into another version) gets pruning back
    from the next `migrate`, and an affected one gets the setting back if it was taken off."""
    with psycopg.connect(db, autocommit=True) as conn:
        affected = _server_version(conn) in AFFECTED
        # The state the other kind of server would have left.
        action = "RESET enable_partition_pruning" if affected else "SET enable_partition_pruning = off"
        conn.execute(f"ALTER FUNCTION webhooks.claim {action}")
        migrations.migrate(db)
        config = conn.execute("SELECT proconfig FROM pg_proc WHERE oid = 'webhooks.claim'::regproc").fetchone()[0]
        assert (PRUNING_OFF in config) == affected
