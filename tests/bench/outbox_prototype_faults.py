"""The outbox prototype (outbox_prototype.sql) under faults: runners that die mid-batch, results
lost one by one, receivers failing, reports arriving after their lease ran out.

    .venv/bin/python tests/bench/outbox_prototype_faults.py --dsn DSN [--rows 3000] [--seed 7]

Writes `rows` one-row changes, then drains them with a claimer that, per batch (seeded): dies
before reporting (10%: its lease is then made to run out, as time would), or reports each result
as a 200 (80%), a 500 (15%), or not at all (5%: that attempt's lease runs out). Retries are made
due at once, and now and then a report is sent again after its lease ran out. It then checks, for
every logged row, what the product promises: attempts numbered 1, 2, ... with none twice, at most
max_attempts, exactly one ending (a 2xx, or the last attempt's failure), nothing left open or
queued, and every late report refused. Prints the counts and exits non-zero on any breach.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

import psycopg
from outbox_prototype import INSERT, fresh_pair, install


def report(conn: psycopg.Connection[Any], hook: str, results: list[dict[str, Any]]) -> int:
    return int(conn.execute("SELECT outbox_proto.complete(%s, %s::jsonb)", (hook, json.dumps(results))).fetchone()[0])


def drain_with_faults(conn: psycopg.Connection[Any], hook: str, route: int, rng: random.Random) -> dict[str, int]:
    counts = {"claims": 0, "died": 0, "lost": 0, "failed": 0, "late_sent": 0, "late_accepted": 0}
    stale: list[dict[str, Any]] = []  # reports held back, sent once their lease has run out
    for _ in range(10_000):
        rows = conn.execute("SELECT log_id, attempt FROM outbox_proto.claim(%s, %s, 200, '0 s', '30 s')",
                            (hook, route)).fetchall()
        if stale:  # the leases of these ran out before they came: each must be refused
            counts["late_sent"] += len(stale)
            counts["late_accepted"] += report(conn, hook, stale)
            stale = []
        if not rows:
            open_leases = conn.execute("SELECT count(*) FROM outbox_proto.leases WHERE open > 0").fetchone()[0]
            queued = conn.execute("SELECT count(*) FROM outbox_proto.retries").fetchone()[0]
            if not open_leases and not queued:
                return counts
            # Time passes: leases run out, retries come due.
            conn.execute("UPDATE outbox_proto.leases SET deadline = now() - interval '1 s' WHERE open > 0")
            conn.execute("UPDATE outbox_proto.retries SET due = now() - interval '1 s'")
            continue
        counts["claims"] += 1
        if rng.random() < 0.10:
            counts["died"] += 1
            # Its lease runs out (time passes); the next claim settles its attempts as expired.
            conn.execute("UPDATE outbox_proto.leases SET deadline = now() - interval '1 s'"
                         " WHERE id = (SELECT max(id) FROM outbox_proto.leases)")
            if rng.random() < 0.5:
                stale = [{"log_id": i, "attempt": a, "status_code": 200, "latency_ms": 1, "response_excerpt": "late"}
                         for i, a in rows]
            continue
        results = []
        for log_id, attempt in rows:
            roll = rng.random()
            if roll < 0.05:
                counts["lost"] += 1
                continue
            status = 500 if roll < 0.20 else 200
            counts["failed"] += status == 500
            results.append({"log_id": log_id, "attempt": attempt, "status_code": status, "latency_ms": 2,
                            "response_excerpt": "x"})
        report(conn, hook, results)
        conn.execute("UPDATE outbox_proto.retries SET due = now() - interval '1 s'")
        conn.execute("SELECT outbox_proto.forget_leases()")
    raise SystemExit("the prototype did not drain in 10,000 claims")


def breaches(conn: psycopg.Connection[Any]) -> list[str]:
    """What the product promises, per logged row; each query lists the rows that break it."""
    checks = {
        "attempt numbers not 1..k, or one twice": """
            SELECT o.log_id FROM outbox_proto.outcomes o GROUP BY o.log_id
            HAVING count(*) <> count(DISTINCT o.attempt) OR min(o.attempt) <> 1 OR max(o.attempt) <> count(*)""",
        "more attempts than max_attempts": """
            SELECT o.log_id FROM outbox_proto.outcomes o GROUP BY o.log_id
            HAVING max(o.attempt) > outbox_proto.max_attempts()""",
        "a logged row never attempted": """
            SELECT l.id FROM outbox_proto.log l
            WHERE NOT EXISTS (SELECT FROM outbox_proto.outcomes o WHERE o.log_id = l.id)""",
        "an attempt left unsettled": """
            SELECT o.log_id FROM outbox_proto.outcomes o WHERE o.status_code IS NULL AND o.error IS NULL""",
        "not exactly one ending (a 2xx, or the last attempt's failure)": """
            SELECT o.log_id FROM outbox_proto.outcomes o GROUP BY o.log_id
            HAVING count(*) FILTER (WHERE o.status_code BETWEEN 200 AND 299) + count(*) FILTER (
                       WHERE o.attempt = outbox_proto.max_attempts() AND o.status_code IS DISTINCT FROM 200) <> 1
                OR bool_or(o.status_code BETWEEN 200 AND 299 AND o.attempt <> (
                       SELECT max(p.attempt) FROM outbox_proto.outcomes p WHERE p.log_id = o.log_id))""",
        "a retry still queued": "SELECT r.log_id FROM outbox_proto.retries r",
    }
    found = []
    for what, query in checks.items():
        rows = conn.execute(query).fetchall()
        if rows:
            found.append(f"{what}: {len(rows)} rows, e.g. {rows[:3]}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True, help="libpq DSN of a local server, without dbname")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    target = install(args.dsn)
    with psycopg.connect(target, autocommit=True) as conn:
        hook, route = fresh_pair(conn, "f")
        conn.execute(f"DO $$ BEGIN FOR i IN 1..{args.rows} LOOP {INSERT.format(t='proto_f')}; END LOOP; END $$")
        counts = drain_with_faults(conn, hook, route, random.Random(args.seed))
        attempts = conn.execute("SELECT count(*), count(*) FILTER (WHERE error IS NOT NULL),"
                                " count(DISTINCT log_id) FILTER (WHERE status_code = 200)"
                                " FROM outbox_proto.outcomes").fetchone()
        found = breaches(conn)
    print(f"{args.rows} rows; {counts['claims']} claims, {counts['died']} of them by a runner that died;"
          f" {counts['lost']} results lost, {counts['failed']} answered 500")
    print(f"{attempts[0]} attempts, {attempts[1]} of them ended by an expired lease; {attempts[2]} rows delivered")
    print(f"late reports: {counts['late_accepted']} of {counts['late_sent']} accepted (must be 0)")
    if counts["late_accepted"]:
        found.append("a report arriving after its lease ran out was accepted")
    for breach in found:
        print("BREACH:", breach)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
