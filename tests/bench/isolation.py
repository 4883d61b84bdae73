"""Isolation between webhooks: a noisy neighbour, claim cost beside a deep backlog, and
retry punctuality. The runner runs with its default flags throughout: that is what production
gets, and where one saturated webhook used to slow every other one.
"""

from __future__ import annotations

import statistics
import time
import traceback
from typing import Any

import psycopg
from common import (
    PROCS,
    BenchError,
    Env,
    Receiver,
    create_orders,
    create_webhook,
    delivered_count,
    median,
    paced,
    tail,
    wait_delivered,
)
from delivery import bulk_backlog
from fanout import bench_bulk_neighbour
from outage import bench_outage
from psycopg.types.json import Jsonb
from report import Result, failed, info, ratio, threshold
from resting_webhooks import bench_resting_webhooks

from pgwebhooks.localpg import free_port


def _attempts(conn: psycopg.Connection[Any], webhook_id: str) -> int:
    row = conn.execute("SELECT count(*) FROM webhooks.delivery_attempts a JOIN webhooks.deliveries d"
                       " ON d.id = a.delivery_id WHERE d.webhook_id = %s", (webhook_id,)).fetchone()
    return int(row[0]) if row else 0


def _has_endpoints(conn: psycopg.Connection[Any]) -> bool:
    """Whether the schema has circuit breakers (0.2): the benchmark also runs against 0.1.0 for comparison."""
    row = conn.execute("SELECT to_regclass('webhooks.endpoints') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _drain_one(env: Env, dsn: str, name: str, webhook_id: str, expected: int, receiver: Receiver,
               dead_id: str | None) -> dict[str, Any]:
    """Run one default runner until `webhook_id` has `expected` deliveries delivered (bounded)."""
    timeout = max(60.0, expected / 100)
    with psycopg.connect(dsn, autocommit=True) as conn:
        proc = env.start_runner(dsn, name)
        try:
            deadline = time.monotonic() + timeout
            while delivered_count(conn, webhook_id) < expected:
                if proc.poll() is not None:
                    raise BenchError(f"runner exited with {proc.returncode}:\n{tail(env.log(f'runner-{name}'))}")
                if time.monotonic() > deadline:
                    raise BenchError(f"{name}: {delivered_count(conn, webhook_id)} of {expected} delivered "
                                     f"after {timeout:.0f}s")
                time.sleep(0.1)
            dead_attempts = _attempts(conn, dead_id) if dead_id else 0
        finally:
            PROCS.stop(proc)
        row = conn.execute("SELECT extract(epoch FROM max(completed_at))::float8 FROM webhooks.deliveries"
                           " WHERE webhook_id = %s", (webhook_id,)).fetchone()
        circuit = None
        if dead_id and _has_endpoints(conn):
            circuit = conn.execute("SELECT circuit FROM webhooks.endpoints WHERE webhook_id = %s",
                                   (dead_id,)).fetchone()
    assert row is not None
    first = receiver.stats().get("first")
    if not first:
        raise BenchError(f"{name}: the receiver saw nothing")
    seconds = float(row[0]) - first
    return {"rate": expected / seconds, "seconds": seconds, "dead_attempts": dead_attempts,
            "circuit": circuit[0] if circuit else None}


def bench_noisy_neighbour(env: Env, deliveries: int, neighbour: int, rounds: int = 2) -> list[Result]:
    section = (f"8 isolation: noisy neighbour ({deliveries:,}-delivery drain of a healthy webhook; neighbour: "
               f"{neighbour:,} due deliveries to a port nobody listens on; runner with default flags; "
               f"best of {max(rounds, 1)})")
    receiver = env.start_receiver("neighbour")
    runs: dict[str, dict[str, Any]] = {}
    # Alternating rounds, the best of each kept: on a machine shared with other work a single
    # drain measures the others as much as the runner.
    # The neighbour's backlog already fanned out; freshly captured (a bulk INSERT the runner has
    # not fanned out yet, as it arrives); and freshly captured for a paused webhook.
    plan = [("alone", 0), ("neighbour", neighbour), ("fresh", neighbour), ("paused", neighbour)] * max(rounds, 1)
    try:
        for label, backlog in plan:
            dsn = env.fresh_db(f"neighbour_{label}")
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    dead_id = None
                    if backlog:
                        create_orders(conn, "dead_orders")
                        dead_id = create_webhook(conn, "dead", f"http://127.0.0.1:{free_port()}/hook", "dead_orders")
                        if label == "paused":
                            conn.execute("SELECT webhooks.pause_webhook(%s::uuid, 'bench')", (dead_id,))
                        if label == "neighbour":
                            bulk_backlog(conn, "dead_orders", backlog)
                        else:
                            conn.execute("INSERT INTO dead_orders (customer_id, amount, status)"
                                         " SELECT g %% 10000 + 1, 1.5, 'paid' FROM generate_series(1, %s) g",
                                         (backlog,))
                    create_orders(conn, "orders")
                    healthy_id = create_webhook(conn, "healthy", receiver.url("hook"), "orders")
                    bulk_backlog(conn, "orders", deliveries)
                    # As autovacuum would have by then; not during the drain, on the runner's CPU.
                    conn.execute("VACUUM ANALYZE")
                receiver.reset()
                run = _drain_one(env, dsn, f"neighbour-{label}", healthy_id, deliveries, receiver, dead_id)
                if label not in runs or run["rate"] > runs[label]["rate"]:
                    runs[label] = run
            finally:
                env.drop_db(dsn)
    finally:
        PROCS.stop(receiver.proc)
    alone, noisy, fresh, paused = runs["alone"], runs["neighbour"], runs["fresh"], runs["paused"]
    return [
        ratio(section, "healthy drain rate: with neighbour / alone", noisy["rate"] / alone["rate"], 0.8, True,
              f"{noisy['rate']:.0f}/s vs {alone['rate']:.0f}/s", alone=alone, neighbour=noisy),
        ratio(section, "... neighbour's backlog freshly captured / alone", fresh["rate"] / alone["rate"], 0.8, True,
              f"{fresh['rate']:.0f}/s: one {neighbour:,}-row INSERT, fanned out by the runner as it drains",
              fresh=fresh),
        ratio(section, "... a paused webhook's freshly captured backlog / alone", paused["rate"] / alone["rate"],
              0.8, True, f"{paused['rate']:.0f}/s", paused=paused),
        info(section, "attempts at the dead endpoint meanwhile", f"{noisy['dead_attempts']:,}",
             f"of {neighbour:,} due deliveries, over {noisy['seconds']:.1f}s; circuit {noisy['circuit']}",
             attempts=noisy["dead_attempts"], seconds=noisy["seconds"]),
    ]


def _claim_ms(conn: psycopg.Connection[Any], repeats: int, skip: list[str] | None = None) -> tuple[float, float]:
    """(fastest, median) claim(200) in ms, each in a transaction rolled back. The fastest is the
    claim's own cost: on a machine shared with other work the median mostly measures the others."""
    times = []
    for _ in range(repeats):
        with conn.transaction(force_rollback=True):
            started = time.perf_counter()
            conn.execute("SELECT count(*) FROM webhooks.claim(200, 30, NULL, %s::uuid[])", (skip or [],)).fetchone()
            times.append((time.perf_counter() - started) * 1000)
    return min(times), median(times)


def bench_claim_isolation(env: Env, backlog: int, repeats: int = 25) -> list[Result]:
    section = (f"8 isolation: claim(200) cost beside another webhook's {backlog:,} due deliveries "
               "(200 due for the webhook being served)")
    # Two databases: the baseline holds only the served webhook's 200; the other holds the big
    # backlog first, then those 200, so that walking due work in time order would step over it.
    dsn = env.fresh_db("claim_empty")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_orders(conn, "orders")
            create_webhook(conn, "served", "http://127.0.0.1:9/hook", "orders")
            bulk_backlog(conn, "orders", 200)
            if _has_endpoints(conn):  # claim() adds them, but claims measured here are rolled back
                conn.execute("INSERT INTO webhooks.endpoints (webhook_id) SELECT id FROM webhooks.webhooks"
                             " ON CONFLICT DO NOTHING")
            conn.execute("VACUUM ANALYZE")
            _claim_ms(conn, 3)  # warm-up
            empty = _claim_ms(conn, repeats)
    finally:
        env.drop_db(dsn)
    dsn = env.fresh_db("claim_isolation")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_orders(conn, "orders")
            create_orders(conn, "big_orders")
            big = create_webhook(conn, "big", "http://127.0.0.1:9/big", "big_orders")
            bulk_backlog(conn, "big_orders", backlog)
            create_webhook(conn, "served", "http://127.0.0.1:9/hook", "orders")
            bulk_backlog(conn, "orders", 200)
            served = conn.execute("SELECT array_agg(id) FROM webhooks.webhooks WHERE id <> %s", (big,)).fetchone()
            assert served is not None
            if _has_endpoints(conn):
                conn.execute("INSERT INTO webhooks.endpoints (webhook_id) SELECT id FROM webhooks.webhooks"
                             " ON CONFLICT DO NOTHING")
                conn.execute("UPDATE webhooks.webhooks SET max_concurrency = 20 WHERE id = %s", (big,))
            # Saturated: the big webhook has 20 deliveries in flight already.
            conn.execute("SELECT count(*) FROM webhooks.claim(20, 3600, 20, %s::uuid[])", (served[0],))
            conn.execute("VACUUM ANALYZE")
            _claim_ms(conn, 3)
            # 0.1.0 knows a webhook is saturated only from the runner holding its sends (skip_webhooks);
            # since 0.2 claim() counts its max_concurrency itself, whoever holds them.
            saturated = _claim_ms(conn, repeats, [] if _has_endpoints(conn) else [big])
            conn.execute("UPDATE webhooks.webhooks SET enabled = false WHERE id = %s", (big,))
            paused = _claim_ms(conn, repeats)
            conn.execute("UPDATE webhooks.webhooks SET enabled = true WHERE id = %s", (big,))
            opened = (float("nan"), float("nan"))
            if _has_endpoints(conn):
                conn.execute("UPDATE webhooks.endpoints SET circuit = 'open', retry_at = now() + interval '1 hour'"
                             " WHERE webhook_id = %s", (big,))
                opened = _claim_ms(conn, repeats)
    finally:
        env.drop_db(dsn)
    def shown(t: tuple[float, float]) -> str:
        return f"{t[0]:.1f} ms (median {t[1]:.1f})"

    return [
        ratio(section, "claim: beside a saturated backlog / empty outbox", saturated[0] / empty[0], 2.0, False,
              f"{shown(saturated)} vs {shown(empty)}; beside an open circuit's backlog {shown(opened)}",
              empty_ms=empty, saturated_ms=saturated, paused_ms=paused, open_circuit_ms=opened),
        ratio(section, "claim: beside a paused webhook's backlog / empty outbox", paused[0] / empty[0], 2.0, False,
              f"{shown(paused)} vs {shown(empty)}"),
    ]


def bench_retry_punctuality(env: Env, events: int = 200, rate: float = 50.0) -> list[Result]:
    section = (f"8 isolation: retry punctuality ({events} events at {rate:.0f}/s, each answered 429 "
               "Retry-After: 1 once; runner with default flags, poll interval 5 s)")
    receiver = env.start_receiver("punctuality", fail_first=True)
    dsn = env.fresh_db("punctuality")
    runner = None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_orders(conn, "orders")
            hook = create_webhook(conn, "punctual", receiver.url("hook"), "orders")
            # The default schedule's first retry is 5 s, and the longer of it and Retry-After wins:
            # a one-second schedule makes the receiver's Retry-After: 1 the time a retry is due.
            conn.execute("SELECT webhooks.update_webhook(%s, %s)",
                         (hook, Jsonb({"retry_schedule": ["1 second", "1 second"]})))
            runner = env.start_runner(dsn, "punctuality")
            time.sleep(1.5)  # up and listening
            insert = "INSERT INTO orders (customer_id, amount, status) VALUES (1, 1, 'new')"
            paced(conn, insert, events, rate)
            wait_delivered(conn, hook, events, runner, timeout=60, interval=0.1)
            # When each retry was due: the first attempt's complete() time plus the Retry-After.
            due = dict(conn.execute(
                "SELECT webhooks._event_uid(d.capture_id, d.n)::text,"
                "       extract(epoch FROM a.attempted_at)::float8 + 1"
                " FROM webhooks.deliveries d JOIN webhooks.delivery_attempts a"
                "   ON a.delivery_id = d.id AND a.attempt = 1"
                " WHERE d.webhook_id = %s", (hook,)).fetchall())
        arrivals = receiver.arrivals()
    finally:
        if runner is not None:
            PROCS.stop(runner)
        PROCS.stop(receiver.proc)
        env.drop_db(dsn)
    late = sorted((times[1] - due[uid]) * 1000 for uid, times in arrivals.items() if len(times) > 1 and uid in due)
    if len(late) < events:
        raise BenchError(f"{len(late)} of {events} retries seen")
    cuts = statistics.quantiles(late, n=100, method="inclusive")
    return [threshold(section, "p99 retry sent after its due time", cuts[98], 200, "ms", False,
                      f"p50 {cuts[49]:.0f} ms, max {late[-1]:.0f} ms, min {late[0]:.0f} ms; {len(late)} retries",
                      p50=cuts[49], p99=cuts[98], max=late[-1], median=median(late))]


def bench_rate_limit(env: Env, limit: int = 200, total: int = 2000) -> list[Result]:
    section = (f"8 isolation: rate_limit_per_second {limit} on one webhook, {total:,} deliveries, "
               "two runners with default flags, fast local receiver")
    receiver = env.start_receiver("rate")
    dsn = env.fresh_db("rate")
    runners = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            if not _has_endpoints(conn):
                raise BenchError("this schema has no per-webhook rate limit")
            create_orders(conn, "orders")
            hook = create_webhook(conn, "rated", receiver.url("hook"), "orders")
            conn.execute("UPDATE webhooks.webhooks SET rate_limit_per_second = %s WHERE id = %s", (limit, hook))
            runners = [env.start_runner(dsn, f"rate-{i}") for i in range(2)]
            time.sleep(1.5)  # both up and listening
            bulk_backlog(conn, "orders", total)
            deadline = time.monotonic() + total / limit * 3 + 30
            while delivered_count(conn, hook) < total:
                if time.monotonic() > deadline:
                    raise BenchError(f"{delivered_count(conn, hook)} of {total} delivered in time")
                time.sleep(0.2)
            done = [float(r[0]) for r in conn.execute(
                "SELECT extract(epoch FROM completed_at)::float8 FROM webhooks.deliveries"
                " WHERE webhook_id = %s ORDER BY completed_at", (hook,)).fetchall()]
        stats = receiver.stats()
    finally:
        for proc in runners:
            PROCS.stop(proc)
        PROCS.stop(receiver.proc)
        env.drop_db(dsn)
    # The bucket holds one second's worth, which may go at once; after that, the rate.
    steady = (total - limit) / (done[-1] - done[limit - 1])
    value = steady / limit
    return [Result(section, "steady rate / rate limit", "0.9x to 1.1x", f"{value:.2f}x", value,
                   0.9 <= value <= 1.1,
                   f"{steady:.0f}/s against {limit}/s; {stats['count']} requests, {stats['duplicates']} duplicates",
                   {"steady_rate": steady, "rate_limit": limit, "requests": stats["count"]})]


def bench_isolation(env: Env, deliveries: int, neighbour: int, rounds: int = 2,
                    outage_seconds: float = 60, quiet_webhooks: int = 10_000) -> list[Result]:
    """All of the above; one that fails is reported as such and the others still run."""
    parts = (("noisy neighbour", lambda: bench_noisy_neighbour(env, deliveries, neighbour, rounds)),
             ("claim cost", lambda: bench_claim_isolation(env, neighbour)),
             ("quiet webhooks", lambda: bench_resting_webhooks(env, quiet_webhooks)),
             ("bulk neighbour", lambda: bench_bulk_neighbour(env, 2 * neighbour)),
             ("retry punctuality", lambda: bench_retry_punctuality(env)),
             ("rate limit", lambda: bench_rate_limit(env)),
             ("endpoint outage", lambda: bench_outage(env, outage_seconds)))
    results: list[Result] = []
    for name, part in parts:
        try:
            results += part()
        except (BenchError, psycopg.Error, OSError, AssertionError, KeyError, ValueError) as exc:
            traceback.print_exc()
            results.append(failed(f"8 isolation: {name}", "measurement failed", f"{type(exc).__name__}: {exc}"))
    return results
