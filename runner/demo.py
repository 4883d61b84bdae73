"""`make demo`: the whole flow on this machine, end to end, then everything stopped again.

A throwaway PostgreSQL in a temporary directory of its own, the schema, a sample `orders` table, a webhook pointing at
a local receiver that verifies both signature schemes, the real runner as a subprocess, and
real writes: inserts, an update, a delete and a transaction that rolls back (and sends nothing).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pgwebhooks import migrations
from pgwebhooks.localpg import LocalPostgres, free_port
from pgwebhooks.receiver import Receiver

EXPECTED_EVENTS = 5  # 3 inserts, 1 update, 1 delete; the rolled-back insert must not arrive


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def start_runner(dsn: str) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("pgwebhooks")
    return subprocess.Popen(
        [str(exe), "run", "--dsn", dsn, "--allow-cidr", "127.0.0.1/32", "--poll-interval", "1"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def make_changes(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for customer, total in [("ada", 42.00), ("grace", 17.50), ("linus", 99.90)]:
            conn.execute("INSERT INTO orders (customer, total) VALUES (%s, %s)", (customer, total))
            print(f"    INSERT order for {customer} ({total})")
        conn.execute("UPDATE orders SET status = 'shipped' WHERE customer = 'ada'")
        print("    UPDATE ada's order: status = shipped")
        conn.execute("DELETE FROM orders WHERE customer = 'grace'")
        print("    DELETE grace's order")
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO orders (customer, total) VALUES ('rolled-back', 1)")
        print("    INSERT order for 'rolled-back' ... ROLLBACK (nothing must be sent)")


def show_delivery_log(dsn: str, webhook_id: str) -> None:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT delivery_id, event, status, attempts, response_status, latency_ms"
            " FROM webhooks.get_deliveries(%s) ORDER BY delivery_id", (webhook_id,)
        ).fetchall()
    print(f"    {'delivery':>8}  {'event':<7} {'status':<10} {'attempts':>8}  {'http':>4}  {'latency':>8}")
    for r in rows:
        print(f"    {r['delivery_id']:>8}  {r['event']:<7} {r['status']:<10} {r['attempts']:>8}  "
              f"{r['response_status'] or '':>4}  {r['latency_ms'] or 0:>6}ms")


def make_demo_dir() -> Path:
    """A fresh directory for the server's data, outside the checkout.

    As root the server runs as the `postgres` OS user, who must reach its data directory and
    may not be able to enter the checkout (root's home is 0700, as is a `mktemp -d` folder).
    """
    base = Path(tempfile.mkdtemp(prefix="pgwebhooks-demo-"))
    os.chmod(base, 0o755)  # mkdtemp makes it 0700
    return base


async def demo() -> int:
    demo_dir = make_demo_dir()
    say(f"Starting a throwaway PostgreSQL in {demo_dir}")
    pg = LocalPostgres(demo_dir / "pgdata")
    # initdb and pg_ctl run as `postgres` from our working directory and fail if it cannot be entered.
    os.chdir(demo_dir)
    try:
        pg.start()
    except BaseException:
        pg.destroy()
        shutil.rmtree(demo_dir, ignore_errors=True)
        raise
    runner: subprocess.Popen[bytes] | None = None
    receiver = Receiver(out=sys.stdout)
    try:
        dsn = pg.dsn
        print(f"    {dsn}")
        say("Installing the webhooks schema (pgwebhooks migrate)")
        print("    " + ", ".join(migrations.migrate(dsn)))

        port = free_port()
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
            conn.execute(
                "CREATE TABLE orders (id serial PRIMARY KEY, customer text NOT NULL,"
                " total numeric(10, 2) NOT NULL, status text NOT NULL DEFAULT 'new')"
            )
            say("Creating a webhook for INSERT, UPDATE and DELETE on orders")
            hook = conn.execute(
                "SELECT id, name, url, secret FROM webhooks.create_webhook("
                "name => 'orders-to-local', url => %s, events => %s)",
                (f"http://127.0.0.1:{port}/webhooks", Jsonb([{"table": "orders"}])),
            ).fetchone()
        assert hook is not None
        print(f"    id {hook['id']}\n    url {hook['url']}\n    secret {hook['secret'][:14]}... (shown once)")

        say(f"Starting the local receiver on 127.0.0.1:{port} (pgwebhooks listen)")
        receiver.secrets = [hook["secret"]]
        await receiver.start("127.0.0.1", port)

        say("Starting the runner (pgwebhooks run)")
        runner = start_runner(dsn)

        say("Writing to orders")
        make_changes(dsn)

        say("Deliveries arriving at the receiver")
        events = await receiver.wait_for(EXPECTED_EVENTS, timeout=30)
        await asyncio.sleep(1.0)  # anything extra (the rolled-back insert) would show up now
        events = receiver.events

        say("Delivery log (webhooks.get_deliveries)")
        await asyncio.sleep(0.5)  # let the runner report its last results
        show_delivery_log(dsn, str(hook["id"]))

        verified = [e for e in events if e["standard_verified"] and e["legacy_verified"]]
        leaked = [e for e in events if (e["payload"].get("record") or {}).get("customer") == "rolled-back"]
        say("Result")
        print(f"    {len(events)} events received, {len(verified)} with both signatures verified, "
              f"{len(leaked)} from the rolled-back transaction")
        ok = len(events) == EXPECTED_EVENTS and len(verified) == len(events) and not leaked
        print("    OK" if ok else "    FAILED")
        print("    To verify signatures in your own receiver: README, \"Verifying a signature in your"
              " receiver\" (Python and Node examples), or any Standard Webhooks library.")
        return 0 if ok else 1
    finally:
        say("Stopping everything")
        if runner is not None:
            runner.send_signal(signal.SIGTERM)
            code = runner.wait(timeout=30)
            print(f"    runner exited with {code}")
        await receiver.stop()
        pg.destroy()
        shutil.rmtree(demo_dir, ignore_errors=True)
        print(f"    receiver and PostgreSQL stopped, {demo_dir} removed")
        say("See and operate your own database's webhooks in a browser")
        print(f"    {Path(sys.executable).with_name('pgwebhooks')} dashboard --dsn postgresql://USER@HOST/DB"
              "    # then open http://127.0.0.1:8080/")


def main() -> None:
    sys.exit(asyncio.run(demo()))


if __name__ == "__main__":
    main()
