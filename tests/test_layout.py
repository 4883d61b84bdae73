"""The test suite's own layout: shared helpers live in helpers.py and the *_helpers / fixture
modules (see tests/README.md), so a test module can be renamed, split or run alone without breaking
another that borrowed from it."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_test_module_imports_another() -> None:
    offenders = {
        str(path.relative_to(TESTS)): sorted(m for m in imported_modules(path) if m.startswith("test_"))
        for path in sorted(TESTS.rglob("*.py"))
        if ".venv" not in path.parts
    }
    assert {k: v for k, v in offenders.items() if v} == {}
