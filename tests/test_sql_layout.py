"""The SQL stays readable: no function longer than a screen, no file longer than ~400 lines.

Read from the files, no database needed. A function's length is its body, from the line after
`AS $$` to the line before the closing `$$;`.
"""

from __future__ import annotations

import re
from pathlib import Path

FUNCTIONS = Path(__file__).resolve().parent.parent / "sql" / "functions"
GENERATED = {"020_plpython.sql"}  # rendered from plpython/*.py

MAX_BODY = 80
# claim() and complete() each keep one data-modifying statement (one snapshot).
# _capture_statement is every watched one-row write's path: a helper call there costs about 5%
# of a one-row insert, so it stays whole (and each watched table gets a copy of it with its type
# probe folded into the plan: 034_sync_triggers.sql). _capture_filtered is the only reader of its transition
# tables: the set-based query, the route lookup and the fail-closed units all run in it.
LONGER = {"claim": 120, "complete": 120, "_capture_statement": 140, "_capture_filtered": 90}
MAX_FILE = 400

_CREATE = re.compile(r"^CREATE OR REPLACE FUNCTION webhooks\.(\w+)")
_OPEN = re.compile(r"\bAS (\$\w*\$)\s*$")


def function_bodies(path: Path) -> list[tuple[str, int]]:
    """(name, body lines) of every multi-line function defined in `path`."""
    lines = path.read_text().split("\n")
    found: list[tuple[str, int]] = []
    name: str | None = None
    start = 0
    tag = ""
    for i, line in enumerate(lines):
        m = _CREATE.match(line)
        if m and name is None:
            name, tag = m.group(1), ""
            continue
        if name is None:
            continue
        if not tag:
            o = _OPEN.search(line)
            if o:
                tag, start = o.group(1), i
            elif "$$" in line:  # a one-line body: AS $$ SELECT 5 $$;
                name = None
            continue
        if line.startswith(tag):
            found.append((name, i - start - 1))
            name, tag = None, ""
    return found


def test_the_parser_sees_the_functions() -> None:
    names = {n for f in FUNCTIONS.glob("*.sql") for n, _ in function_bodies(f)}
    assert {"claim", "complete", "update_webhook", "_capture_filtered", "_check_where", "_parse_events"} <= names


def test_no_function_is_longer_than_a_screen() -> None:
    too_long = [
        (f.name, name, n)
        for f in sorted(FUNCTIONS.glob("*.sql"))
        if f.name not in GENERATED
        for name, n in function_bodies(f)
        if n > LONGER.get(name, MAX_BODY)
    ]
    assert too_long == []


def test_no_sql_file_is_longer_than_400_lines() -> None:
    too_long = [(f.name, n) for f in sorted(FUNCTIONS.glob("*.sql"))
                if (n := len(f.read_text().splitlines())) > MAX_FILE]
    assert too_long == []
