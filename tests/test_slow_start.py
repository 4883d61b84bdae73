"""The runner's per-webhook slow start: a window of sends in flight that grows with answers."""

from __future__ import annotations

import uuid

from pgwebhooks.worker import SLOW_START, Runner, RunnerConfig


def test_window_starts_small_grows_with_answers_and_falls_back_on_a_failure() -> None:
    runner = Runner(RunnerConfig(dsn="postgresql://unused"))
    hook = uuid.uuid4()
    assert RunnerConfig.per_webhook_concurrency > SLOW_START
    assert runner.admission.limit(hook) == SLOW_START  # a first wave at a dead endpoint stays this small
    for _ in range(500):
        runner.admission.grow(hook, answered=True)
    assert runner.admission.limit(hook) == RunnerConfig.per_webhook_concurrency  # capped by the limit
    assert runner.admission.per_claim == 2 * RunnerConfig.per_webhook_concurrency
    runner.admission.grow(hook, answered=False)
    assert runner.admission.limit(hook) == SLOW_START
    other = uuid.uuid4()
    assert runner.admission.limit(other) == SLOW_START  # windows are per webhook


def test_window_never_exceeds_a_smaller_limit() -> None:
    runner = Runner(RunnerConfig(dsn="postgresql://unused", per_webhook_concurrency=3))
    hook = uuid.uuid4()
    assert runner.admission.limit(hook) == 3
    runner.admission.grow(hook, answered=True)
    assert runner.admission.limit(hook) == 3
    assert runner.admission.per_claim == 6
    runner.admission.claimed(hook, max_concurrency=50)  # a webhook's own, as claim() reports it
    for _ in range(100):
        runner.admission.grow(hook, answered=True)
    assert runner.admission.limit(hook) == 50
