"""Backend crashes of the test server, read from its log.

A backend that crashes makes PostgreSQL restart and drop every session on the server, so most
tests still pass (the runner reconnects) while the crash goes unseen. conftest.py fails the run
on one and prints what the server names: the signal, and the statement the backend was running.
"""

from __future__ import annotations

import re
from pathlib import Path

# SIGILL, SIGABRT, SIGBUS, SIGFPE, SIGSEGV: a bug in the server or an extension. SIGKILL is left
# out: the chaos tests kill backends on purpose. Any process the postmaster restarts for: a
# client's backend ("server process" before PostgreSQL 18, "client backend" from 18 on), a
# parallel worker ('background worker "parallel worker"'), an autovacuum worker. A watch for
# "server process" alone missed every crash on PostgreSQL 18.
CRASH = re.compile(r"\(PID \d+\) was terminated by signal (4|6|7|8|11)\b")
# A log line of its own starts with the timestamp log_line_prefix puts first.
NEW_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
STATEMENT_LINES = 40


def crashes_in(log: Path) -> list[str]:
    """Each crash in `log`: its line, then the statement the server says the backend was running."""
    if not log.exists():
        return []
    lines = log.read_text(errors="replace").splitlines()
    found = []
    for i, line in enumerate(lines):
        if not CRASH.search(line):
            continue
        report = [line]
        following = lines[i + 1:i + 1 + STATEMENT_LINES]
        if following and "Failed process was running" in following[0]:
            report.append(following[0])
            report += _until_next_entry(following[1:])
        found.append("\n".join(report))
    return found


def _until_next_entry(lines: list[str]) -> list[str]:
    taken = []
    for line in lines:
        if NEW_ENTRY.match(line):
            break
        taken.append(line)
    return taken
