"""One webhook never takes all of a runner's slots, whatever its max_concurrency says: a slow
endpoint with max_concurrency 10000 used to fill --concurrency and make every other webhook
wait for its timeouts."""

from __future__ import annotations

import uuid

import psycopg
from helpers import create_table, create_webhook, eventually, insert, query, receiver, runner_config, running
from receivers import Reply

from pgwebhooks.worker import Runner, RunnerConfig


def test_a_webhooks_limit_is_capped_at_a_share_of_the_runner() -> None:
    runner = Runner(RunnerConfig(dsn="postgresql://unused", concurrency=10, per_webhook_concurrency=100))
    hook = uuid.uuid4()
    for _ in range(200):
        runner.admission.grow(hook, answered=True)
    assert runner.admission.limit(hook) == 8  # 80% of 10
    assert runner.admission.per_claim <= 16
    runner.admission.claimed(hook, max_concurrency=10_000)  # as claim() reports a max_concurrency of 10000
    assert runner.admission.limit(hook) == 8
    assert Runner(RunnerConfig(dsn="postgresql://unused", concurrency=1)).admission.share == 1


def test_claim_caps_a_webhook_with_max_concurrency_at_the_runners_limit(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE items (id serial PRIMARY KEY, label text)")
    conn.execute("SELECT webhooks.create_webhook('greedy', 'https://e.com/g', '[{\"table\": \"items\"}]',"
                 " max_concurrency => 10000)")
    conn.execute("INSERT INTO items (label) SELECT 'x' FROM generate_series(1, 50)")
    assert len(conn.execute("SELECT * FROM webhooks.claim(100, 30, 4)").fetchall()) == 4


async def test_a_slow_webhook_with_a_huge_max_concurrency_leaves_slots_for_others(db: str) -> None:
    create_table(db)
    create_table(db, "other")
    async with receiver([Reply(200, delay=1.0)]) as slow, receiver() as fast:
        greedy = create_webhook(db, slow.url, table="items")
        query(db, "UPDATE webhooks.webhooks SET max_concurrency = 10000 WHERE id = %s RETURNING id", greedy["id"])
        other = create_webhook(db, fast.url, table="other")
        async with running(runner_config(db, concurrency=5)):
            insert(db, 40)
            assert await eventually(lambda: len(slow.requests) >= 4, timeout=20)
            insert(db, 10, table="other")
            await fast.wait_for(10, timeout=30)
    assert slow.max_concurrent["/hook"] <= 4, slow.max_concurrent
    done = query(db, "SELECT count(*) AS n FROM webhooks.deliveries WHERE webhook_id = %s AND status = 'delivered'",
                 other["id"])
    assert done[0]["n"] == 10
