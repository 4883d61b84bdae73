-- pgwebhooks: the pgcrypto signer, for servers without plpython3u (RDS, Cloud SQL, Azure
-- Flexible Server, Supabase, the official postgres image). Applied instead of 020_plpython.sql
-- when the install chooses it (`pgwebhooks migrate --signer pgcrypto`, or automatically where
-- plpython3u cannot be created). Same contract and byte-identical output as
-- plpython/sign_headers.py and plpython/generate_secret.py; tests/test_signatures.py runs against both.
--
-- pgcrypto may live in any schema (Supabase keeps it in `extensions`): the functions call it by
-- the schema found here, at install time, so no caller's search_path is trusted. pgcrypto is a
-- trusted extension (PostgreSQL 13+): the database owner may create it.

CREATE EXTENSION IF NOT EXISTS pgcrypto;

DO $install$
DECLARE
    crypto text := (SELECT quote_ident(n.nspname) FROM pg_extension e
                    JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pgcrypto');
BEGIN
    -- `whsec_` + base64 of 32 random bytes (44 characters: below encode()'s 76-character line break).
    EXECUTE format($sql$
        CREATE OR REPLACE FUNCTION webhooks._generate_secret() RETURNS text
        LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
        AS $fn$ SELECT 'whsec_' || encode(%1$s.gen_random_bytes(32), 'base64') $fn$
    $sql$, crypto);

    -- One signature per secret, in the array's order (several during a rotation):
    -- webhook-signature   v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>, space-separated, where
    --                     the key of a whsec_ secret is its base64-decoded tail, else its UTF-8 bytes;
    -- X-Webhook-Signature t=<ts>,v1=<hex HMAC-SHA256(UTF-8 secret, "{ts}.{body}")>,...
    EXECUTE format($sql$
        CREATE OR REPLACE FUNCTION webhooks._sign_headers(
            message_id text, sent_at bigint, body text, secrets text[]
        ) RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
        AS $fn$
            SELECT jsonb_build_object(
                'webhook-id', message_id,
                'webhook-timestamp', sent_at::text,
                'webhook-signature', coalesce(string_agg(
                    'v1,' || encode(%1$s.hmac(
                        convert_to(message_id || '.' || sent_at || '.' || body, 'UTF8'),
                        CASE WHEN left(s.secret, 6) = 'whsec_' THEN decode(substr(s.secret, 7), 'base64')
                             ELSE convert_to(s.secret, 'UTF8') END,
                        'sha256'), 'base64'),
                    ' ' ORDER BY s.ord), ''),
                'X-Webhook-Signature', 't=' || sent_at || coalesce(string_agg(
                    ',v1=' || encode(%1$s.hmac(
                        convert_to(sent_at || '.' || body, 'UTF8'), convert_to(s.secret, 'UTF8'), 'sha256'), 'hex'),
                    '' ORDER BY s.ord), ''))
            FROM unnest(coalesce(secrets, '{}'::text[])) WITH ORDINALITY AS s(secret, ord)
        $fn$
    $sql$, crypto);

    -- Hex HMAC-SHA256(UTF-8 secret, body): the Truss, Rowbase and Fluxbase-legacy signature.
    EXECUTE format($sql$
        CREATE OR REPLACE FUNCTION webhooks._hmac_hex(secret text, body text) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
        AS $fn$ SELECT encode(%1$s.hmac(convert_to(body, 'UTF8'), convert_to(secret, 'UTF8'), 'sha256'), 'hex') $fn$
    $sql$, crypto);
END
$install$;
