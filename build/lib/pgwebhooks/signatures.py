"""Verifying pgwebhooks' signatures on the receiving side, as a receiver would.

This is an independent implementation of the two schemes in DESIGN.md (the signing side lives in
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
