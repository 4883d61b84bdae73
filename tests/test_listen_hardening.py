"""`pgwebhooks listen` as an attacker and as each receiver profile would meet it.

--forward-to must reach this machine only: the name is resolved and every address checked, so
`127.attacker.invalid` (a name that merely starts like a loopback address) is refused before
anything is sent. --secret must verify what every profile really sends: the requests here are
claimed from the database (signed by claim() itself) and POSTed to a running `pgwebhooks listen`.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

from pgwebhooks.cli import main
from pgwebhooks.localpg import free_port
from pgwebhooks.receiver import Receiver, forward_url

SECRET = "whsec_" + base64.b64encode(b"p" * 24).decode()
PROFILES = ["standard", "fluxbase", "truss", "rowbase", "flux", "supabase", "hasura"]


@pytest.mark.parametrize("target", ["http://127.attacker.invalid/", "127.attacker.invalid:3000/hook",
                                    "http://127.0.0.1.attacker.invalid/x"])
def test_forward_to_a_name_that_only_looks_local_is_refused(target: str) -> None:
    with pytest.raises(ValueError, match="does not resolve"):
        forward_url(target)
    with pytest.raises(ValueError):
        Receiver([], forward_to=target)
    result = CliRunner().invoke(main, ["listen", "--forward-to", target])
    assert result.exit_code == 2 and "--forward-to" in result.output
    assert "listening on" not in result.output, "refused before serving (and so before forwarding) anything"


def test_forward_to_every_resolved_address_must_be_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name resolving to a loopback address and a public one is refused (the client may pick either)."""
    def resolve(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("198.51.100.7", port))]
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(ValueError, match=r"198\.51\.100\.7"):
        forward_url("http://dev.example.test:3000/")


@pytest.mark.parametrize("target", ["localhost:3000/hook", "http://localhost/", "http://127.0.0.1:8080/x",
                                    "127.0.0.2:9/x"])
def test_forward_to_loopback_is_accepted(target: str) -> None:
    assert forward_url(target).startswith("http://")


def _claimed_requests(db: str, port: int) -> dict[str, tuple[str, dict[str, str]]]:
    """One real request per profile, as claim() hands it to the runner: body and signed headers."""
    found: dict[str, tuple[str, dict[str, str]]] = {}
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        for profile in PROFILES:
            hook = conn.execute(
                "SELECT id FROM webhooks.create_webhook(%s, %s, %s, secret => %s, profile => %s)",
                (f"h-{profile}", f"http://127.0.0.1:{port}/{profile}", Jsonb([{"table": "orders"}]), SECRET, profile),
            ).fetchone()[0]
            conn.execute("SELECT webhooks.send_test(%s, 'INSERT', 'orders', '{\"id\": 1}')", (hook,))
        for url, body, headers in conn.execute("SELECT url, body, headers FROM webhooks.claim()").fetchall():
            found[url.rsplit("/", 1)[1]] = (body, headers)
    assert sorted(found) == sorted(PROFILES)
    return found


def test_listen_verifies_every_profiles_signatures(db: str) -> None:
    port = free_port()
    requests = _claimed_requests(db, port)
    exe = Path(sys.executable).with_name("pgwebhooks")
    proc = subprocess.Popen(
        [str(exe), "listen", "--port", str(port), "--secret", SECRET],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        assert "verifying signatures" in proc.stdout.readline()
        answers = {}
        for profile, (body, headers) in requests.items():
            answers[profile] = httpx.post(f"http://127.0.0.1:{port}/{profile}", content=body.encode(),
                                          headers=headers, timeout=5).status_code
        # Each profile's own header, tampered with, is refused: it is checked, not ignored.
        body, headers = requests["truss"]
        forged = {**headers, "X-Truss-Signature": "0" * 64}
        answers["truss forged"] = httpx.post(f"http://127.0.0.1:{port}/x", content=body.encode(), headers=forged,
                                             timeout=5).status_code
        body, headers = requests["fluxbase"]
        answers["fluxbase tampered"] = httpx.post(f"http://127.0.0.1:{port}/x", content=body.encode() + b" ",
                                                  headers=headers, timeout=5).status_code
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert answers == {**dict.fromkeys(PROFILES, 200), "truss forged": 401, "fluxbase tampered": 401}, output
