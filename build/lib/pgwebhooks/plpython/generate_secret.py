# SQL: CREATE OR REPLACE FUNCTION webhooks._generate_secret() RETURNS text
# SQL:     LANGUAGE plpython3u VOLATILE
# CALL: return generate_secret()
"""A new signing secret in the Standard Webhooks form: `whsec_` + base64 of 32 random bytes."""

import base64
import secrets


def generate_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")
