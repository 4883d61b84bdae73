"""The delivery side: real `pgwebhooks run` processes draining the outbox to local receivers.

The runner's clock is the database's: a drain starts when the runner process is spawned and ends
at the last `completed_at` (the time of the complete() call that made the last delivery
`delivered`), so polling the database only decides when to stop waiting, not what is measured.
Server, runner and receivers share one machine and one clock.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from common import (
    BENCH_DIR,
    PROCS,
    PYTHON,
    BenchError,
    Env,
    Receiver,
    create_orders,
    create_webhook,
    proc_status_kib,
    tail,
)
from report import Result, info, ratio

from pgwebhooks.worker import SLOW_START, RunnerConfig

SLOW_DELAY = 0.05  # seconds the slow receivers take to answer
CONCURRENCY = 200  # the runner's default --concurrency, and the plain clients' number of workers
# One webhook may use the whole concurrency here: this measures the runner's ceiling. What an
# untuned runner reaches (the default --per-webhook-concurrency, with slow start) is a row of its own.
RUNNER_FAST_OPTIONS = ["--concurrency", str(CONCURRENCY), "--per-webhook-concurrency", str(CONCURRENCY)]


def single_row_backlog(conn: psycopg.Connection[Any], table: str, rows: int) -> None:
    """`rows` single-row INSERT statements in one transaction: the OLTP shape of a backlog.

    Each statement is captured on its own (one `captures` row, its record inline), exactly as
    `rows` separate transactions would be, and nothing is fanned out yet: the runner's claims do
    that, as in production after an outage.
    """
    conn.execute(f"""
        DO $$
        BEGIN
            FOR i IN 1..{int(rows)} LOOP
                INSERT INTO {table} (customer_id, amount, status)
                VALUES (i % 10000 + 1, (i % 100000) / 100.0, 'paid');
            END LOOP;
        END
        $$""")


def bulk_backlog(conn: psycopg.Connection[Any], table: str, rows: int) -> None:
    """One bulk INSERT, fanned out at once: `rows` pending deliveries in the outbox."""
    conn.execute(f"INSERT INTO {table} (customer_id, amount, status)"
                 " SELECT g %% 10000 + 1, (g %% 100000) / 100.0, 'paid' FROM generate_series(1, %s) g", (rows,))
    conn.execute("SELECT webhooks._fan_out(%s)", (rows,))


OWED = """
    SELECT (SELECT count(*) FROM webhooks.deliveries WHERE status IN ('pending', 'leased'))
         + (SELECT coalesce(sum(row_count - fanned_out), 0) FROM webhooks.captures WHERE fanned_out < row_count)
         -- Past a cursor (0.6.0 published events, 0.7.0 one-row changes); an old tree has no cursors.
         + CASE WHEN to_regclass('webhooks.cursors') IS NULL THEN 0 ELSE (SELECT count(*)
               FROM webhooks.cursors k JOIN webhooks.captures x
               ON x.route = k.route AND x.route IS NOT NULL AND (x.xid, x.id) > (k.xid, k.id)) END
"""


def delivered(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM webhooks.deliveries WHERE status = 'delivered'").fetchone()
    return int(row[0]) if row else 0


def status_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) FROM webhooks.deliveries GROUP BY status").fetchall()
    return {status: int(n) for status, n in rows}


def last_attempt_error(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT coalesce(error, status_code::text) FROM webhooks.delivery_attempts"
                       " WHERE status_code IS NULL OR status_code NOT BETWEEN 200 AND 299"
                       " ORDER BY id DESC LIMIT 1").fetchone()
    return row[0] if row else None


@dataclass
class Drain:
    deliveries: int
    seconds: float  # spawn of the first runner to the last completed_at
    first_receipt_seconds: float | None  # first request at the receiver to the last completed_at
    exit_codes: list[int | None]
    hwm_kib: list[int | None] = field(default_factory=list)
    rss_max_kib: int | None = None

    @property
    def rate(self) -> float:
        """Deliveries per second from the first request to the last completion: what the plain
        clients are timed on too, so a Python process's start-up (about a second of imports and
        connecting) is not charged to the runner alone."""
        return self.deliveries / (self.first_receipt_seconds or self.seconds)

    @property
    def rate_from_spawn(self) -> float:
        return self.deliveries / self.seconds

    @property
    def steady_rate(self) -> float | None:
        return self.deliveries / self.first_receipt_seconds if self.first_receipt_seconds else None


def drain(env: Env, dsn: str, name: str, expected: int, runners: list[list[str]], receiver: Receiver,
          poll: float = 0.2) -> Drain:
    """Start the runners, wait (bounded) until `expected` deliveries are delivered, stop them."""
    timeout = max(60.0, expected / 200)
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.time()
        procs = [env.start_runner(dsn, f"{name}-{i}", *options) for i, options in enumerate(runners)]
        rss_max = 0
        try:
            deadline = time.monotonic() + timeout
            while True:
                # What is still owed, read from the two small partial indexes: counting delivered
                # rows instead scanned the whole table four times a second, competing with the
                # runner it was measuring (a 1,000,000-delivery backlog).
                row = conn.execute(OWED).fetchone()
                if row is not None and row[0] == 0 and delivered(conn) >= expected:
                    break
                for i, proc in enumerate(procs):
                    if proc.poll() is not None:
                        log = env.log(f"runner-{name}-{i}")
                        raise BenchError(f"runner {i} exited with {proc.returncode}:\n{tail(log)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"not drained after {timeout:.0f}s: deliveries {status_counts(conn)}, "
                                     f"last failed attempt: {last_attempt_error(conn)}")
                for proc in procs:
                    rss_max = max(rss_max, proc_status_kib(proc.pid, "VmRSS") or 0)
                time.sleep(poll)
            hwm = [proc_status_kib(proc.pid, "VmHWM") for proc in procs]
        finally:
            exit_codes = [PROCS.stop(proc) for proc in procs]
        row = conn.execute("SELECT extract(epoch FROM max(completed_at))::float8 FROM webhooks.deliveries"
                           " WHERE status = 'delivered'").fetchone()
    assert row is not None
    finished = float(row[0])
    first = receiver.stats().get("first")
    return Drain(expected, finished - started, finished - first if first else None, exit_codes, hwm, rss_max or None)


def runner_note(d: Drain) -> str:
    codes = ",".join(str(c) for c in d.exit_codes)
    return f"runner exit {codes}" if any(c != 0 for c in d.exit_codes) else ""


# -- 3. throughput against plain clients -----------------------------------------------------------


def dump_requests(conn: psycopg.Connection[Any], count: int) -> list[dict[str, Any]]:
    """The signed requests claim() would hand out, taken in a transaction that is rolled back."""
    requests: list[dict[str, Any]] = []
    with conn.transaction(force_rollback=True):
        while len(requests) < count:
            rows = conn.execute("SELECT url, body, headers FROM webhooks.claim(%s)",
                                (min(10000, count - len(requests)),)).fetchall()
            if not rows:
                break
            requests += [{"url": url, "body": body, "headers": headers} for url, body, headers in rows]
    if len(requests) != count:
        raise BenchError(f"claim() handed out {len(requests)} requests, expected {count}")
    return requests


def run_client(env: Env, kind: str, requests: Path, concurrency: int, max_seconds: float) -> dict[str, Any]:
    log = env.log(f"client-{kind}")
    log.unlink(missing_ok=True)
    proc = PROCS.spawn([PYTHON, str(BENCH_DIR / "clients.py"), "--kind", kind, "--requests", str(requests),
                        "--concurrency", str(concurrency), "--max-seconds", str(max_seconds)], log)
    try:
        proc.wait(timeout=max_seconds + 60)
    except Exception as exc:
        raise BenchError(f"client {kind} did not finish in time") from exc
    finally:
        PROCS.stop(proc)
    lines = log.read_text().strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError) as exc:
        raise BenchError(f"client {kind} failed:\n{tail(log)}") from exc
    if result["errors"]:
        raise BenchError(f"client {kind}: {result['errors']} of {result['requests']} requests failed")
    return dict(result)


def bench_throughput(env: Env, deliveries: int) -> tuple[list[Result], float | None]:
    concurrency = CONCURRENCY
    section = (f"3 delivery throughput ({deliveries:,} deliveries, one webhook, fast local receiver; "
               f"runner {' '.join(RUNNER_FAST_OPTIONS)}, clients {CONCURRENCY} workers)")
    dsn = env.fresh_db("throughput")
    receiver = env.start_receiver("throughput")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_orders(conn, "orders")
            create_webhook(conn, "throughput", receiver.url("hook"), "orders")
            single_row_backlog(conn, "orders", deliveries)
            requests = dump_requests(conn, deliveries)
        path = env.workdir / "requests.json"
        path.write_text(json.dumps(requests))
        clients: dict[str, dict[str, Any]] = {}
        for kind in ("aiohttp", "httpx", "httpx-aiohttp"):
            receiver.reset()
            clients[kind] = run_client(env, kind, path, concurrency, max_seconds=15)
        receiver.reset()
        d = drain(env, dsn, "throughput", deliveries, [RUNNER_FAST_OPTIONS], receiver, poll=0.1)
        received = receiver.stats()
    finally:
        PROCS.stop(receiver.proc)
        env.drop_db(dsn)
    defaults = _default_flags_drain(env, deliveries)
    fastest = max(clients, key=lambda k: clients[k]["rate"])
    results = [info(section, f"plain client: {kind}", f"{c['rate']:.0f}/s",
                    f"{c['ok']:,} requests in {c['seconds']:.2f}s", **c) for kind, c in clients.items()]
    results.append(info(section, "runner (pgwebhooks run)", f"{d.rate:.0f}/s",
                        f"first request to last completion; {d.rate_from_spawn:.0f}/s counting process start-up "
                        f"({d.seconds:.2f}s); {received['count']} received, "
                        f"{received['duplicates']} duplicates {runner_note(d)}".rstrip()))
    results.append(ratio(section, f"runner / fastest plain client ({fastest})", d.rate / clients[fastest]["rate"],
                         0.40, True, f"{d.rate:.0f}/s vs {clients[fastest]['rate']:.0f}/s",
                         runner_rate=d.rate, runner_steady_rate=d.steady_rate, runner_seconds=d.seconds,
                         clients=clients, received=received))
    results.append(ratio(section, f"runner with default flags / fastest plain client ({fastest})",
                         defaults.rate / clients[fastest]["rate"], 0.5, True,
                         f"{defaults.rate:.0f}/s vs {clients[fastest]['rate']:.0f}/s (no tuning flags: "
                         f"--per-webhook-concurrency {RunnerConfig.per_webhook_concurrency}, "
                         f"slow start from {SLOW_START}) "
                         f"{runner_note(defaults)}".rstrip(),
                         runner_rate=defaults.rate, runner_seconds=defaults.seconds))
    return results, d.rate


def _default_flags_drain(env: Env, deliveries: int) -> Drain:
    """The same backlog drained by a runner started with no tuning flags at all."""
    dsn = env.fresh_db("throughput_defaults")
    receiver = env.start_receiver("throughput-defaults")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_orders(conn, "orders")
            create_webhook(conn, "throughput", receiver.url("hook"), "orders")
            single_row_backlog(conn, "orders", deliveries)
        return drain(env, dsn, "throughput-defaults", deliveries, [[]], receiver, poll=0.1)
    finally:
        PROCS.stop(receiver.proc)
        env.drop_db(dsn)


# -- 4. concurrency against slow endpoints ---------------------------------------------------------


def _slow_setup(env: Env, label: str, receiver: Receiver, webhooks: int, rows: int) -> str:
    dsn = env.fresh_db(label)
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_orders(conn, "orders")
        for i in range(webhooks):
            create_webhook(conn, f"slow-{i}", receiver.url(f"slow/{i}"), "orders")
        single_row_backlog(conn, "orders", rows)
    return dsn


def bench_slow(env: Env, ceiling: float | None, rows: int, concurrency: int = 50, per_webhook: int = 5,
               webhooks: int = 20) -> list[Result]:
    # 50 slots at 50 ms allow 1,000/s: half the runner's CPU ceiling from measurement 3 on these
    # 2-core machines, so this measures how well the runner keeps its slots busy rather than how
    # much CPU is left beside PostgreSQL and twenty receivers (at 100 slots the two coincide).
    section = (f"4 slow endpoints ({webhooks} webhooks answering after {SLOW_DELAY * 1000:.0f} ms, "
               f"--concurrency {concurrency} --per-webhook-concurrency {per_webhook})")
    receiver = env.start_receiver("slow", delay=SLOW_DELAY)
    dsn = ""
    try:
        dsn = _slow_setup(env, "slow", receiver, webhooks, rows)
        options = ["--concurrency", str(concurrency), "--per-webhook-concurrency", str(per_webhook)]
        d = drain(env, dsn, "slow", rows * webhooks, [options], receiver)
        received = receiver.stats()
    finally:
        PROCS.stop(receiver.proc)
        if dsn:
            env.drop_db(dsn)
    allowed = min(concurrency, webhooks * per_webhook) / SLOW_DELAY
    bound = min(allowed, ceiling) if ceiling else allowed
    capped = f", capped by the CPU ceiling {ceiling:.0f}/s of 3" if ceiling and ceiling < allowed else ""
    if ceiling is None:
        capped = " (no CPU ceiling: run 'throughput' too)"
    return [ratio(section, "runner rate / what the concurrency allows", d.rate / bound, 0.70, True,
                  f"{d.rate:.0f}/s vs {bound:.0f}/s (limit {min(concurrency, webhooks * per_webhook)} / "
                  f"{SLOW_DELAY * 1000:.0f} ms = {allowed:.0f}/s{capped}); {received['duplicates']} duplicates "
                  f"{runner_note(d)}".rstrip(),
                  rate=d.rate, steady_rate=d.steady_rate, allowed=allowed, ceiling=ceiling, received=received)]


# -- 7. horizontal scaling --------------------------------------------------------------------------


def bench_horizontal(env: Env, rows: int, concurrency: int = 20, per_webhook: int = 2,
                     webhooks: int = 20) -> list[Result]:
    section = (f"7 horizontal (slow endpoints, each runner --concurrency {concurrency} "
               f"--per-webhook-concurrency {per_webhook})")
    options = ["--concurrency", str(concurrency), "--per-webhook-concurrency", str(per_webhook)]
    expected = rows * webhooks
    receiver = env.start_receiver("horizontal", delay=SLOW_DELAY)
    drains: dict[int, Drain] = {}
    received: dict[int, dict[str, Any]] = {}
    retried: dict[int, int] = {}
    try:
        for count in (1, 2):
            dsn = _slow_setup(env, f"horizontal{count}", receiver, webhooks, rows)
            try:
                receiver.reset()
                drains[count] = drain(env, dsn, f"horizontal{count}", expected, [options] * count, receiver)
                received[count] = receiver.stats()
                with psycopg.connect(dsn, autocommit=True) as conn:
                    row = conn.execute("SELECT count(*) FROM webhooks.deliveries WHERE attempts > 1").fetchone()
                    retried[count] = int(row[0]) if row else -1
            finally:
                with contextlib.suppress(Exception):
                    env.drop_db(dsn)
    finally:
        PROCS.stop(receiver.proc)
    one, two = drains[1], drains[2]
    dups = received[2]["duplicates"]
    return [
        ratio(section, "two runners / one runner", two.rate / one.rate, 1.8, True,
              f"{two.rate:.0f}/s vs {one.rate:.0f}/s ({expected:,} deliveries each)",
              one_rate=one.rate, two_rate=two.rate, received=received, retried=retried),
        Result(section, "deliveries sent twice (two runners)", "0", str(dups), float(dups), dups == 0,
               f"{received[2]['count']} requests for {expected} deliveries; {retried[2]} needed a second attempt "
               f"{runner_note(two)}".rstrip()),
    ]
