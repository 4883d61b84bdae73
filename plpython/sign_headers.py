# SQL: CREATE OR REPLACE FUNCTION webhooks._sign_headers(
# SQL:     message_id text, sent_at bigint, body text, secrets text[]
# SQL: ) RETURNS jsonb LANGUAGE plpython3u IMMUTABLE PARALLEL SAFE
# CALL: return json.dumps(sign_headers(message_id, sent_at, body, secrets or []))
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
