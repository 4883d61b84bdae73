"""Today's outbox beside a prototype of the next one (outbox_prototype.sql), on one server.

    .venv/bin/python tests/bench/outbox_prototype.py --dsn DSN [--rows 20000] [--repeat 3]
                                                     [--retention 1000000]

The prototype is docs/outbox-design.md's "Next": an insert-only capture log partitioned by id,
read by per-webhook cursors in (xid, id) order; a delivery exists once claimed, as an attempt row
partitioned like the log and settled in place (a HOT update); each claim's lease is one row, and
failures wait in a small retries table (outbox_prototype_faults.py drives those under faults).
It covers one-row captures and one webhook; nothing else of the product. What it answers, side by
side with today's code installed by `pgwebhooks migrate` in the same database (every delivery
answered 2xx):

1. server CPU per one-row INSERT (the capture);
2. server CPU per delivery of the claim(200) + complete() loop, no HTTP (both render the
   standard body and sign it with webhooks._sign_headers; today's claim also does fairness,
   circuits and rate limits, the prototype none of them);
3. bytes and dead row versions per delivered event, writes and drains interleaved 200 at a
   time with autovacuum off (pgstattuple, before any VACUUM);
4. retention of `--retention` finished deliveries: dropping the prototype's partitions, against
   DELETE of the same rows from unpartitioned copies;
5. a writer holding its transaction open: what claim(200) costs while the rows committed after
   it are delivered ahead of the cursor, and once it ends and the cursor passes them;
6. writers committing out of xid order while claims run: every committed row delivered once;
7. 100,000 publish() calls in one transaction (`make bench` row 9): today's, and a log row.

The server must run on this machine (CPU is read from /proc/<backend>/stat).
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from common import cpu_seconds, create_orders
from retention import fill_finished, maintain_all

HERE = Path(__file__).resolve().parent
TREE = HERE.parents[1]
DATABASE = "outbox_prototype"
INSERT = "INSERT INTO {t} (customer_id, amount, status) VALUES (i % 10000 + 1, (i % 100000) / 100.0, 'paid')"


def install(dsn: str) -> str:
    with psycopg.connect(dsn + " dbname=postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    target = f"{dsn} dbname={DATABASE}"
    subprocess.run([str(TREE / ".venv/bin/pgwebhooks"), "migrate", "--dsn", target], check=True,
                   stdout=subprocess.DEVNULL)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute((HERE / "outbox_prototype.sql").read_text())
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
    return target


def fresh_pair(conn: psycopg.Connection[Any], tag: str) -> tuple[str, int]:
    """A table watched by a webhook today (`today_<tag>`) and one by the prototype (`proto_<tag>`);
    returns the webhook id (shared: the prototype signs with its secrets) and the proto route."""
    conn.execute("DROP SCHEMA IF EXISTS outbox_proto CASCADE")
    conn.execute((HERE / "outbox_prototype.sql").read_text())
    conn.execute("SELECT outbox_proto.add_partition(1, 10000000)")
    for name in (f"today_{tag}", f"proto_{tag}"):
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        create_orders(conn, name)
    conn.execute("DELETE FROM webhooks.webhooks")
    hook = conn.execute("SELECT id FROM webhooks.create_webhook(%s, 'http://127.0.0.1:9/x', %s)",
                        (f"w_{tag}", json.dumps([{"table": f"today_{tag}"}]))).fetchone()[0]
    route = conn.execute("SELECT %s::regclass::oid", (f"proto_{tag}",)).fetchone()[0]
    conn.execute(f"CREATE TRIGGER capture AFTER INSERT ON proto_{tag} REFERENCING NEW TABLE AS new_rows"
                 f" FOR EACH STATEMENT EXECUTE FUNCTION outbox_proto.capture('{{{hook}}}')")
    conn.execute("INSERT INTO outbox_proto.cursors (webhook_id, route) VALUES (%s, %s)", (hook, route))
    return str(hook), int(route)


def write_cpu(conn: psycopg.Connection[Any], table: str, rows: int) -> float:
    pid = conn.info.backend_pid
    before = cpu_seconds(pid)
    conn.execute(f"DO $$ BEGIN FOR i IN 1..{rows} LOOP {INSERT.format(t=table)}; END LOOP; END $$")
    return 1e6 * (cpu_seconds(pid) - before) / rows


def drain_today(conn: psycopg.Connection[Any], limit: int | None = None) -> int:
    done = 0
    while limit is None or done < limit:
        rows = conn.execute("SELECT delivery_id, attempt FROM webhooks.claim(200)").fetchall()
        if not rows:
            return done
        results = [{"delivery_id": d, "attempt": a, "status_code": 200, "latency_ms": 3, "response_excerpt": "ok"}
                   for d, a in rows]
        conn.execute("SELECT count(*) FROM webhooks.complete(%s::jsonb)", (json.dumps(results),))
        done += len(rows)
    return done


def drain_proto(conn: psycopg.Connection[Any], hook: str, route: int, limit: int | None = None,
                patience: str = "1 s") -> int:
    done = 0
    while limit is None or done < limit:
        rows = conn.execute("SELECT log_id, attempt FROM outbox_proto.claim(%s, %s, 200, %s)",
                            (hook, route, patience)).fetchall()
        if not rows:
            return done
        results = [{"log_id": i, "attempt": a, "status_code": 200, "latency_ms": 3, "response_excerpt": "ok"}
                   for i, a in rows]
        conn.execute("SELECT outbox_proto.complete(%s, %s::jsonb)", (hook, json.dumps(results)))
        done += len(rows)
        if done % 2000 == 0:
            conn.execute("SELECT outbox_proto.forget_leases()")  # maintain()'s, in the product
    return done


def timed_cpu(conn: psycopg.Connection[Any], work: Any) -> tuple[float, int]:
    pid = conn.info.backend_pid
    before = cpu_seconds(pid)
    done = work()
    return cpu_seconds(pid) - before, done


def bench_cpu(conn: psycopg.Connection[Any], rows: int, repeat: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in ("write none", "write today", "write proto",
                                                   "loop today", "loop proto")}
    for run in range(repeat):
        hook, route = fresh_pair(conn, f"c{run}")
        proto_drain = functools.partial(drain_proto, conn, hook, route, patience="0 s")
        conn.execute(f"DROP TABLE IF EXISTS plain_c{run}")
        create_orders(conn, f"plain_c{run}")
        out["write none"].append(write_cpu(conn, f"plain_c{run}", rows))
        out["write today"].append(write_cpu(conn, f"today_c{run}", rows))
        out["write proto"].append(write_cpu(conn, f"proto_c{run}", rows))
        conn.execute("VACUUM ANALYZE")
        seconds, done = timed_cpu(conn, lambda: drain_today(conn))
        out["loop today"].append(1e6 * seconds / max(done, 1))
        seconds, done = timed_cpu(conn, proto_drain)
        out["loop proto"].append(1e6 * seconds / max(done, 1))
        delivered_once(conn)
    return out


def delivered_once(conn: psycopg.Connection[Any]) -> None:
    """The prototype's cursor must hand out every committed row of the log exactly once."""
    logged, outcomes, distinct = conn.execute(
        "SELECT (SELECT count(*) FROM outbox_proto.log), count(*), count(DISTINCT log_id)"
        " FROM outbox_proto.outcomes").fetchone()
    if not logged == outcomes == distinct:
        raise SystemExit(f"prototype lost or repeated deliveries: {logged} logged, {outcomes} outcomes,"
                         f" {distinct} distinct")


def sizes(conn: psycopg.Connection[Any], tables: list[str]) -> tuple[int, int]:
    live = dead = 0
    for table in tables:
        row = conn.execute("SELECT s.tuple_len + pg_indexes_size(%s::regclass), s.dead_tuple_count"
                           " FROM pgstattuple(%s) s", (table, table)).fetchone()
        live += row[0]
        dead += row[1]
    return live, dead


def bench_storage(conn: psycopg.Connection[Any], rows: int) -> dict[str, tuple[float, float]]:
    hook, route = fresh_pair(conn, "s")
    for table in ("captures", "events", "deliveries", "delivery_attempts"):
        conn.execute(f"ALTER TABLE webhooks.{table} SET (autovacuum_enabled = false)")
    for table in ("log_1", "outcomes_1", "cursors", "leases"):
        conn.execute(f"ALTER TABLE outbox_proto.{table} SET (autovacuum_enabled = false)")
    conn.execute("TRUNCATE webhooks.captures, webhooks.events, webhooks.deliveries, webhooks.delivery_attempts")
    conn.execute("VACUUM webhooks.captures, webhooks.deliveries, webhooks.delivery_attempts")
    for _ in range(rows // 200):
        for i in range(200):
            conn.execute(f"INSERT INTO today_s (customer_id, amount, status) VALUES ({i}, 19.99, 'new')")
            conn.execute(f"INSERT INTO proto_s (customer_id, amount, status) VALUES ({i}, 19.99, 'new')")
        drain_today(conn)
        drain_proto(conn, hook, route, patience="0 s")
    delivered_once(conn)
    conn.execute("SELECT outbox_proto.forget_leases()")  # settled leases: gone, as maintain() would
    today = sizes(conn, ["webhooks.captures", "webhooks.events", "webhooks.deliveries", "webhooks.delivery_attempts"])
    proto = sizes(conn, ["outbox_proto.log_1", "outbox_proto.outcomes_1", "outbox_proto.cursors",
                         "outbox_proto.leases"])
    return {"today": (today[0] / rows, today[1] / rows), "proto": (proto[0] / rows, proto[1] / rows)}


def bench_retention(conn: psycopg.Connection[Any], count: int) -> dict[str, float]:
    """Seconds to remove `count` finished one-row deliveries with their attempts and captures:
    today's maintain() (the outbox filled as `make bench` row 12 fills it) and a VACUUM after it,
    against dropping the prototype's log and outcome partitions holding the same rows."""
    hook, _route = fresh_pair(conn, "r")
    conn.execute("DROP TABLE IF EXISTS orders")
    create_orders(conn, "orders")  # the table fill_finished names
    fill_finished(conn, hook, count)
    conn.execute("VACUUM ANALYZE")
    maintained, _calls, _removed = maintain_all(conn)
    started = time.perf_counter()
    for table in ("captures", "events", "deliveries", "delivery_attempts"):
        conn.execute(f"VACUUM webhooks.{table}")
    vacuumed = time.perf_counter() - started
    conn.execute("DROP SCHEMA IF EXISTS outbox_proto CASCADE")
    conn.execute((HERE / "outbox_prototype.sql").read_text())
    conn.execute(f"SELECT outbox_proto.add_partition(1, {count})")
    conn.execute(f"SELECT outbox_proto.add_partition({count + 1}, {count})")
    conn.execute("INSERT INTO outbox_proto.log (id, route, operation, schema_name, table_name, webhook_ids, record)"
                 " SELECT g, 1, 'INSERT', 'public', 'orders', '{00000000-0000-0000-0000-000000000001}',"
                 " json_build_object('id', g, 'amount', g % 1000)"
                 f" FROM generate_series(1, {count}) g")
    conn.execute("INSERT INTO outbox_proto.outcomes (log_id, webhook_id, attempt, status_code, latency_ms,"
                 " response_excerpt, leased_until, lease_id) SELECT g, '00000000-0000-0000-0000-000000000001', 1,"
                 " 200, 12, 'ok', now(), g / 200"
                 f" FROM generate_series(1, {count}) g")
    conn.execute("VACUUM ANALYZE outbox_proto.log, outbox_proto.outcomes")
    started = time.perf_counter()
    with conn.transaction():
        # The lock a DROP takes on the parent: never wait behind a long reader, try again later.
        conn.execute("SET LOCAL lock_timeout = '100ms'")
        conn.execute("DROP TABLE outbox_proto.outcomes_1, outbox_proto.log_1")
    dropped = time.perf_counter() - started
    return {"maintain": maintained, "vacuum": vacuumed, "drop": dropped}


def bench_open_writer(target: str, conn: psycopg.Connection[Any], rows: int) -> dict[str, Any]:
    """claim(200) per call while a writer holds its transaction open and `rows` one-row
    transactions commit after it (all delivered ahead), then once it has ended."""
    hook, route = fresh_pair(conn, "w")
    calm = []
    for _ in range(5):
        conn.execute(f"DO $$ BEGIN FOR i IN 1..200 LOOP {INSERT.format(t='proto_w')}; END LOOP; END $$")
        started = time.perf_counter()
        drain_proto(conn, hook, route, limit=1, patience="0 s")
        calm.append(1e3 * (time.perf_counter() - started))
    with psycopg.connect(target) as writer:
        writer.execute("CREATE TEMP TABLE held (x int)")
        writer.execute("INSERT INTO held VALUES (1)")  # an xid, then idle in transaction
        for _ in range(rows // 200):
            conn.execute("BEGIN")
            for _ in range(200):
                conn.execute("INSERT INTO proto_w (customer_id, amount, status) VALUES (1, 2.50, 'x')")
            conn.execute("COMMIT")
        ahead = []
        while True:
            started = time.perf_counter()
            got = drain_proto(conn, hook, route, limit=1, patience="0 s")
            ahead.append(1e3 * (time.perf_counter() - started))
            if not got:
                break
        writer.rollback()
    # The cursor crosses the rows delivered ahead: a claim may return nothing while it moves.
    started = time.perf_counter()
    passed = 0
    for _ in range(1000):
        before = conn.execute("SELECT xid::text, id FROM outbox_proto.cursors").fetchone()
        passed += drain_proto(conn, hook, route, limit=1, patience="0 s")
        if conn.execute("SELECT xid::text, id FROM outbox_proto.cursors").fetchone() == before:
            break
    delivered_once(conn)
    return {"calm": statistics.median(calm), "ahead_first": ahead[0], "ahead_last": ahead[-2] if len(ahead) > 1
            else ahead[0], "ahead_calls": len(ahead) - 1, "pass_ms": 1e3 * (time.perf_counter() - started),
            "pass_sent": passed}


EVENT_DATA = "jsonb_build_object('order_id', g, 'amount', g * 100, 'currency', 'usd')"


def bench_publish(conn: psycopg.Connection[Any], calls: int, repeat: int) -> dict[str, float]:
    """Seconds for `calls` publish() calls in one transaction, as `make bench` row 9 times them:
    today's, the prototype's (a log row), and one plain INSERT per event."""
    conn.execute("DROP SCHEMA IF EXISTS outbox_proto CASCADE")
    conn.execute((HERE / "outbox_prototype.sql").read_text())
    conn.execute("SELECT outbox_proto.add_partition(1, 10000000)")
    conn.execute("DROP TABLE IF EXISTS plain_events")
    conn.execute("CREATE TABLE plain_events (id bigserial PRIMARY KEY, event_type text NOT NULL,"
                 " data jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
    conn.execute("DELETE FROM webhooks.webhooks")
    conn.execute("SELECT webhooks.create_event_type('order.completed') WHERE NOT EXISTS"
                 " (SELECT FROM webhooks.event_types WHERE name = 'order.completed')")
    hook = conn.execute("SELECT id FROM webhooks.create_webhook('events', 'http://127.0.0.1:9/x',"
                        " '[{\"event_type\": \"order.*\"}]')").fetchone()[0]
    conn.execute("INSERT INTO outbox_proto.event_routes VALUES ('order.completed', 1, ARRAY[%s::uuid])", (hook,))
    variants = {
        "today": f"SELECT count(webhooks.publish('order.completed', {EVENT_DATA})) FROM generate_series(1, {calls}) g",
        "proto": (f"SELECT count(outbox_proto.publish('order.completed', {EVENT_DATA}))"
                  f" FROM generate_series(1, {calls}) g"),
        "plain": (f"DO $$ BEGIN FOR g IN 1..{calls} LOOP INSERT INTO plain_events (event_type, data)"
                  f" VALUES ('order.completed', {EVENT_DATA}); END LOOP; END $$"),
    }
    seconds: dict[str, list[float]] = {label: [] for label in variants}
    for run in range(repeat + 1):  # the first round warms up
        for label, statement in variants.items():
            conn.execute("TRUNCATE plain_events, webhooks.captures, webhooks.deliveries, outbox_proto.log")
            conn.execute("CHECKPOINT")
            started = time.perf_counter()
            with conn.transaction():
                conn.execute(statement)
            if run:
                seconds[label].append(time.perf_counter() - started)
    return {label: statistics.median(values) for label, values in seconds.items()}


def check_concurrent_writers(target: str, conn: psycopg.Connection[Any], seconds: float = 3.0) -> int:
    """Writers whose transactions commit out of xid order (random sizes and pauses, some holding
    their transaction open for 0.3 s now and then) while a claimer drains with no patience: every
    committed row must be delivered exactly once, none of a rolled-back transaction."""
    hook, route = fresh_pair(conn, "x")
    stop = threading.Event()

    def write(seed: int) -> None:
        rng = random.Random(seed)
        with psycopg.connect(target) as writer:
            while not stop.is_set():
                for _ in range(rng.randint(1, 20)):
                    writer.execute("INSERT INTO proto_x (customer_id, amount, status) VALUES (%s, 1.5, 'w')", (seed,))
                    if rng.random() < 0.05:
                        time.sleep(rng.choice((0.001, 0.01, 0.3)))
                if rng.random() < 0.1:
                    writer.rollback()
                else:
                    writer.commit()

    writers = [threading.Thread(target=write, args=(seed,)) for seed in range(4)]
    for thread in writers:
        thread.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        drain_proto(conn, hook, route, limit=1, patience="0 s")
    stop.set()
    for thread in writers:
        thread.join(timeout=10)
    for _ in range(1000):  # the writers have ended: the cursor reaches the end
        before = conn.execute("SELECT xid::text, id FROM outbox_proto.cursors").fetchone()
        drain_proto(conn, hook, route, patience="0 s")
        if conn.execute("SELECT xid::text, id FROM outbox_proto.cursors").fetchone() == before:
            break
    delivered_once(conn)
    return int(conn.execute("SELECT count(*) FROM outbox_proto.log").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True, help="libpq DSN of a local server, without dbname")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--retention", type=int, default=1000000)
    args = parser.parse_args()
    target = install(args.dsn)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        cpu = bench_cpu(conn, args.rows, args.repeat)
        print(f"\n{'measurement':58} {'today':>10} {'prototype':>10}")
        print("-" * 80)
        med = {k: statistics.median(v) for k, v in cpu.items()}
        print(f"{'server CPU per one-row INSERT, us (no trigger ' + format(med['write none'], '.1f') + ')':58}"
              f" {med['write today']:>10.1f} {med['write proto']:>10.1f}")
        print(f"{'server CPU per delivery, claim(200) + complete(), us':58}"
              f" {med['loop today']:>10.1f} {med['loop proto']:>10.1f}")
        store = bench_storage(conn, args.rows)
        print(f"{'bytes per delivered one-row event (live rows + indexes)':58}"
              f" {store['today'][0]:>10.0f} {store['proto'][0]:>10.0f}")
        print(f"{'dead row versions per event, before VACUUM':58}"
              f" {store['today'][1]:>10.2f} {store['proto'][1]:>10.2f}")
        kept = bench_retention(conn, args.retention)
        print(f"{f'removing {args.retention:,} finished deliveries, s':58}"
              f" {kept['maintain']:>10.2f} {kept['drop']:>10.3f}   (maintain(), then VACUUM"
              f" {kept['vacuum']:.2f} s; DROP of two partitions)")
        published = bench_publish(conn, 100_000, args.repeat)
        print(f"{'100,000 publish() calls in one transaction / a plain INSERT each':58}"
              f" {published['today'] / published['plain']:>9.2f}x {published['proto'] / published['plain']:>9.2f}x"
              f"   (plain {published['plain']:.3f} s)")
        held = bench_open_writer(target, conn, args.rows)
        print(f"\nprototype, a writer holding its transaction open while {args.rows:,} rows commit after it:")
        print(f"  claim(200) with no open writer (median of 5): {held['calm']:.1f} ms")
        print(f"  claim(200) delivering ahead of the cursor: first {held['ahead_first']:.1f} ms,"
              f" last {held['ahead_last']:.1f} ms ({held['ahead_calls']} calls)")
        print(f"  once it ended, the cursor passes them: {held['pass_ms']:.1f} ms, {held['pass_sent']} sent again")
        written = check_concurrent_writers(target, conn)
        print(f"  4 writers committing out of xid order, claims meanwhile: {written:,} rows, each delivered once")
        print("\nruns: " + "; ".join(f"{k} " + ", ".join(f"{v:.1f}" for v in vals) for k, vals in cpu.items()))


if __name__ == "__main__":
    main()
