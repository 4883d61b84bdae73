"""deploy/pgwebhooks.service: a unit `systemctl enable` accepts, that runs as its own user, hardened,
with a stop timeout above the runner's shutdown grace; checked by systemd's own verifier."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from pgwebhooks.cli import main

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "pgwebhooks.service"


def parse(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections, each key with every value it is given (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if header := re.fullmatch(r"\[(\w+)\]", line):
            current = sections.setdefault(header.group(1), {})
            continue
        assert current is not None, f"a setting outside any section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|min)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_the_unit_runs_as_its_own_user_hardened_and_can_be_enabled() -> None:
    unit = parse(UNIT.read_text())
    service, install = unit["Service"], unit["Install"]
    assert install["WantedBy"] == ["multi-user.target"]
    assert service["User"][0] not in ("", "root") and service["Group"][0] not in ("", "root")
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "RestrictSUIDSGID": "yes", "CapabilityBoundingSet": ""}.items():
        assert service[key] == [value], key
    assert service["ExecStart"][0].endswith("/bin/pgwebhooks run")
    assert service["KillSignal"] == ["SIGTERM"]
    grace = next(p.default for p in main.commands["run"].params if p.name == "shutdown_grace")
    assert isinstance(grace, float) and seconds(service["TimeoutStopSec"][0]) >= grace + 10


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: install Debian's systemd package (make deps does)"
    # verify checks that ExecStart's program exists: point it at this environment's pgwebhooks.
    exe = Path(sys.executable).parent / "pgwebhooks"
    assert exe.exists()
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={exe}", UNIT.read_text())
    unit = tmp_path / "pgwebhooks.service"
    unit.write_text(text)
    proc = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    security = subprocess.run([analyze, "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                              timeout=120)
    exposure = re.search(r"Overall exposure level for pgwebhooks\.service: (\d+\.\d+)", security.stdout)
    assert exposure and float(exposure.group(1)) <= 3.0, security.stdout[-2000:] + security.stderr[-2000:]
