"""Commit-to-receipt latency: single-row transactions at a steady pace, each timed from its commit
to its arrival at a local receiver, through a real `pgwebhooks run` process.

Committer, runner and receiver share one machine and one clock.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg
from common import PROCS, BenchError, Env, Receiver, create_orders, create_webhook, tail
from report import Result, threshold


def bench_latency(env: Env, seconds: float, rate: float = 200.0) -> list[Result]:
    section = f"5 latency, commit to receipt ({rate:.0f} single-row transactions/s for {seconds:g}s)"
    dsn = env.fresh_db("latency")
    receiver = env.start_receiver("latency", record_tokens=True)
    runner = None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_orders(conn, "orders", extra="token bigint NOT NULL")
            create_webhook(conn, "latency", receiver.url("latency"), "orders")
            runner = env.start_runner(dsn, "latency")
            insert = "INSERT INTO orders (customer_id, amount, status, token) VALUES (%s, %s, 'new', %s)"
            # Warm-up (negative tokens, not counted): the runner is up, connected and listening.
            conn.execute(insert, (1, 1, -1), prepare=True)
            _wait_received(receiver, runner, env, 1, 30)
            for i in range(2, int(rate) + 2):  # one second at the same pace
                conn.execute(insert, (1, 1, -i), prepare=True)
                time.sleep(1 / rate)
            _wait_received(receiver, runner, env, int(rate) + 1, 30)
            receiver.reset()

            count = int(seconds * rate)
            committed: dict[int, float] = {}
            begin = time.perf_counter() + 0.05
            for i in range(count):
                # An absolute schedule: a slow commit delays the next one but not the pace.
                pause = begin + i / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                conn.execute(insert, (i % 10000 + 1, (i % 100000) / 100, i), prepare=True)  # autocommit
                committed[i] = time.time()
            achieved = count / (time.perf_counter() - begin)
        _wait_received(receiver, runner, env, count, 60)
        tokens = receiver.tokens()
    finally:
        if runner is not None:
            PROCS.stop(runner)
        PROCS.stop(receiver.proc)
        env.drop_db(dsn)
    latencies = sorted((at - committed[token]) * 1000 for token, at in tokens if token in committed)
    if len(latencies) < count:
        raise BenchError(f"{len(latencies)} of {count} events received")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    p50, p99 = cuts[49], cuts[98]
    early = sum(1 for x in latencies if x < 0)
    detail = (f"{len(latencies)} events at {achieved:.0f}/s; max {latencies[-1]:.1f} ms"
              + (f"; {early} received before the inserter saw its commit" if early else ""))
    return [
        threshold(section, "p50 commit -> receipt", p50, 10, "ms", False, detail,
                  p50=p50, p90=cuts[89], p99=p99, max=latencies[-1], achieved_rate=achieved, events=len(latencies)),
        threshold(section, "p99 commit -> receipt", p99, 50, "ms", False, f"p90 {cuts[89]:.1f} ms"),
    ]


def _wait_received(receiver: Receiver, runner: Any, env: Env, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while receiver.stats()["count"] < count:
        if runner is not None and runner.poll() is not None:
            raise BenchError(f"runner exited with {runner.returncode}:\n{tail(env.log('runner-latency'))}")
        if time.monotonic() > deadline:
            raise BenchError(f"only {receiver.stats()['count']} of {count} events received after {timeout:.0f}s")
        time.sleep(0.05)
