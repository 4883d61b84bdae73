"""What capture costs the writer: one row per transaction (pgbench) and bulk writes.

No runner runs here: the writer's cost is the capture trigger and the outbox rows it writes, and
fan-out to deliveries happens later, in claim(). Webhook URLs are therefore never contacted.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import peers
import psycopg
from common import BenchError, Env, cpu_seconds, create_orders, create_webhook, median
from report import Result, info, ratio

UNUSED_URL = "http://127.0.0.1:9/never-contacted"

PGBENCH_SCRIPT = """\\set cid random(1, 10000)
\\set cents random(100, 1000000)
INSERT INTO {table} (customer_id, amount, status) VALUES (:cid, :cents / 100.0, 'new');
"""

WAITING = "1 webhook, a runner waiting"
TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


def _dbname(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]


def _pgbench(env: Env, dbname: str, script: Path, seconds: float) -> float:
    server = env.server
    args = [str(server.bindir / "pgbench"), "-n", "-M", "prepared", "-c", "2", "-j", "2", "-T", str(int(seconds)),
            "-f", str(script), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", dbname]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"pgbench did not finish within {seconds + 60:.0f}s") from exc
    found = TPS.search(proc.stdout)
    if proc.returncode != 0 or not found:
        raise BenchError(f"pgbench failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    return float(found.group(1))


# What each loop iteration writes: one row, or nothing (a statement whose rows were all filtered
# out, as an ORM's conditional write often is: row triggers never fire for it, statement ones do).
ONE_ROW = "INSERT INTO {table} (customer_id, amount, status) VALUES (i % 10000 + 1, 12.5, 'new')"
NO_ROW = "INSERT INTO {table} (customer_id, amount, status) SELECT i, 12.5, 'new' WHERE i < 0"


def _server_cpu_per_insert(dsn: str, table: str, inserts: int = 20_000, rounds: int = 3,
                           statement: str = ONE_ROW) -> float:
    """Microseconds of the server process's CPU per INSERT statement (one row by default), the
    trigger included and the commit excluded (rolled back): the capture's own cost, which CPU
    time shows steadier than tps on a machine whose other processes come and go."""
    loop = f"DO $$ BEGIN FOR i IN 1..{inserts} LOOP {statement.format(table=table)}; END LOOP; END $$"
    samples = []
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        conn.execute(loop.replace(str(inserts), "500"))  # warm-up: plans and caches
        conn.rollback()
        for _ in range(rounds):
            before = cpu_seconds(row[0])
            conn.execute(loop)
            samples.append((cpu_seconds(row[0]) - before) / inserts * 1e6)
            conn.rollback()
    return median(samples)


def bench_single_row(env: Env, seconds: float, rounds: int) -> list[Result]:
    section = ("1 write path, one row per transaction (pgbench -c 2 -j 2, synchronous_commit=off; "
               "peers written from their public documentation, tests/bench/peers.py)")
    dsn = env.fresh_db("pgbench")
    dbname = _dbname(dsn)
    variants = {"none": "orders_none", **{kind: f"orders_{kind.split('-')[0]}" for kind in peers.KINDS},
                "1 webhook": "orders_hook1", "3 webhooks": "orders_hook3",
                # The same table and webhook while an idle runner waits: every commit NOTIFYs.
                WAITING: "orders_hook1"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in set(variants.values()):
            create_orders(conn, table)
        for kind in peers.KINDS:
            peers.install(conn, kind, variants[kind])
        create_webhook(conn, "pgbench-one", UNUSED_URL, "orders_hook1")
        for i in range(3):
            create_webhook(conn, f"pgbench-three-{i}", UNUSED_URL, "orders_hook3")
        # For the pgbench sessions only: the server itself keeps default durability.
        conn.execute(f"ALTER DATABASE {dbname} SET synchronous_commit = off")
    scripts = {}
    for label, table in variants.items():
        scripts[label] = env.workdir / f"pgbench-{table}.sql"
        scripts[label].write_text(PGBENCH_SCRIPT.format(table=table))

    def checkpoint() -> None:
        # Each run starts from a clean checkpoint, so none pays for another's dirty buffers.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")

    # A session registered as a waiting runner (next_due_in) for the WAITING runs only.
    runner = psycopg.connect(dsn, autocommit=True)
    try:
        for label in variants:  # warm-up: prepared plans, table files, caches; not recorded
            _pgbench(env, dbname, scripts[label], 1)
        tps: dict[str, list[float]] = {label: [] for label in variants}
        for _ in range(rounds):
            for label in variants:  # interleaved A, B, C, A, B, C...: drift in the machine hits all alike
                checkpoint()
                runner.execute("SELECT webhooks.next_due_in()" if label == WAITING else "SELECT webhooks.runner_busy()")
                tps[label].append(_pgbench(env, dbname, scripts[label], seconds))
    finally:
        runner.close()
    med = {label: median(v) for label, v in tps.items()}
    cpu = {label: _server_cpu_per_insert(dsn, variants[label]) for label in variants if label != WAITING}
    idle = {label: _server_cpu_per_insert(dsn, variants[label], statement=NO_ROW)
            for label in ("none", "naive", "1 webhook")}
    env.drop_db(dsn)
    shares = {label: med[label] / med["none"] for label in variants}
    best_peer = max(("naive", "supabase-style", "hasura-style"), key=lambda k: shares[k])
    results = [info(section, f"tps {label} / no trigger", f"{shares[label]:.2f}x", f"{med[label]:.0f} tps")
               for label in peers.KINDS]
    limit = round(max(0.70, shares[best_peer]), 2)
    results.append(ratio(
        section, "tps 1 webhook / no trigger", shares["1 webhook"], limit, True,
        f"{med['1 webhook']:.0f} vs {med['none']:.0f} tps (median of {rounds}x{seconds:g}s); "
        f"target: >= 0.70x and >= the best peer ({best_peer})", tps=tps, median_tps=med))
    results.append(ratio(
        section, "tps 3 webhooks / no trigger", shares["3 webhooks"], 0.65, True,
        f"{med['3 webhooks']:.0f} vs {med['none']:.0f} tps"))
    results.append(info(section, "server CPU per one-row INSERT, 1 webhook", f"{cpu['1 webhook']:.1f} us",
                        "commit excluded, one session, median of 3x20,000; "
                        + ", ".join(f"{label} {v:.1f}" for label, v in cpu.items() if label != "1 webhook")))
    results.append(info(section, "server CPU per INSERT of no row, 1 webhook", f"{idle['1 webhook']:.1f} us",
                        "INSERT ... SELECT whose WHERE is false: the statement trigger still runs; "
                        f"none {idle['none']:.1f}, naive {idle['naive']:.1f} (a row trigger does not fire)"))
    results.append(info(section, "tps 1 webhook, a runner waiting / no trigger", f"{shares[WAITING]:.2f}x",
                        f"{med[WAITING]:.0f} tps; every commit NOTIFYs (an idle runner); a busy one is not waiting"))
    return results


def _bulk_rows(rows: int) -> bytes:
    # COPY text format, the same values INSERT ... SELECT generates.
    return "".join(
        f"{g % 10000 + 1}\t{(g % 100000) / 100:.2f}\t{'refunded' if g % 10 == 0 else 'paid'}\n"
        for g in range(1, rows + 1)
    ).encode()


def bench_bulk(env: Env, rows: int, repeats: int) -> list[Result]:
    section = f"2 write path, bulk ({rows:,} rows in one statement; peers as in 1)"
    dsn = env.fresh_db("bulk")
    variants = {"none": "bulk_none", **{kind: f"bulk_{kind.split('-')[0]}" for kind in peers.KINDS},
                "pgwebhooks": "bulk_pgwebhooks"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in variants.values():
            create_orders(conn, table)
        for kind in peers.KINDS:
            peers.install(conn, kind, variants[kind])
        create_webhook(conn, "bulk-one", UNUSED_URL, "bulk_pgwebhooks")
    copy_data = _bulk_rows(rows)
    insert_sql = (
        "INSERT INTO {table} (customer_id, amount, status)"
        " SELECT g %% 10000 + 1, (g %% 100000) / 100.0, CASE WHEN g %% 10 = 0 THEN 'refunded' ELSE 'paid' END"
        " FROM generate_series(1, %s) g"
    )
    tables = ", ".join([*variants.values(), *peers.OUTBOXES.values()])

    def reset(conn: psycopg.Connection[Any]) -> None:
        # Every run starts from empty tables and outboxes and a fresh checkpoint.
        conn.execute(f"TRUNCATE {tables}, webhooks.captures, webhooks.events, webhooks.deliveries RESTART IDENTITY")
        conn.execute("CHECKPOINT")

    def timed(conn: psycopg.Connection[Any], method: str, table: str) -> float:
        started = time.perf_counter()
        with conn.transaction():
            if method == "INSERT ... SELECT":
                conn.execute(insert_sql.format(table=table), (rows,))
            else:
                with conn.cursor() as cur, cur.copy(f"COPY {table} (customer_id, amount, status) FROM STDIN") as cp:
                    cp.write(copy_data)
        return time.perf_counter() - started  # the commit (a WAL flush) included

    def check(conn: psycopg.Connection[Any], label: str) -> None:
        # The run must really have captured every row, or the comparison means nothing.
        if label == "pgwebhooks":
            query = "SELECT coalesce(sum(row_count), 0) FROM webhooks.captures"
        else:
            query = peers.STORED.get(label)
        if query is None:
            return
        row = conn.execute(query).fetchone()
        if row is None or row[0] != rows:
            raise BenchError(f"{label}: captured {row}, expected {rows}")

    methods = ("INSERT ... SELECT", "COPY")
    seconds: dict[str, dict[str, list[float]]] = {m: {v: [] for v in variants} for m in methods}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for method in methods:  # warm-up, not recorded: plan and function caches, relation files
            for table in variants.values():
                reset(conn)
                timed(conn, method, table)
        for _ in range(repeats):
            for method in methods:
                for label, table in variants.items():
                    reset(conn)
                    seconds[method][label].append(timed(conn, method, table))
                    check(conn, label)
    env.drop_db(dsn)
    results = []
    for method in methods:
        med = {label: median(v) for label, v in seconds[method].items()}
        peer_ratios = ", ".join(f"{kind} {med[kind] / med['none']:.2f}x" for kind in peers.KINDS)
        results.append(ratio(
            section, f"{method}: 1 webhook / no trigger", med["pgwebhooks"] / med["none"], 2.0, False,
            f"{med['pgwebhooks']:.3f}s vs {med['none']:.3f}s (median of {repeats}); peers: {peer_ratios}",
            seconds=seconds[method], median_seconds=med,
        ))
    return results
