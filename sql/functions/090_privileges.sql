-- pgwebhooks: who may do what, role by role. Each function's EXECUTE grants sit beside it in its
-- own file; this file holds the policy for the schema and the tables (created by sql/migrations),
-- and takes from PUBLIC whatever a CREATE gave it. Re-applied on every migrate.
--
-- webhooks_admin     manages webhooks through the functions; reads webhooks, subscriptions,
--                    deliveries and attempts, but neither secrets nor the captured rows (those
--                    may come from tables this admin may not read: another admin's webhooks).
-- webhooks_viewer    reads webhooks, their health and their log through the functions; changes
--                    nothing (the dashboard's read-only tokens act as it).
-- webhooks_runner    claim / complete / release / hold_refused only; no table, so no secret, is readable.
-- webhooks_publisher publish() only.
-- webhooks_capture   owns the capture trigger functions; may only append to the outbox.
-- everyone else      nothing here. Their writes to watched tables fill the outbox through
--                    SECURITY DEFINER triggers, which need no privilege of theirs.

GRANT USAGE ON SCHEMA webhooks TO webhooks_publisher;

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
-- Whether to NOTIFY: only while a runner waits (028_wakeups.sql).
GRANT SELECT ON SEQUENCE webhooks._runners_waiting TO webhooks_capture;
GRANT EXECUTE ON FUNCTION webhooks._wake_runners TO webhooks_capture;

-- Revoked and granted again (here and for webhooks_viewer below): every migrate leaves the same ACLs.
REVOKE ALL ON ALL TABLES IN SCHEMA webhooks FROM webhooks_admin;
GRANT SELECT ON webhooks.webhooks, webhooks.subscriptions, webhooks.deliveries, webhooks.delivery_attempts
TO webhooks_admin;
-- webhooks.secret_headers stays unreadable, like webhooks.secrets.
GRANT SELECT ON webhooks.webhook_status, webhooks.outbox_blocks TO webhooks_admin;

-- The dashboard's own login role is a member of webhooks_admin and webhooks_viewer and acts as
-- one of them per request.
GRANT USAGE ON SCHEMA webhooks TO webhooks_viewer;
REVOKE ALL ON ALL TABLES IN SCHEMA webhooks FROM webhooks_viewer;
GRANT SELECT ON webhooks.webhook_status, webhooks.outbox_blocks TO webhooks_viewer;

-- Restoring a dump as the database's owner (no superuser) needs webhooks_capture to hold CREATE on
-- the `webhooks` schema while pg_restore hands it the capture functions (ALTER FUNCTION ... OWNER
-- TO checks it; the dump's grants come only at its end), so the README has the owner run
-- `ALTER DEFAULT PRIVILEGES GRANT CREATE ON SCHEMAS TO webhooks_capture` first. The `migrate`
-- that follows the restore takes that default back (and 032_capture_filters.sql the schema
-- grant), so the window lasts only as long as the restore.
ALTER DEFAULT PRIVILEGES REVOKE CREATE ON SCHEMAS FROM webhooks_capture;
