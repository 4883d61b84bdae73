-- pgwebhooks: dashboard and API tokens, kept as hashes. Errors: WH041 a bad token name, WH042 no
-- such token.

-- API tokens. A token is `pgwh_` and 64 hex digits from two random UUIDs (gen_random_uuid uses
-- the server's strong random source); only its SHA-256 is stored. Shown once.
CREATE OR REPLACE FUNCTION webhooks.create_api_token(name text, access text DEFAULT 'read')
RETURNS TABLE (token_id uuid, token_name text, token_access text, token text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    secret text := 'pgwh_' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
    new_id uuid;
BEGIN
    IF name IS NULL OR btrim(name) = '' OR name ~ '[\x01-\x1f\x7f]' OR length(name) > 200 THEN
        PERFORM webhooks._fail('WH041', 'name', format('must be 1 to 200 printable characters, got %s',
                                                      coalesce(quote_literal(left(name, 220)), 'null')));
    END IF;
    IF access IS NULL OR access NOT IN ('admin', 'read') THEN
        PERFORM webhooks._fail('WH040', 'access', format('%s is not admin or read', coalesce(quote_literal(access), 'null')));
    END IF;
    INSERT INTO webhooks.api_tokens (name, token_sha256, access)
    VALUES (create_api_token.name, sha256(convert_to(secret, 'UTF8')), create_api_token.access)
    RETURNING api_tokens.id INTO new_id;
    RETURN QUERY SELECT new_id, create_api_token.name, create_api_token.access, secret;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.revoke_api_token(id uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE webhooks.api_tokens t SET revoked_at = coalesce(t.revoked_at, now()) WHERE t.id = revoke_api_token.id;
    IF NOT FOUND THEN
        PERFORM webhooks._fail('WH042', 'id', format('no API token with id %s', coalesce(id::text, 'null')));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.list_api_tokens()
RETURNS TABLE (id uuid, name text, access text, created_at timestamptz, last_used_at timestamptz,
               revoked_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.id, t.name, t.access, t.created_at, t.last_used_at, t.revoked_at
    FROM webhooks.api_tokens t ORDER BY t.created_at, t.id
$$;

-- The role a token acts as (webhooks_admin or webhooks_viewer), NULL for an unknown or revoked
-- one. last_used_at is kept to the minute, so a busy client does not write a row per request.
CREATE OR REPLACE FUNCTION webhooks.authenticate_api_token(token text)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t webhooks.api_tokens;
BEGIN
    IF token IS NULL OR length(token) > 200 THEN
        RETURN NULL;
    END IF;
    SELECT * INTO t FROM webhooks.api_tokens x
    WHERE x.token_sha256 = sha256(convert_to(token, 'UTF8')) AND x.revoked_at IS NULL;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute' THEN
        UPDATE webhooks.api_tokens x SET last_used_at = now() WHERE x.id = t.id;
    END IF;
    RETURN CASE t.access WHEN 'admin' THEN 'webhooks_admin' ELSE 'webhooks_viewer' END;
END
$$;

-- Whether any token is usable: the dashboard refuses a non-loopback address without one.
CREATE OR REPLACE FUNCTION webhooks.api_tokens_configured()
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM webhooks.api_tokens t WHERE t.revoked_at IS NULL)
$$;

GRANT EXECUTE ON FUNCTION webhooks.authenticate_api_token, webhooks.api_tokens_configured
TO webhooks_admin, webhooks_viewer;
GRANT EXECUTE ON FUNCTION webhooks.create_api_token, webhooks.revoke_api_token, webhooks.list_api_tokens
TO webhooks_admin;

COMMENT ON TABLE webhooks.api_tokens IS
    'Dashboard and API tokens: only the SHA-256 of each is kept; access admin acts as webhooks_admin, read as webhooks_viewer.';

COMMENT ON FUNCTION webhooks.create_api_token IS
    'Create a dashboard/API token (access admin or read); returns the token, shown only now (only its hash is kept).';

COMMENT ON FUNCTION webhooks.revoke_api_token IS
    'Revoke a dashboard/API token at once.';

COMMENT ON FUNCTION webhooks.list_api_tokens IS
    'Dashboard/API tokens: id, name, access, created, last used, revoked (never the token).';

COMMENT ON FUNCTION webhooks.authenticate_api_token IS
    'The role a dashboard/API token acts as (webhooks_admin or webhooks_viewer), or NULL for an unknown or revoked token.';

COMMENT ON FUNCTION webhooks.api_tokens_configured IS
    'Whether any dashboard/API token is usable (not revoked).';
