"""`migrate` against a session that holds a lock on a webhooks table: it must not queue behind it
without end (every writer would queue behind migrate). It waits lock_timeout, rolls back, retries
a bounded number of times, and either succeeds once the holder is gone or fails with a message
that says what happened."""

from __future__ import annotations

import psycopg
import pytest
from click.testing import CliRunner

from pgwebhooks import migrations
from pgwebhooks.cli import main


@pytest.fixture
def holder(db: str):
    """An admin's transaction left open after an UPDATE of webhooks.webhooks (ROW EXCLUSIVE)."""
    conn = psycopg.connect(db, autocommit=False)
    conn.execute("UPDATE webhooks.webhooks SET description = description")
    yield conn
    conn.close()


def test_migrate_gives_up_with_a_clear_message(db: str, holder: psycopg.Connection,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrations, "LOCK_RETRY_PAUSE_SECONDS", 0.05)
    retries: list[int] = []
    with pytest.raises(migrations.LockBusy) as raised:
        migrations.migrate(db, lock_timeout=0.2, attempts=2, on_retry=lambda n, reason: retries.append(n))
    assert retries == [1], "one retry between two attempts"
    message = str(raised.value)
    assert "gave up after 2 attempt(s)" in message and "lock" in message and "nothing was applied" in message
    # The holder was never disturbed, and nothing of migrate is left waiting.
    assert holder.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone() == (0,)
    holder.commit()


def test_migrate_cli_fails_fast_and_says_so(db: str, holder: psycopg.Connection,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrations, "LOCK_RETRY_PAUSE_SECONDS", 0.05)
    result = CliRunner().invoke(main, ["migrate", "--dsn", db, "--lock-timeout", "0.2"])
    assert result.exit_code == 1, result.output
    assert "trying again" in result.output and "gave up after 3 attempt(s)" in result.output
    holder.rollback()


def test_migrate_succeeds_once_the_holder_commits(db: str, holder: psycopg.Connection,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrations, "LOCK_RETRY_PAUSE_SECONDS", 0.05)

    def holder_commits(attempt: int, reason: str) -> None:
        holder.commit()  # the admin finishes while migrate waits to try again

    assert migrations.migrate(db, lock_timeout=0.2, attempts=3, on_retry=holder_commits) == []
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT checksum FROM webhooks._migrations WHERE name = %s",
                            (migrations.FUNCTIONS_RECORD,)).fetchone() is not None
