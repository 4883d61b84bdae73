"""The server's CPU per delivery in the runner's loop, claim(200) then complete() of its results, no HTTP.

    .venv/bin/python tests/bench/server_cpu.py --dsn DSN [--rows 20000] [--repeat 3] [--tree DIR ...]

Each --tree is a checkout with its own .venv (default: this one); its `pgwebhooks migrate`
installs a fresh database, so several trees (before and after a change) are measured in one
run, interleaved, on the same server. One webhook, `rows` one-row captures of a 5-column table
with a numeric(12,2) column, drained by claim(200) and complete() of every result as a 200.
The CPU is the server backend's own (user + system from /proc/<pid>/stat), so the server must
run on this machine; claim() includes the fan-out it does ahead of each batch. Prints each
run and the median per tree, in microseconds per delivery. --functions adds, per tree, the
self time of each PL/pgSQL function (track_functions) in the last run; --prefan measures a queue
the statistics know is long (fanned out and analyzed first; claim() then fans nothing out);
--events publishes the events (publish(), 4 keys of data) instead of capturing row changes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from common import cpu_seconds, create_orders

HERE = Path(__file__).resolve().parents[2]


def install(tree: Path, dsn: str, database: str) -> None:
    with psycopg.connect(dsn + " dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
        conn.execute(f'CREATE DATABASE "{database}"')
    subprocess.run([str(tree / ".venv/bin/pgwebhooks"), "migrate", "--dsn", f"{dsn} dbname={database}"],
                   check=True, stdout=subprocess.DEVNULL, cwd=tree)


def drain(dsn: str, database: str, rows: int, functions: bool,
          prefan: bool = False, events: bool = False) -> tuple[float, float, list[tuple[str, float]]]:
    """Returns claim's and complete's CPU per delivery (us), and the functions' self times."""
    with psycopg.connect(f"{dsn} dbname={database}", autocommit=True) as conn:
        create_orders(conn, "orders")
        if events:
            conn.execute("SELECT webhooks.create_event_type('order.paid')")
            conn.execute("SELECT webhooks.create_webhook('o', 'http://127.0.0.1:9/x', '[\"order.paid\"]')")
            conn.execute(f"DO $$ BEGIN FOR i IN 1..{rows} LOOP PERFORM webhooks.publish('order.paid',"
                         " jsonb_build_object('id', i, 'customer_id', i % 10000 + 1, 'amount', (i % 100000) / 100.0,"
                         " 'status', 'paid')); END LOOP; END $$")
        else:
            conn.execute("SELECT webhooks.create_webhook('o', 'http://127.0.0.1:9/x', '[{\"table\": \"orders\"}]')")
            conn.execute(f"DO $$ BEGIN FOR i IN 1..{rows} LOOP INSERT INTO orders (customer_id, amount, status)"
                         " VALUES (i % 10000 + 1, (i % 100000) / 100.0, 'paid'); END LOOP; END $$")
        if prefan:
            conn.execute("SELECT webhooks._fan_out(%s, 0)", (rows,))
        conn.execute("VACUUM ANALYZE")
        if functions:
            conn.execute("SET track_functions = 'pl'")
            conn.execute("SELECT pg_stat_reset()")
        pid = conn.info.backend_pid
        conn.execute("SELECT count(*) FROM webhooks.claim(1)")  # plans cached, fan-out started
        claim_cpu = complete_cpu = 0.0
        done = 0
        deadline = time.monotonic() + 600
        for _ in range(rows * 2):
            if done >= rows - 1 or time.monotonic() > deadline:
                break
            start = cpu_seconds(pid)
            leases = conn.execute("SELECT delivery_id, attempt FROM webhooks.claim(200)").fetchall()
            middle = cpu_seconds(pid)
            claim_cpu += middle - start
            if not leases:
                time.sleep(0.01)
                continue
            report = [{"delivery_id": d, "attempt": a, "status_code": 200, "latency_ms": 3,
                       "response_excerpt": "ok"} for d, a in leases]
            conn.execute("SELECT count(*) FROM webhooks.complete(%s::jsonb)", (json.dumps(report),))
            complete_cpu += cpu_seconds(pid) - middle
            done += len(leases)
        if done < rows - 1:
            sys.exit(f"only {done} of {rows} deliveries were drained")
        spent: list[tuple[str, float]] = []
        if functions:
            time.sleep(0.6)  # the statistics collector's flush interval
            spent = [(name, ms) for name, ms in conn.execute(
                "SELECT funcname, self_time FROM pg_stat_user_functions WHERE schemaname = 'webhooks'"
                " ORDER BY self_time DESC LIMIT 15").fetchall()]
    return 1e6 * claim_cpu / done, 1e6 * complete_cpu / done, spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True,
                        help="a superuser connection to a server on this machine, without dbname"
                             " (e.g. 'host=/var/run/postgresql user=postgres'): its backends' CPU is read from /proc")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", type=Path, action="append")
    parser.add_argument("--database", default="d1_cpu")
    parser.add_argument("--functions", action="store_true")
    parser.add_argument("--prefan", action="store_true",
                        help="fan every capture out and ANALYZE first, as autovacuum does on a long queue"
                             " (claim() then does no fan-out)")
    parser.add_argument("--events", action="store_true", help="published events (publish()) instead of row changes")
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [HERE])]
    runs: dict[Path, list[tuple[float, float]]] = {t: [] for t in trees}
    for n in range(args.repeat):
        for i, tree in enumerate(trees):
            database = f"{args.database}_{i}"
            install(tree, args.dsn, database)
            claim, complete, spent = drain(args.dsn, database, args.rows, args.functions and n == args.repeat - 1,
                                          args.prefan, args.events)
            runs[tree].append((claim, complete))
            print(f"{tree}: run {n + 1}: claim {claim:.1f} us/delivery, complete {complete:.1f}", flush=True)
            for name, ms in spent:
                print(f"    {name:32s} {1000 * ms / args.rows:8.1f} us/delivery self time")
    for tree, values in runs.items():
        claim = statistics.median(v[0] for v in values)
        complete = statistics.median(v[1] for v in values)
        print(f"median {tree}: claim {claim:.1f} us/delivery, complete {complete:.1f}, total {claim + complete:.1f}")


if __name__ == "__main__":
    main()
