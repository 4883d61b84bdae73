"""Released migrations are frozen: sql/migrations/RELEASED.json lists, per released version, each
migration file it shipped with its sha256. A database records the checksum of every migration it
applied and `migrate` refuses one that changed, so editing a released file would strand every
install of that release; a table change goes into a new, higher-numbered file instead."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

from pgwebhooks import migrations

MIGRATIONS = Path(__file__).resolve().parent.parent / "sql" / "migrations"
RELEASED: dict[str, dict[str, str]] = json.loads((MIGRATIONS / "RELEASED.json").read_text(encoding="utf-8"))


def test_no_released_migration_changed_or_vanished() -> None:
    changed = [
        f"{version}: {name}"
        for version, files in RELEASED.items()
        for name, sha in files.items()
        if not (MIGRATIONS / name).is_file() or hashlib.sha256((MIGRATIONS / name).read_bytes()).hexdigest() != sha
    ]
    assert changed == [], "released migrations changed or removed (add a new migration instead)"


def test_a_later_release_keeps_every_earlier_migration_as_released() -> None:
    versions = list(RELEASED)
    for earlier, later in itertools.pairwise(versions):
        kept = {name: sha for name, sha in RELEASED[later].items() if name in RELEASED[earlier]}
        assert kept == RELEASED[earlier], (earlier, later)


def test_the_manifest_hashes_what_migrate_records() -> None:
    # migrate() records the sha256 of the file's text; the manifest hashes its bytes: equal for
    # UTF-8 files read without newline translation, which is what both must be.
    recorded = {m.name: m.checksum for m in migrations.migrations()}
    for files in RELEASED.values():
        for name, sha in files.items():
            assert recorded.get(name) == sha, name
