"""Where the runner's CPU goes: drain a one-webhook backlog in-process under cProfile.

    .venv/bin/python tests/bench/profile_runner.py [--deliveries 20000] [--top 40] [--sort tottime]

The setting of measurement 3 (`make bench`, delivery throughput): one webhook, the fast local
receiver in a process of its own, the runner with its default flags. Prints the rate and the
profile's top functions. The profile slows the runner down, so the rate is only a comparison
between two runs of this script.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from common import PROCS, Env, create_orders, create_webhook
from delivery import single_row_backlog

from pgwebhooks.worker import Runner, RunnerConfig


def server_cpu_seconds(postmaster_pid: int) -> float:
    """CPU time used so far by the server's processes (its backends: claim(), complete())."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster_pid:  # ppid
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def drain(dsn: str, expected: int, timeout: float, postmaster_pid: int) -> tuple[float, float]:
    runner = Runner(RunnerConfig(dsn=dsn, allowed_cidrs=("127.0.0.1/32",), progress_interval=0))
    task = asyncio.create_task(runner.run())
    started = time.perf_counter()
    cpu_before = server_cpu_seconds(postmaster_pid)
    deadline = time.monotonic() + timeout
    while runner.stats.delivered < expected and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.05)
    seconds = time.perf_counter() - started
    server_cpu = server_cpu_seconds(postmaster_pid) - cpu_before
    runner.request_stop()
    await task
    return seconds, server_cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--no-profile", action="store_true", help="only the rate")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="profile-runner-") as tmp:
        env = Env(Path(tmp)).start()
        try:
            dsn = env.fresh_db("profile")
            receiver = env.start_receiver("profile")
            with psycopg.connect(dsn, autocommit=True) as conn:
                create_orders(conn, "orders")
                create_webhook(conn, "profile", receiver.url("hook"), "orders")
                single_row_backlog(conn, "orders", args.deliveries)
            profile = cProfile.Profile()
            if not args.no_profile:
                profile.enable()
            pid = int((env.server.datadir / "postmaster.pid").read_text().split()[0])
            seconds, server_cpu = asyncio.run(drain(dsn, args.deliveries, max(60.0, args.deliveries / 100), pid))
            profile.disable()
            print(f"{args.deliveries / seconds:.0f} deliveries/s ({seconds:.2f}s); PostgreSQL used "
                  f"{server_cpu:.2f} CPU-s ({server_cpu / args.deliveries * 1e6:.0f} us per delivery)")
            if not args.no_profile:
                out = io.StringIO()
                pstats.Stats(profile, stream=out).sort_stats(args.sort).print_stats(args.top)
                print(out.getvalue())
        finally:
            PROCS.kill_all()
            env.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
