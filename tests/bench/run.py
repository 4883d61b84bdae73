"""`make bench`: pgwebhooks' benchmark suite, one table of side-by-side ratios and a JSON file.

    .venv/bin/python tests/bench/run.py [--quick] [--only pgbench,latency] [--json bench-results.json]

Everything runs against one throwaway PostgreSQL (default durability: fsync on) started in a
temporary directory, a fresh database per measurement, and local receivers in processes of
their own. Everything is torn down at the end, however the run ends.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import backlog
import big_backlog
import complete_cost
import dashboard
import delivery
import events
import health
import isolation
import latency
import psycopg
import retention
import snapshot
import storage
import write_path
from common import BenchError, Env, install_exit_handlers
from report import Result, failed, machine, render, write_json

MEASUREMENTS = ("pgbench", "bulk", "throughput", "complete", "slow", "latency", "backlog", "horizontal", "isolation",
                "events", "health", "dashboard", "retention", "snapshot", "storage", "big_backlog")
# Run only when named in --only (make bench-big): building the backlog alone takes minutes and gigabytes.
OPT_IN = ("big_backlog",)
TITLES = {
    "pgbench": "1 write path, one row per transaction",
    "bulk": "2 write path, bulk",
    "throughput": "3 delivery throughput",
    "complete": "3 delivery throughput: complete()",
    "slow": "4 slow endpoints",
    "latency": "5 latency",
    "backlog": "6 backlog",
    "horizontal": "7 horizontal",
    "isolation": "8 isolation between webhooks",
    "events": "9 application events",
    "health": "10 health and capture filters",
    "dashboard": "11 dashboard and metrics",
    "retention": "12 retention",
    "snapshot": "13 a snapshot held open",
    "storage": "14 storage",
    "big_backlog": "15 a 10,000,000-event backlog",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs (a smoke test)")
    parser.add_argument("--rows", type=int, help="rows per bulk write (default 100000; quick 20000)")
    parser.add_argument("--deliveries", type=int, help="backlog of the throughput test (default 20000; quick 5000)")
    parser.add_argument("--backlog", type=int, help="pending deliveries of the backlog test (default 100000; "
                        "quick 20000; try 1000000)")
    parser.add_argument("--neighbour", type=int, help="due deliveries of the noisy neighbour and of the deep "
                        "backlog beside claim() (default 100000; quick 20000; full size: 1000000)")
    parser.add_argument("--outage-seconds", type=float, help="how long the isolation benchmark's endpoint is "
                        "down (default 60; quick 10)")
    parser.add_argument("--status-deliveries", type=int, help="deliveries kept for the webhook_status row "
                        "(default 100000; quick 20000; the issue's full size: 1000000)")
    parser.add_argument("--dashboard-deliveries", type=int, help="deliveries kept for the dashboard's pages "
                        "(default 1000000; quick 100000)")
    parser.add_argument("--retention-deliveries", type=int, help="finished deliveries maintain() removes "
                        "(default 1000000; quick 100000)")
    parser.add_argument("--tenant-writes", type=int, help="one-row transactions per tenants round (default 2000)")
    parser.add_argument("--seconds", type=float, help="length of each pgbench run (default 5; quick 2)")
    parser.add_argument("--latency-seconds", type=float, help="length of the paced latency run (default 10; quick 4)")
    parser.add_argument("--rounds", type=int, help="pgbench rounds and bulk repeats, medians taken (default 3)")
    parser.add_argument("--big-backlog", type=int, help="events of the opt-in big backlog (default 10000000; "
                        "quick 200000)")
    parser.add_argument("--big-seconds", type=float, help="how long the runner drains the big backlog (default 600; "
                        "quick 20)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(MEASUREMENTS)}")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"), help="where to write results")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server and process logs)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"rows": 20_000 if quick else 100_000, "deliveries": 5_000 if quick else 20_000,
                "backlog": 20_000 if quick else 100_000, "seconds": 2 if quick else 5,
                "neighbour": 20_000 if quick else 100_000, "outage_seconds": 10 if quick else 60,
                "status_deliveries": 20_000 if quick else 100_000, "tenant_writes": 500 if quick else 2_000,
                "latency_seconds": 4 if quick else 10, "rounds": 1 if quick else 3,
                "dashboard_deliveries": 100_000 if quick else 1_000_000,
                "retention_deliveries": 100_000 if quick else 1_000_000,
                "big_backlog": 200_000 if quick else 10_000_000, "big_seconds": 20 if quick else 600}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    named = [m.strip() for m in args.only.split(",") if m.strip()]
    args.selected = named or [m for m in MEASUREMENTS if m not in OPT_IN]
    unknown = sorted(set(args.selected) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"unknown measurement(s) {', '.join(unknown)}; choose from {', '.join(MEASUREMENTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pgwebhooks-bench-"))
    env = Env(workdir)
    install_exit_handlers(env)
    results: list[Result] = []
    timings: dict[str, float] = {}
    ceiling: float | None = None  # the runner's rate against a fast receiver: its CPU ceiling
    slow_rows = 250 if args.quick else 500  # x 20 webhooks
    horizontal_rows = 100 if args.quick else 200

    steps: dict[str, Callable[[], list[Result]]] = {
        "pgbench": lambda: write_path.bench_single_row(env, args.seconds, args.rounds),
        "bulk": lambda: write_path.bench_bulk(env, args.rows, args.rounds),
        "complete": lambda: complete_cost.bench_complete(env, 10 if args.quick else 30),
        "slow": lambda: delivery.bench_slow(env, ceiling, slow_rows),
        "latency": lambda: latency.bench_latency(env, args.latency_seconds),
        "backlog": lambda: backlog.bench_backlog(env, args.backlog),
        "horizontal": lambda: delivery.bench_horizontal(env, horizontal_rows),
        "isolation": lambda: isolation.bench_isolation(env, args.deliveries, args.neighbour, 1 if args.quick else 2,
                                                         args.outage_seconds),
        "events": lambda: events.bench_publish(env, args.rows, args.rounds),
        "dashboard": lambda: dashboard.bench_dashboard(env, args.dashboard_deliveries, args.deliveries, args.rounds),
        "health": lambda: health.bench_health(env, args.tenant_writes, args.rows, args.status_deliveries,
                                              args.rounds),
        "retention": lambda: retention.bench_retention(env, args.retention_deliveries),
        "snapshot": lambda: snapshot.bench_snapshot(env, 10_000 if args.quick else 50_000),
        "storage": lambda: storage.bench_storage(env, 5_000 if args.quick else 20_000),
        "big_backlog": lambda: big_backlog.bench_big_backlog(env, args.big_backlog, args.big_seconds),
    }
    started = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    print(f"pgwebhooks benchmarks in {workdir}: {', '.join(args.selected)}", flush=True)
    try:
        env.start()
        meta_machine = machine(env.server.bindir)
        for name in MEASUREMENTS:
            if name not in args.selected:
                continue
            print(f"-- {TITLES[name]} ...", flush=True)
            began = time.monotonic()
            try:
                if name == "throughput":
                    rows, ceiling = delivery.bench_throughput(env, args.deliveries)
                else:
                    rows = steps[name]()
            except (BenchError, psycopg.Error, OSError, AssertionError, KeyError, ValueError) as exc:
                # One broken measurement must not hide the others: report it and go on.
                traceback.print_exc()
                rows = [failed(TITLES[name], "measurement failed", f"{type(exc).__name__}: {exc}")]
            timings[name] = time.monotonic() - began
            for r in rows:
                print(f"   {r.name}: {r.measured} (target {r.target or '-'}) {r.detail}", flush=True)
            print(f"   ({timings[name]:.0f}s)", flush=True)
            results += rows
    finally:
        env.stop()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - started
    print()
    print(render(results))
    print(f"total {total:.0f}s ({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())})")
    meta = {
        "started_at": started_at,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": meta_machine,
        "seconds": total,
        "timings": timings,
    }
    write_json(args.json, results, meta)
    print(f"results written to {args.json}")
    return 1 if any(r.measured == "ERROR" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
