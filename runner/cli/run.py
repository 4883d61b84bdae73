"""The runner's and the receiver developer's commands: `run` (deliver) and `listen` (receive locally)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
from typing import Any

import click
import psycopg

from pgwebhooks import logs
from pgwebhooks.cli import common

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _env(name: str) -> dict[str, Any]:
    return {"envvar": f"PGWEBHOOKS_{name}", "show_envvar": True}


@click.command()
@common.DSN
@click.option("--concurrency", default=200, show_default=True, help="Requests in flight at most.",
              **_env("CONCURRENCY"))
@click.option("--per-webhook-concurrency", default=100, show_default=True, **_env("PER_WEBHOOK_CONCURRENCY"),
              help="Requests in flight per webhook, reached by slow start from 20 as the endpoint answers.")
@click.option("--batch-size", default=200, show_default=True, help="Deliveries leased per claim.",
              **_env("BATCH_SIZE"))
@click.option("--poll-interval", default=5.0, show_default=True, help="Seconds between polls when no NOTIFY comes.",
              **_env("POLL_INTERVAL"))
@click.option("--shutdown-grace", default=10.0, show_default=True, help="Seconds in-flight sends get on SIGTERM.",
              **_env("SHUTDOWN_GRACE"))
@click.option("--lease-margin", default=30, show_default=True, **_env("LEASE_MARGIN"),
              help="Seconds a lease outlasts twice the webhook's timeout; after it, another runner takes over.")
@click.option("--allow-private-networks", is_flag=True, help="Allow loopback, private and link-local destinations.",
              **_env("ALLOW_PRIVATE_NETWORKS"))
@click.option("--allow-cidr", "allowed_cidrs", multiple=True, **_env("ALLOW_CIDR"),
              help="Allow destinations in this CIDR (repeatable; in the variable, separated by spaces).")
@click.option("--log-format", type=click.Choice(["human", "json"]), default="human", show_default=True,
              **_env("LOG_FORMAT"))
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="INFO", show_default=True,
              **_env("LOG_LEVEL"))
@click.option("--metrics-port", type=click.IntRange(1, 65535), **_env("METRICS_PORT"),
              help="Serve /metrics (Prometheus), /healthz and /readyz on this port.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, **_env("METRICS_HOST"),
              help="Address for --metrics-port (0.0.0.0 for a Prometheus elsewhere).")
@click.option("--progress-interval", type=float, default=60.0, show_default=True, **_env("PROGRESS_INTERVAL"),
              help="Seconds between progress log lines (delivered, failed attempts, claimed, in flight); 0: none.")
@click.option("--maintain-interval", type=click.FloatRange(min=0), default=60.0, show_default=True,
              **_env("MAINTAIN_INTERVAL"),
              help="Seconds between calls of webhooks.maintain(), which removes finished work older than the "
                   "retention (webhooks.set_retention); 0: never (run it from pg_cron instead).")
def run(
    dsn: str, concurrency: int, per_webhook_concurrency: int, batch_size: int, poll_interval: float,
    shutdown_grace: float, lease_margin: int, allow_private_networks: bool, allowed_cidrs: tuple[str, ...],
    log_format: str, log_level: str, metrics_port: int | None, metrics_host: str, progress_interval: float,
    maintain_interval: float,
) -> None:
    """Deliver webhooks: drain the outbox until SIGTERM or Ctrl-C.

    Every option also comes from its PGWEBHOOKS_... variable. A malformed DSN or a refused login
    ends the runner at once; an unreachable server is retried until it answers.
    """
    from pgwebhooks.worker import Runner, RunnerConfig

    logs.configure(log_format, log_level)
    # Until the runner's own handlers are in place (serve() below), SIGTERM ends it quietly:
    # nothing is claimed yet, so there is nothing to hand back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    for cidr in allowed_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--allow-cidr") from exc
    _preflight(dsn)
    config = RunnerConfig(
        dsn=dsn, concurrency=concurrency, per_webhook_concurrency=per_webhook_concurrency,
        batch_size=batch_size, poll_interval=poll_interval, shutdown_grace=shutdown_grace,
        lease_margin_seconds=lease_margin,
        allow_private_networks=allow_private_networks, allowed_cidrs=allowed_cidrs,
        metrics_port=metrics_port, metrics_host=metrics_host, progress_interval=progress_interval,
        maintain_interval=maintain_interval,
    )

    # From here a SIGTERM is remembered rather than raised: raised while asyncio builds its loop,
    # SystemExit left a half-made loop whose finaliser printed a traceback.
    early_stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: early_stop.append(signum))

    async def serve() -> None:
        runner = Runner(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.request_stop)
        if early_stop:
            runner.request_stop()
        await runner.run()

    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: stop without a traceback
        asyncio.run(serve())


def _preflight(dsn: str) -> None:
    """Exit at once, in one line, when retrying cannot help: a DSN libpq cannot parse, a login the
    server refuses, a database or role that does not exist. A server that does not answer (yet) is
    the runner's to wait for: it reconnects with backoff."""
    common.check_dsn(dsn)
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            if conn.execute("SELECT to_regnamespace('webhooks')").fetchone() == (None,):
                logging.getLogger("pgwebhooks.runner").warning(
                    "the webhooks schema is not installed in this database yet; run `pgwebhooks migrate`")
    except psycopg.OperationalError as exc:
        line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if common.is_permanent_connect_error(exc):
            raise click.ClickException(f"cannot connect: {line}") from exc
        logging.getLogger("pgwebhooks.runner").warning(
            "database unreachable; retrying until it answers", extra={"error": line})
    except psycopg.Error as exc:
        raise click.ClickException(common.error_line(exc)) from exc


@click.command()
@click.option("--port", default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--secret", "secrets", multiple=True, help="Verify signatures with this secret (repeatable).")
@click.option("--status", default=200, show_default=True, help="HTTP status to answer with.")
@click.option("--forward-to", help="Forward each verified request (raw body and headers) to this local URL, "
              "e.g. localhost:3000/webhooks, and answer with what it answered.")
def listen(port: int, host: str, secrets: tuple[str, ...], status: int, forward_to: str | None) -> None:
    """Receive webhooks locally, verify their signatures and print them (or forward them)."""
    from pgwebhooks.receiver import forward_url, run_listener

    if forward_to:
        try:
            forward_url(forward_to)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--forward-to") from exc
    run_listener(host, port, secrets, status, sys.stdout, forward_to)


COMMANDS = (run, listen)
