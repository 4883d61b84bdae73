"""`pgwebhooks run`: its options and their PGWEBHOOKS_ variables, log levels, and refusing at once
what cannot work while waiting out a server that may come back."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo

from pgwebhooks.cli import main


def test_an_unknown_log_level_is_a_usage_error_not_a_traceback() -> None:
    result = CliRunner().invoke(main, ["run", "--dsn", "postgresql://nowhere", "--log-level", "LOUD"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--log-level'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("spelling", "level"), [("DeBuG", logging.DEBUG), ("debug", logging.DEBUG),
                                                  ("wArNiNg", logging.WARNING), ("error", logging.ERROR)])
def test_log_levels_are_case_insensitive(spelling: str, level: int) -> None:
    # The effect, not the parsed value: `run` must get past option parsing and set the logger to
    # that level. A case-sensitive choice ends in a usage error (exit 2); a level passed on
    # unnormalised makes logging raise. The malformed DSN then stops `run` before it connects.
    logger = logging.getLogger("pgwebhooks")
    saved = (logger.level, logger.handlers[:], logger.propagate, signal.getsignal(signal.SIGTERM))
    logger.setLevel(logging.CRITICAL)
    try:
        result = CliRunner().invoke(main, ["run", "--dsn", "host=127.0.0.1 port", "--log-level", spelling])
        configured = logger.level
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]
        signal.signal(signal.SIGTERM, saved[3])
    assert result.exit_code == 1 and "malformed DSN" in result.output, result.output
    assert configured == level


def test_every_run_option_has_its_pgwebhooks_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    run = main.commands["run"]
    values = {"PGWEBHOOKS_DSN": "host=x", "PGWEBHOOKS_CONCURRENCY": "7", "PGWEBHOOKS_PER_WEBHOOK_CONCURRENCY": "3",
              "PGWEBHOOKS_BATCH_SIZE": "9", "PGWEBHOOKS_POLL_INTERVAL": "0.5", "PGWEBHOOKS_SHUTDOWN_GRACE": "25",
              "PGWEBHOOKS_LEASE_MARGIN": "40", "PGWEBHOOKS_ALLOW_PRIVATE_NETWORKS": "1",
              "PGWEBHOOKS_ALLOW_CIDR": "10.0.0.0/8 127.0.0.0/8", "PGWEBHOOKS_LOG_FORMAT": "json",
              "PGWEBHOOKS_LOG_LEVEL": "debug", "PGWEBHOOKS_METRICS_PORT": "9187",
              "PGWEBHOOKS_METRICS_HOST": "0.0.0.0", "PGWEBHOOKS_PROGRESS_INTERVAL": "15",
              "PGWEBHOOKS_MAINTAIN_INTERVAL": "0"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    params = run.make_context("run", []).params
    assert params == {"dsn": "host=x", "concurrency": 7, "per_webhook_concurrency": 3, "batch_size": 9,
                      "poll_interval": 0.5, "shutdown_grace": 25.0, "lease_margin": 40,
                      "allow_private_networks": True, "allowed_cidrs": ("10.0.0.0/8", "127.0.0.0/8"),
                      "log_format": "json", "log_level": "DEBUG", "metrics_port": 9187,
                      "metrics_host": "0.0.0.0", "progress_interval": 15.0,
                      "maintain_interval": 0.0}
    assert all(isinstance(p, click.Option) and str(p.envvar).startswith("PGWEBHOOKS_") for p in run.params)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    exe = Path(sys.executable).parent / "pgwebhooks"
    return subprocess.Popen([str(exe), "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def test_run_exits_at_once_on_a_malformed_dsn_or_a_refused_login(db: str) -> None:
    for dsn, expected in (("host=127.0.0.1 port", "malformed DSN"),
                          (make_conninfo(db, user="no_such_role_here"), "cannot connect")):
        proc = _run("--dsn", dsn)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert expected in err and err.strip().count("\n") == 0 and "Traceback" not in err, err


def test_run_keeps_trying_an_unreachable_server_and_stops_cleanly_on_sigterm() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    proc = _run(env={"PGWEBHOOKS_DSN": f"host=127.0.0.1 port={port} user=x dbname=x connect_timeout=2",
                     "PGWEBHOOKS_LOG_FORMAT": "json", "PGWEBHOOKS_POLL_INTERVAL": "0.2"})
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # bounded: the preflight connect gives up within connect_timeout
        assert json.loads(first)["msg"] == "database unreachable; retrying until it answers", first
        assert proc.poll() is None  # still running: the server may come back
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err
