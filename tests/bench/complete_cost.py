"""What one `webhooks.complete()` call costs for a report of 200 results (issue target: <= 10 ms).

`make bench` runs it as its `complete` measurement (bench_complete); alone:

    .venv/bin/python tests/bench/complete_cost.py [--rounds 30] [--batch 200] [--explain]

A throwaway server (fsync on, as `make bench`), one webhook, a backlog of one-row captures. Each
round leases `batch` deliveries with claim() (not timed) and times complete() for them, in its
own autocommit call as the runner makes it:
- `success`: every result a 200;
- `mix`: 70% 200s, 25% 500s (retries scheduled; the circuit counts them), 5% 429 with a Retry-After.
After a mix round the circuit is closed again (not timed), so the next claim is not held back.
Prints the fastest call, the median and the 90th percentile of each, in milliseconds, and
claim()'s for comparison. With --explain, the server's
auto_explain logs every statement inside complete() (nested, with buffers) to its server.log,
which is printed at the end for one round of each kind.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from common import Env
from psycopg.types.json import Jsonb
from report import Result, info, threshold

from pgwebhooks import migrations
from pgwebhooks.localpg import LocalPostgres


def results_for(leases: list[tuple[int, int]], kind: str) -> list[dict[str, Any]]:
    out = []
    for i, (delivery_id, attempt) in enumerate(leases):
        status, retry_after = 200, None
        if kind == "mix":
            slot = i % 20
            if 14 <= slot < 19:
                status = 500
            elif slot == 19:
                status, retry_after = 429, 7
        out.append({"delivery_id": delivery_id, "attempt": attempt, "status_code": status,
                    "response_excerpt": "ok" if status == 200 else "try later", "error": None,
                    "latency_ms": 3, "retry_after_seconds": retry_after})
    return out


def measure(dsn: str, rounds: int, batch: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"success": [], "mix": [], "claim": []}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, amount numeric(12, 2) NOT NULL)")
        conn.execute("SELECT webhooks.create_webhook(name => 'cost', url => 'http://127.0.0.1:9/hook',"
                     " events => %s)", (Jsonb([{"table": "orders", "operations": ["INSERT"]}]),))
        rows = rounds * 2 * batch + batch
        conn.execute(f"DO $$ BEGIN FOR i IN 1..{rows} LOOP INSERT INTO orders (amount) VALUES (i); END LOOP; END $$")
        conn.execute("VACUUM ANALYZE")
        for n in range(rounds * 2):
            kind = "success" if n % 2 == 0 else "mix"
            started = time.perf_counter()
            leases = [(int(d), int(a)) for d, a in conn.execute(
                "SELECT delivery_id, attempt FROM webhooks.claim(%s, 30, %s)", (batch, batch)).fetchall()]
            timings["claim"].append((time.perf_counter() - started) * 1000)
            if len(leases) != batch:
                raise SystemExit(f"claim() leased {len(leases)} deliveries, expected {batch}")
            payload = Jsonb(results_for(leases, kind))
            started = time.perf_counter()
            answered = conn.execute("SELECT count(*) FROM webhooks.complete(%s) WHERE status <> 'refused'",
                                    (payload,)).fetchone()
            timings[kind].append((time.perf_counter() - started) * 1000)
            if not answered or answered[0] != batch:
                raise SystemExit(f"complete() accepted {answered} of {batch} results")
            if kind == "mix":
                conn.execute("UPDATE webhooks.endpoints SET circuit = 'closed', consecutive_failures = 0,"
                             " times_opened = 0, retry_at = NULL, probe_delivery_id = NULL, probe_attempt = NULL,"
                             " failures_in_a_row = 0, failing_since = NULL")
                conn.execute("UPDATE webhooks.webhooks SET paused = false, paused_at = NULL, paused_reason = NULL")
    return timings


def bench_complete(env: Env, rounds: int, batch: int = 200) -> list[Result]:
    """The `make bench` rows: the median complete() call of each kind, against the issue's 10 ms."""
    section = (f"3 delivery throughput: complete() of a {batch}-result report ({rounds} calls of each kind, "
               f"one webhook, no HTTP; claim({batch}) leases them first, untimed)")
    dsn = env.fresh_db("complete")
    try:
        timings = measure(dsn, rounds, batch)
    finally:
        env.drop_db(dsn)

    def p90(ms: list[float]) -> float:
        return sorted(ms)[min(len(ms) - 1, int(len(ms) * 0.9))]

    success, mix, claim = timings["success"], timings["mix"], timings["claim"]
    return [
        threshold(section, f"complete(): {batch} results, all 200", statistics.median(success), 10, "ms", False,
                  f"median; min {min(success):.1f} ms, p90 {p90(success):.1f} ms", calls_ms=success),
        threshold(section, f"complete(): {batch} results, 70% 200 / 25% 500 / 5% 429", statistics.median(mix), 10,
                  "ms", False, f"median; min {min(mix):.1f} ms, p90 {p90(mix):.1f} ms; retries scheduled, "
                  "the circuit counting", calls_ms=mix),
        info(section, f"claim({batch}), for comparison", f"{statistics.median(claim):.1f} ms",
             f"median; p90 {p90(claim):.1f} ms", calls_ms=claim),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--explain", action="store_true", help="auto_explain every nested statement")
    args = parser.parse_args(argv)
    settings = {"fsync": "on"}
    if args.explain:
        settings |= {"shared_preload_libraries": "auto_explain", "auto_explain.log_min_duration": "0",
                     "auto_explain.log_nested_statements": "on", "auto_explain.log_analyze": "on",
                     "auto_explain.log_buffers": "on"}
    with tempfile.TemporaryDirectory(prefix="complete-cost-") as tmp:
        Path(tmp).chmod(0o755)
        pg = LocalPostgres(Path(tmp) / "pgdata", settings=settings).start()
        try:
            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                conn.execute("CREATE DATABASE cost")
            dsn = pg.dsn_for("cost")
            migrations.migrate(dsn)
            timings = measure(dsn, 1 if args.explain else args.rounds, args.batch)
            if args.explain:
                print((Path(tmp) / "pgdata" / "server.log").read_text()[-200_000:])
        finally:
            pg.destroy()
    for kind, ms in timings.items():
        ms.sort()
        p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
        what = "claim() (for comparison)" if kind == "claim" else f"complete() {kind}"
        print(f"{what:24s} {args.batch} results: min {ms[0]:6.2f} ms, "
              f"median {statistics.median(ms):6.2f} ms, p90 {p90:6.2f} ms over {len(ms)} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
