"""Isolation: an endpoint down for a while, with deliveries queued and events arriving.

What a dead endpoint sees is counted at its socket: a stand-in process listens on the webhook's
loopback port, notes the time of every connection and resets it at once (no HTTP answer, which
is a failure to the runner, as a refused connection is). After the outage a real receiver takes
over the same port, and every delivery must arrive with none failed because of the outage alone.

Run as a script, this file is that stand-in:

    python outage.py --port 8123 --log connections.txt --max-seconds 300
"""

from __future__ import annotations

import argparse
import socket
import struct
import time
from typing import Any

import psycopg
from common import PROCS, PYTHON, BenchError, Env, create_orders, create_webhook, wait_until
from delivery import bulk_backlog
from report import Result, info, threshold

from pgwebhooks.localpg import free_port
from pgwebhooks.worker import CIRCUIT_FAILURE_THRESHOLD, SLOW_START, RunnerConfig

GAP = 0.5  # connections closer than this belong to one window: probes go at least a second apart


def _windows(times: list[float]) -> list[list[float]]:
    """Connection times grouped into bursts separated by quiet gaps (one per backoff window)."""
    groups: list[list[float]] = []
    for t in sorted(times):
        if groups and t - groups[-1][-1] < GAP:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


def _count(conn: psycopg.Connection[Any], hook: str, status: str) -> int:
    row = conn.execute("SELECT count(*) FROM webhooks.deliveries WHERE webhook_id = %s AND status = %s",
                       (hook, status)).fetchone()
    return int(row[0]) if row else 0


def _owed(conn: psycopg.Connection[Any], hook: str) -> int:
    row = conn.execute("SELECT count(*) FROM webhooks.deliveries WHERE webhook_id = %s", (hook,)).fetchone()
    return int(row[0]) if row else 0


def bench_outage(env: Env, seconds: float, queued: int = 500, rate: float = 20.0) -> list[Result]:
    per_webhook = RunnerConfig.per_webhook_concurrency
    section = (f"8 isolation: endpoint down {seconds:.0f} s ({queued} deliveries queued, {rate:.0f} new events/s "
               "meanwhile; runner with default flags), then back")
    port = free_port()
    log = env.workdir / "outage-connections.txt"
    log.write_text("")
    down = PROCS.spawn([PYTHON, __file__, "--port", str(port), "--log", str(log),
                        "--max-seconds", str(seconds + 60)], env.log("outage-down"))
    dsn = env.fresh_db("outage")
    runner = receiver = None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_orders(conn, "orders")
            hook = create_webhook(conn, "flaky", f"http://127.0.0.1:{port}/hook", "orders")
            wait_until(lambda: _listening(port), 20, "the stand-in to listen", interval=0.1)
            bulk_backlog(conn, "orders", queued)
            runner = env.start_runner(dsn, "outage")
            began = time.monotonic()
            insert = "INSERT INTO orders (customer_id, amount, status) VALUES (1, 1, 'new')"
            i = 0
            while (now := time.monotonic()) < began + seconds:  # paced, bounded by the outage's length
                if runner.poll() is not None:
                    raise BenchError(f"runner exited with {runner.returncode}")
                if now >= began + i / rate:
                    conn.execute(insert, prepare=True)
                    i += 1
                else:
                    time.sleep(min(0.05, began + i / rate - now))
            PROCS.stop(down)
            times = [float(line) for line in log.read_text().split()]
            circuit = conn.execute("SELECT circuit, times_opened FROM webhooks.endpoints WHERE webhook_id = %s",
                                   (hook,)).fetchone()
            owed = _owed(conn, hook)
            during = {"delivered": _count(conn, hook, "delivered"), "failed": _count(conn, hook, "failed")}
            receiver = env.start_receiver("outage-back", port=port)
            back = time.monotonic()
            # Bounded: the longest cooldown (30 s) before the next probe, then retries already scheduled.
            deadline = back + 120
            while _count(conn, hook, "delivered") + _count(conn, hook, "failed") < owed:
                if time.monotonic() > deadline:
                    raise BenchError(f"{_count(conn, hook, 'delivered')} of {owed} delivered 120 s after recovery")
                time.sleep(0.1)
            recovered = time.monotonic() - back
            delivered, failed_n = _count(conn, hook, "delivered"), _count(conn, hook, "failed")
            row = conn.execute("SELECT max(attempts) FROM webhooks.deliveries WHERE webhook_id = %s",
                               (hook,)).fetchone()
            most_attempts = int(row[0]) if row and row[0] is not None else 0
        stats = receiver.stats()
    finally:
        for proc in (runner, down, receiver.proc if receiver else None):
            if proc is not None:
                PROCS.stop(proc)
        env.drop_db(dsn)
    if not times:
        raise BenchError("the down endpoint saw no connection at all")
    windows = _windows(times)
    burst, probes = windows[0], windows[1:]
    shape = " | ".join(f"+{w[0] - times[0]:.0f}s:{len(w)}" for w in windows)
    most = max((len(w) for w in probes), default=0)
    return [
        info(section, "connections to the down endpoint", f"{len(times)}",
             f"over {seconds:.0f} s, owed {owed:,} deliveries; per window (start: count) {shape}; "
             f"circuit {circuit[0] if circuit else '?'} after opening {circuit[1] if circuit else '?'} times",
             connections=times, windows=[len(w) for w in windows], owed=owed, during=during),
        # The first window in flight, plus sends that a slot freed by one of the first failures
        # starts before the runner has seen enough of them to hold the webhook back.
        threshold(section, "connections before the circuit opened (first burst)", len(burst),
                  min(SLOW_START, per_webhook) + CIRCUIT_FAILURE_THRESHOLD - 1, "conns", False,
                  f"slow start's first window ({SLOW_START} of --per-webhook-concurrency {per_webhook}) "
                  f"and up to {CIRCUIT_FAILURE_THRESHOLD - 1} sends started before the failures stop it"),
        threshold(section, "connections per backoff window once open (most)", most, 1, "conns", False,
                  f"{len(probes)} probe windows after the burst"),
        threshold(section, "deliveries failed because of the outage", failed_n, 0, "", False,
                  f"{delivered:,} of {owed:,} delivered {recovered:.1f} s after the endpoint came back; "
                  f"most attempts on one delivery {most_attempts}; receiver saw {stats['count']:,} "
                  f"({stats['duplicates']} duplicates)", delivered=delivered, owed=owed, recovered_s=recovered),
        threshold(section, "deliveries arrived after recovery / owed", 100.0 * stats["unique"] / owed, 100, "%",
                  True, f"{stats['unique']:,} distinct of {owed:,}"),
    ]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
    return True


def serve_down(port: int, log_path: str, max_seconds: float) -> None:
    """Accept and reset every connection, one timestamp a line, until killed or `max_seconds` pass."""
    end = time.monotonic() + max_seconds
    with socket.socket() as server, open(log_path, "a") as log:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(1024)
        server.settimeout(0.5)
        first = True
        while time.monotonic() < end:
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            if first:  # the readiness check of bench_outage, not the runner
                first = False
            else:
                log.write(f"{time.time()}\n")
                log.flush()
            # SO_LINGER 0: close sends a reset, so the sender gets no HTTP answer at all.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--max-seconds", type=float, default=300)
    args = parser.parse_args()
    serve_down(args.port, args.log, args.max_seconds)
