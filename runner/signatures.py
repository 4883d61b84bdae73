"""Verifying pgwebhooks' signatures on the receiving side, as a receiver would.

This is an independent implementation of the two signature schemes (the signing side lives in
`plpython/sign_headers.py`, inside the database), so `pgwebhooks listen` and the demo check what
actually arrived rather than trusting the sender's code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping

DEFAULT_TOLERANCE_SECONDS = 300  # replayed requests older (or newer) than this are refused


class SignatureError(ValueError):
    """The request is not signed by any of the given secrets (the message says why)."""


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: the decoded bytes after `whsec_`, else the UTF-8 bytes."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except binascii.Error as exc:
            raise SignatureError(f"secret {secret[:10]}... is not valid base64 after whsec_") from exc
    return secret.encode("utf-8")


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    raise SignatureError(f"header {name} is missing")


def _check_timestamp(raw: str, now: float | None, tolerance: int) -> int:
    try:
        timestamp = int(raw)
    except ValueError as exc:
        raise SignatureError(f"timestamp {raw!r} is not a unix time") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError(f"timestamp {timestamp} is more than {tolerance}s away from now")
    return timestamp


def verify_standard(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Iterable[str],
    *,
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Check `webhook-id`/`webhook-timestamp`/`webhook-signature` (Standard Webhooks)."""
    message_id = _header(headers, "webhook-id")
    raw_timestamp = _header(headers, "webhook-timestamp")
    timestamp = _check_timestamp(raw_timestamp, now, tolerance)
    signed = f"{message_id}.{timestamp}.".encode() + body
    offered = [
        part.split(",", 1)[1]
        for part in _header(headers, "webhook-signature").split()
        if part.startswith("v1,")
    ]
    for secret in secrets:
        expected = base64.b64encode(hmac.new(signing_key(secret), signed, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return
    raise SignatureError("no webhook-signature matches any secret")


def verify_legacy(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Iterable[str],
    *,
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Check `X-Webhook-Signature: t=<ts>,v1=<hex>[,v1=<hex>…]`."""
    fields = [part.strip().split("=", 1) for part in _header(headers, "X-Webhook-Signature").split(",")]
    timestamps = [value for key, value in (f for f in fields if len(f) == 2) if key == "t"]
    if len(timestamps) != 1:
        raise SignatureError("X-Webhook-Signature must carry exactly one t=")
    timestamp = _check_timestamp(timestamps[0], now, tolerance)
    offered = [value for key, value in (f for f in fields if len(f) == 2) if key == "v1"]
    signed = f"{timestamp}.".encode() + body
    for secret in secrets:
        expected = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return
    raise SignatureError("no X-Webhook-Signature v1= matches any secret")


def _body_hex(body: bytes, secrets: Iterable[str]) -> list[str]:
    return [hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest() for secret in secrets]


def _check_body_hex(name: str, value: str, body: bytes, secrets: list[str], prefix: str = "") -> None:
    """A profile's plain signature: hex HMAC-SHA256 of the body alone, keyed with the secret as is."""
    if any(hmac.compare_digest(f"{prefix}{expected}", value.strip()) for expected in _body_hex(body, secrets)):
        return
    raise SignatureError(f"no {name} matches any secret")


def verify_profile(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Iterable[str],
    *,
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Check every signature header a receiver profile sends besides the Standard Webhooks one.

    standard: `X-Webhook-Signature: t=,v1=`; fluxbase: `X-Fluxbase-Signature: t=,v1=` and a plain
    hex `X-Webhook-Signature`; truss: `X-Truss-Signature` (hex); rowbase: `X-Rowbase-Signature:
    sha256=<hex>` (see `_profile_headers` in 050_payloads.sql). Each one present must verify,
    so a request is never accepted on the strength of its weakest header alone.
    """
    keys = list(secrets)
    present = {key.lower(): value for key, value in headers.items()}
    if "x-fluxbase-signature" in present:
        verify_legacy(body, {"X-Webhook-Signature": present["x-fluxbase-signature"]}, keys, now=now,
                      tolerance=tolerance)
    legacy = _header(headers, "X-Webhook-Signature")
    if legacy.lstrip().startswith("t="):
        verify_legacy(body, headers, keys, now=now, tolerance=tolerance)
    else:
        _check_body_hex("X-Webhook-Signature", legacy, body, keys)
    if "x-truss-signature" in present:
        _check_body_hex("X-Truss-Signature", present["x-truss-signature"], body, keys)
    if "x-rowbase-signature" in present:
        _check_body_hex("X-Rowbase-Signature", present["x-rowbase-signature"], body, keys, prefix="sha256=")
