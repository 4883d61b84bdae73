-- pgwebhooks 007: who may do what. Re-applied after every change to the functions above.
--
-- webhooks_admin   manages webhooks through the functions; reads webhooks, subscriptions,
--                  deliveries and attempts, but neither secrets nor the captured rows (those
--                  may come from tables this admin may not read: another admin's webhooks).
-- webhooks_runner  claim / complete / release / hold_refused only; no table, so no secret, is readable.
-- webhooks_capture owns the capture trigger functions; may only append to the outbox.
-- everyone else    nothing here. Their writes to watched tables fill the outbox through
--                  SECURITY DEFINER triggers, which need no privilege of theirs.

REVOKE ALL ON SCHEMA webhooks FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA webhooks FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA webhooks FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA webhooks FROM PUBLIC;

GRANT USAGE ON SCHEMA webhooks TO webhooks_admin, webhooks_runner, webhooks_capture;

-- The capture triggers' owner: append to the outbox, nothing else.
GRANT INSERT ON webhooks.captures, webhooks.events TO webhooks_capture;
GRANT USAGE ON SEQUENCE webhooks.captures_id_seq TO webhooks_capture;
GRANT SELECT ON webhooks.capture_routes TO webhooks_capture;  -- capture filters: routing by value
-- Capture filters failing closed: each webhook's filter evaluated alone, failing ones held.
GRANT SELECT (webhook_id, relid, operations, columns, where_clause, route_column, route_value)
    ON webhooks.subscriptions TO webhooks_capture;
GRANT INSERT ON webhooks.held_rows TO webhooks_capture;
GRANT EXECUTE ON FUNCTION webhooks._filter_conds(oid, text, boolean), webhooks._filter_from(oid, text),
    webhooks._no_old_row(oid, text) TO webhooks_capture;
GRANT EXECUTE ON FUNCTION webhooks._primary_key_join(oid), webhooks._pairing_index(oid),
    webhooks._needs_guarded_images(oid),
    webhooks._capture_guarded(bigint, text, oid, name, name, text, json, json)
TO webhooks_capture;

REVOKE ALL ON ALL TABLES IN SCHEMA webhooks FROM webhooks_admin;
GRANT SELECT ON webhooks.webhooks, webhooks.subscriptions, webhooks.deliveries, webhooks.delivery_attempts
TO webhooks_admin;
-- Health (issue 11). webhooks.secret_headers stays unreadable, like webhooks.secrets.
GRANT SELECT ON webhooks.webhook_status TO webhooks_admin;
GRANT EXECUTE ON FUNCTION webhooks.get_webhook_status() TO webhooks_admin;
GRANT EXECUTE ON FUNCTION
    webhooks.create_webhook(text, text, jsonb, text, text, boolean, integer, integer, integer, jsonb, text, interval[], interval, jsonb, integer, integer),
    webhooks.pause_webhook(uuid, text),
    webhooks.resume_webhook(uuid),
    webhooks.list_webhooks(),
    webhooks.get_webhook(uuid),
    webhooks.update_webhook(uuid, jsonb),
    webhooks.rotate_secret(uuid, text, interval),
    webhooks.delete_webhook(uuid),
    webhooks.get_deliveries(uuid, integer, integer),
    webhooks.release_held(uuid),
    webhooks.get_delivery_attempts(bigint),
    webhooks.refresh_triggers(),
    webhooks.version(),
    webhooks.signer()
TO webhooks_admin;

GRANT EXECUTE ON FUNCTION
    webhooks.claim(integer, integer, integer, uuid[]),
    webhooks.next_due_in(integer, uuid[]),
    webhooks.complete(jsonb),
    webhooks.complete(text),
    webhooks.release(jsonb),
    webhooks.release(text),
    webhooks.hold_refused(jsonb),
    webhooks.version()
TO webhooks_runner;

-- Dashboard, JSON API and runner metrics (issue 17). webhooks_viewer (read-only tokens) may look
-- at webhooks, their health and their log, and change nothing. The dashboard's own login role
-- is a member of webhooks_admin and webhooks_viewer and acts as one of them per request.
GRANT USAGE ON SCHEMA webhooks TO webhooks_viewer;
-- Revoked and granted again, as webhooks_admin's above: every migrate leaves the same ACLs.
REVOKE ALL ON ALL TABLES IN SCHEMA webhooks FROM webhooks_viewer;
GRANT SELECT ON webhooks.webhook_status TO webhooks_viewer;
GRANT EXECUTE ON FUNCTION
    webhooks.get_webhook_status(),
    webhooks.list_webhooks(),
    webhooks.get_webhook(uuid),
    webhooks.get_deliveries(uuid, integer, integer),
    webhooks.get_delivery_attempts(bigint),
    webhooks.list_event_types(),
    webhooks.version(),
    webhooks.signer()
TO webhooks_viewer;
GRANT EXECUTE ON FUNCTION
    webhooks.delivery_log(uuid, text, text, timestamptz, timestamptz, integer, bigint),
    webhooks.delivery_request(bigint, integer),
    webhooks.delivery_histogram(interval, integer),
    webhooks.runner_backlog(),
    webhooks.authenticate_api_token(text),
    webhooks.api_tokens_configured()
TO webhooks_admin, webhooks_viewer;
GRANT EXECUTE ON FUNCTION
    webhooks.create_api_token(text, text),
    webhooks.revoke_api_token(uuid),
    webhooks.list_api_tokens()
TO webhooks_admin;
GRANT EXECUTE ON FUNCTION webhooks.runner_backlog() TO webhooks_runner;
