-- pgwebhooks: the installed version, as the runner, the CLI and the dashboard report it.

CREATE OR REPLACE FUNCTION webhooks.version()
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$ SELECT '0.8.5' $$;

GRANT EXECUTE ON FUNCTION webhooks.version TO webhooks_admin, webhooks_runner, webhooks_viewer;

COMMENT ON FUNCTION webhooks.version IS
    'The installed pgwebhooks version.';
