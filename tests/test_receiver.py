"""`pgwebhooks listen` and its signature checks: real HTTP on 127.0.0.1, real signed requests.

Requests are signed by the database (`webhooks._sign_headers`), so these tests check that the
receiving side agrees with the signing side, and with the standardwebhooks library.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from pgwebhooks.localpg import free_port
from pgwebhooks.receiver import Receiver
from pgwebhooks.signatures import SignatureError, signing_key, verify_legacy, verify_standard

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
OLD_SECRET = "a plain-string secret"
BODY = '{"event":"INSERT","schema":"public","table":"orders","record":{"id":1},"old_record":null}'


@pytest.fixture
def signer(db: str):
    """Sign with the database's own function, exactly as claim() does."""
    conn = psycopg.connect(db, autocommit=True)

    def sign(body: str, secrets: list[str], at: int | None = None, msg_id: str = "msg_1") -> dict[str, str]:
        at = int(time.time()) if at is None else at
        row = conn.execute("SELECT webhooks._sign_headers(%s, %s, %s, %s)", (msg_id, at, body, secrets)).fetchone()
        assert row is not None
        return {**row[0], "Content-Type": "application/json"}

    yield sign
    conn.close()


def test_both_schemes_verify_and_agree_with_the_standardwebhooks_library(signer) -> None:
    headers = signer(BODY, [SECRET])
    verify_standard(BODY.encode(), headers, [SECRET])
    verify_legacy(BODY.encode(), headers, [SECRET])
    Webhook(SECRET).verify(BODY, headers)  # raises if the library disagrees


def test_rotation_any_valid_secret_verifies(signer) -> None:
    headers = signer(BODY, [SECRET, OLD_SECRET])
    for secret in (SECRET, OLD_SECRET):
        verify_standard(BODY.encode(), headers, [secret])
        verify_legacy(BODY.encode(), headers, [secret])


@pytest.mark.parametrize("verify", [verify_standard, verify_legacy])
def test_a_changed_body_wrong_secret_or_old_timestamp_is_refused(signer, verify) -> None:
    headers = signer(BODY, [SECRET])
    with pytest.raises(SignatureError, match="matches any secret"):
        verify(BODY.replace("1", "2").encode(), headers, [SECRET])
    with pytest.raises(SignatureError, match="matches any secret"):
        verify(BODY.encode(), headers, ["whsec_" + base64.b64encode(b"x" * 24).decode()])
    stale = signer(BODY, [SECRET], at=int(time.time()) - 3600)
    with pytest.raises(SignatureError, match="away from now"):
        verify(BODY.encode(), stale, [SECRET])


def test_missing_headers_and_bad_secrets_say_what_is_wrong() -> None:
    with pytest.raises(SignatureError, match="webhook-id is missing"):
        verify_standard(b"{}", {}, [SECRET])
    with pytest.raises(SignatureError, match="X-Webhook-Signature is missing"):
        verify_legacy(b"{}", {}, [SECRET])
    with pytest.raises(SignatureError, match="not valid base64"):
        signing_key("whsec_%%%")
    assert signing_key("plain") == b"plain"


async def test_receiver_keeps_verifies_prints_and_answers_the_chosen_status(signer) -> None:
    out = io.StringIO()
    receiver = await Receiver([SECRET], status=503, out=out).start("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{receiver.port}/webhooks"
        async with httpx.AsyncClient() as client:
            good = await client.post(url, content=BODY, headers=signer(BODY, [SECRET]))
            forged = await client.post(url, content=BODY, headers=signer(BODY, ["not the secret"]))
        events = await receiver.wait_for(2, timeout=5)
    finally:
        await receiver.stop()
    assert good.status_code == 503  # the chosen status, to watch the runner retry
    assert forged.status_code == 401
    assert [(e["standard_verified"], e["legacy_verified"]) for e in events] == [(True, True), (False, False)]
    assert events[0]["payload"]["record"] == {"id": 1}
    printed = out.getvalue()
    assert "INSERT public.orders" in printed and "<-- 503" in printed and "<-- 401" in printed
    assert 'record: {"id": 1}' in printed
    assert "no webhook-signature matches any secret" in printed


def test_listen_command_serves_until_sigterm(signer) -> None:
    port = free_port()
    exe = Path(sys.executable).with_name("pgwebhooks")
    proc = subprocess.Popen(
        [str(exe), "listen", "--port", str(port), "--secret", SECRET],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert f"listening on http://127.0.0.1:{port}/" in banner and "verifying signatures" in banner
        response = httpx.post(f"http://127.0.0.1:{port}/hook", content=BODY, headers=signer(BODY, [SECRET]), timeout=5)
        assert response.status_code == 200
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0
    assert "INSERT public.orders" in output and "webhook-signature: verified" in output
    assert "stopped after 1 events" in output
