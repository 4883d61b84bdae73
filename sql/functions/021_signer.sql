-- pgwebhooks: which signer this install uses. Read from the catalog, not stored: it is true
-- whichever way the functions were installed or switched (`pgwebhooks migrate --signer ...`).

CREATE OR REPLACE FUNCTION webhooks.signer()
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE l.lanname WHEN 'plpython3u' THEN 'plpython' ELSE 'pgcrypto' END
    FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
    WHERE p.oid = to_regprocedure('webhooks._sign_headers(text,bigint,text,text[])')
$$;

GRANT EXECUTE ON FUNCTION webhooks.signer TO webhooks_admin, webhooks_viewer;
COMMENT ON FUNCTION webhooks.signer IS
    'The signer computing signatures and secrets: plpython (plpython3u) or pgcrypto (hmac, gen_random_bytes). Switch with pgwebhooks migrate --signer.';
