"""Results, the side-by-side table and the JSON file that lets runs be compared."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Result:
    section: str  # "1 write, one row per txn", ...
    name: str  # what is compared, e.g. "tps 1 webhook / none"
    target: str  # e.g. ">= 0.85x"; "" for rows that only inform
    measured: str  # the ratio or value as shown
    value: float | None = None  # the number the target is judged on
    met: bool | None = None  # None: informational, or not measured
    detail: str = ""  # the raw numbers behind the ratio
    data: dict[str, Any] = field(default_factory=dict)  # everything else, for the JSON only


def at_least(value: float, limit: float) -> bool:
    return value >= limit


def at_most(value: float, limit: float) -> bool:
    return value <= limit


def ratio(section: str, name: str, value: float, limit: float, higher_is_better: bool, detail: str,
          **data: Any) -> Result:
    """A row judged on `value` against `limit` (a ratio, shown with an x)."""
    met = at_least(value, limit) if higher_is_better else at_most(value, limit)
    target = f"{'>=' if higher_is_better else '<='} {limit:g}x"
    return Result(section, name, target, f"{value:.2f}x", value, met, detail, dict(data))


def threshold(section: str, name: str, value: float, limit: float, unit: str, higher_is_better: bool,
              detail: str = "", **data: Any) -> Result:
    """A row judged on an absolute value (a latency, a rate, a size) against `limit`."""
    met = at_least(value, limit) if higher_is_better else at_most(value, limit)
    target = f"{'>=' if higher_is_better else '<='} {limit:g} {unit}"
    return Result(section, name, target, f"{value:.1f} {unit}", value, met, detail, dict(data))


def info(section: str, name: str, measured: str, detail: str = "", **data: Any) -> Result:
    """A row shown for context, judged on nothing."""
    return Result(section, name, "", measured, None, None, detail, dict(data))


def failed(section: str, name: str, error: str) -> Result:
    return Result(section, name, "", "ERROR", None, False, error.strip().splitlines()[-1][:200] if error else "",
                  {"error": error})


def render(results: list[Result]) -> str:
    headers = ("measurement", "target", "measured", "met?", "numbers")
    rows: list[tuple[str, ...] | str] = []  # a str is a section title, printed on a line of its own
    section = None
    for r in results:
        if r.section != section:
            section = r.section
            rows.append(f"[{section}]")
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        rows.append((f"  {r.name}", r.target, r.measured, met, r.detail))
    cells = [row for row in rows if isinstance(row, tuple)]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    widths[-1] = len(headers[-1])  # the last column is not padded: long details run on
    line = "  ".join("-" * w for w in widths[:-1]) + "  " + "-" * 40
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), line]
    out += [row if isinstance(row, str) else "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]
    judged = [r for r in results if r.met is not None]
    out += [line, f"{sum(1 for r in judged if r.met)}/{len(judged)} targets met"]
    return "\n".join(out)


def machine(pg_bindir: Path) -> dict[str, Any]:
    pg_version = ""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        pg_version = subprocess.run([str(pg_bindir / "postgres"), "--version"], capture_output=True,
                                    text=True, timeout=10, check=False).stdout.strip()
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "postgres": pg_version, "loadavg_at_start": os.getloadavg()}


def write_json(path: Path, results: list[Result], meta: dict[str, Any]) -> None:
    path.write_text(json.dumps({**meta, "results": [asdict(r) for r in results]}, indent=2, default=str) + "\n")
