# SQL: CREATE OR REPLACE FUNCTION webhooks._hmac_hex(secret text, body text) RETURNS text
# SQL:     LANGUAGE plpython3u IMMUTABLE PARALLEL SAFE
# CALL: return None if secret is None or body is None else hmac_hex(secret, body)
"""Hex HMAC-SHA256 of the body alone, keyed with the secret's UTF-8 bytes (whsec_ included, as is).

The signature Truss (`X-Truss-Signature`), Rowbase (`X-Rowbase-Signature: sha256=...`) and
Fluxbase's legacy `X-Webhook-Signature` receivers check: no timestamp, no message id.
"""

import hashlib
import hmac


def hmac_hex(secret: str, body: str) -> str:
    return hmac.new(secret.encode("utf-8"), body.encode("utf-8"), hashlib.sha256).hexdigest()
