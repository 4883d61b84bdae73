-- pgwebhooks 007: who may do what. Re-applied after every change to the functions above.
--
-- webhooks_admin   manages webhooks and reads everything, secrets and logs included.
-- webhooks_runner  claim / complete / release only; no table, so no secret, is readable.
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
GRANT EXECUTE ON FUNCTION webhooks._primary_key_join(oid) TO webhooks_capture;

GRANT SELECT ON ALL TABLES IN SCHEMA webhooks TO webhooks_admin;
GRANT EXECUTE ON FUNCTION
    webhooks.create_webhook(text, text, jsonb, text, text, boolean, integer, integer, integer, jsonb),
    webhooks.list_webhooks(),
    webhooks.get_webhook(uuid),
    webhooks.update_webhook(uuid, jsonb),
    webhooks.rotate_secret(uuid, text, interval),
    webhooks.delete_webhook(uuid),
    webhooks.get_deliveries(uuid, integer, integer),
    webhooks.get_delivery_attempts(bigint),
    webhooks.version()
TO webhooks_admin;

GRANT EXECUTE ON FUNCTION
    webhooks.claim(integer, integer, integer, uuid[]),
    webhooks.next_due_in(integer, uuid[]),
    webhooks.complete(jsonb),
    webhooks.release(jsonb),
    webhooks.version()
TO webhooks_runner;
