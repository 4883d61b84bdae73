"""`make verify`: the generated files are current and the version is the same everywhere it is written.

- sql/functions/020_plpython.sql is what `pgwebhooks render-plpython` makes of plpython/*.py now;
- pyproject.toml's version is the one the package reports and, where the SQL still spells it out,
  the one `webhooks.version()` returns.
Exit status 1 with one line per problem; nothing is rewritten (`make sql` regenerates).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `CREATE ... FUNCTION webhooks.version() ... AS $$ SELECT 'x.y.z' $$`, however it is laid out.
SQL_VERSION = re.compile(r"FUNCTION\s+webhooks\.version\s*\(\s*\)[^;]*?\$\$\s*SELECT\s+'([^']+)'", re.DOTALL)


def main() -> int:
    from pgwebhooks import __version__, migrations

    problems = []
    if migrations.PLPYTHON_SQL.read_text(encoding="utf-8") != migrations.render_plpython():
        problems.append(f"{migrations.PLPYTHON_SQL.relative_to(ROOT)} is stale: run `make sql`")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"].get("version")
    if declared is None:
        problems.append("pyproject.toml declares no [project] version")
    elif __version__ != declared:
        problems.append(f"pgwebhooks.__version__ is {__version__}, pyproject.toml says {declared}"
                        " (an old editable install? `make clean venv`)")
    for path in sorted((ROOT / "sql" / "functions").glob("*.sql")):
        for found in SQL_VERSION.finditer(path.read_text(encoding="utf-8")):
            if found.group(1) != declared:
                problems.append(f"{path.relative_to(ROOT)}: webhooks.version() returns {found.group(1)},"
                                f" pyproject.toml says {declared}")
    for line in problems:
        print(f"verify: {line}", file=sys.stderr)
    if not problems:
        print(f"verify: generated files current, version {declared} everywhere")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
