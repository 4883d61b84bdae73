-- pgwebhooks migration 0011: the dashboard and its JSON API.
--
-- A read-only role for the dashboard's read-only tokens: it may call the functions that show
-- webhooks, their health and their delivery log, and nothing that changes them.
DO $$
BEGIN
    CREATE ROLE webhooks_viewer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

-- Tokens for the dashboard and API. Only the SHA-256 of a token is kept: the token itself is
-- shown once, by create_api_token(). `access` maps to the role a request acts as:
-- admin -> webhooks_admin, read -> webhooks_viewer.
CREATE TABLE IF NOT EXISTS webhooks.api_tokens (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text NOT NULL,
    token_sha256 bytea NOT NULL,
    access       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT api_tokens_access_valid CHECK (access IN ('admin', 'read')),
    CONSTRAINT api_tokens_hash_length CHECK (octet_length(token_sha256) = 32),
    CONSTRAINT api_tokens_name_length CHECK (length(name) BETWEEN 1 AND 200)
);
CREATE UNIQUE INDEX IF NOT EXISTS api_tokens_token_sha256 ON webhooks.api_tokens (token_sha256);
