-- pgwebhooks: PL/Python functions.
-- GENERATED from plpython/*.py by `make sql`; edit those files, not this one.
-- The plpython signer; 020_pgcrypto.sql is the other one (see runner/migrations.py).

CREATE EXTENSION IF NOT EXISTS plpython3u;

-- from plpython/generate_secret.py
CREATE OR REPLACE FUNCTION webhooks._generate_secret() RETURNS text
LANGUAGE plpython3u VOLATILE
AS $python$
"""A new signing secret in the Standard Webhooks form: `whsec_` + base64 of 32 random bytes."""

import base64
import secrets


def generate_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")

return generate_secret()
$python$;

-- from plpython/hmac_hex.py
CREATE OR REPLACE FUNCTION webhooks._hmac_hex(secret text, body text) RETURNS text
LANGUAGE plpython3u IMMUTABLE PARALLEL SAFE
AS $python$
"""Hex HMAC-SHA256 of the body alone, keyed with the secret's UTF-8 bytes (whsec_ included, as is).

The signature Truss (`X-Truss-Signature`), Rowbase (`X-Rowbase-Signature: sha256=...`) and
Fluxbase's legacy `X-Webhook-Signature` receivers check: no timestamp, no message id.
"""

import hashlib
import hmac


def hmac_hex(secret: str, body: str) -> str:
    return hmac.new(secret.encode("utf-8"), body.encode("utf-8"), hashlib.sha256).hexdigest()

return None if secret is None or body is None else hmac_hex(secret, body)
$python$;

-- from plpython/sign_headers.py
CREATE OR REPLACE FUNCTION webhooks._sign_headers(
message_id text, sent_at bigint, body text, secrets text[]
) RETURNS jsonb LANGUAGE plpython3u IMMUTABLE PARALLEL SAFE
AS $python$
"""Signature headers for one webhook request, computed where the secrets live.

Both signature schemes, one signature per valid secret (several during a rotation):
- Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>`,
  where the key of a `whsec_` secret is the base64-decoded part after the prefix.
- `X-Webhook-Signature: t=<ts>,v1=<hex HMAC-SHA256(secret, "{ts}.{body}")>`.
"""

import base64
import hashlib
import hmac
import json  # noqa: F401 -- used by the generated CALL line above


def standard_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode("utf-8")


def sign_headers(message_id: str, sent_at: int, body: str, secrets: list[str]) -> dict[str, str]:
    payload = body.encode("utf-8")
    signed_standard = f"{message_id}.{sent_at}.".encode() + payload
    signed_legacy = f"{sent_at}.".encode() + payload
    standard = []
    legacy = [f"t={sent_at}"]
    for secret in secrets:
        digest = hmac.new(standard_key(secret), signed_standard, hashlib.sha256).digest()
        standard.append("v1," + base64.b64encode(digest).decode("ascii"))
        legacy.append("v1=" + hmac.new(secret.encode(), signed_legacy, hashlib.sha256).hexdigest())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(sent_at),
        "webhook-signature": " ".join(standard),
        "X-Webhook-Signature": ",".join(legacy),
    }

return json.dumps(sign_headers(message_id, sent_at, body, secrets or []))
$python$;
