-- pgwebhooks: what psql's \d+ and \df+ say about each table, view and public function. One
-- place, so that a reader of `\df+ webhooks.*` gets the manual and a test can check none is
-- missing (tests/test_docs.py).

COMMENT ON TABLE webhooks.webhooks IS
    'Webhook endpoints: URL, retry policy, extra headers, enabled flag. Manage through create_webhook() / update_webhook().';
COMMENT ON TABLE webhooks.subscriptions IS
    'Which tables and operations each webhook receives (relid follows renames; table_name is the name when last subscribed).';
COMMENT ON TABLE webhooks.secrets IS
    'Signing secrets; several are valid while a secret is rotated. Readable by the installer only: secrets never leave the database.';
COMMENT ON TABLE webhooks._installation IS
    'One row: the first event-id salt and where the database lives (a copy elsewhere starts a new salt in _salts).';
COMMENT ON TABLE webhooks.captures IS
    'Outbox, step 1: one row per captured statement (single-row changes inline), written in the writer''s transaction.';
COMMENT ON TABLE webhooks.events IS
    'Outbox: the row images of multi-row statements, one per changed row, stored once however many webhooks receive them.';
COMMENT ON TABLE webhooks.deliveries IS
    'Outbox, step 2: one row per event per webhook; status pending -> leased -> delivered | failed (see 0001_tables.sql).';
COMMENT ON TABLE webhooks.delivery_attempts IS
    'Every attempt of every delivery: status code, response excerpt, error, latency.';
COMMENT ON VIEW webhooks._webhook_view IS
    'How a webhook is shown by list_webhooks() and get_webhook(): everything but its secrets.';
COMMENT ON VIEW webhooks._new_webhook IS
    'create_webhook()''s result: the webhook and, this once, its secret.';

COMMENT ON FUNCTION webhooks.create_webhook(text, text, jsonb, text, text, boolean, integer, integer, integer, jsonb, text, interval[], interval, jsonb, integer, integer) IS
    'Create a webhook. events: [{"table": "orders", "operations": ["INSERT", "UPDATE"], "where": "tenant_id = 42"}, {"event_type": "order.*"}]; profile: standard, fluxbase, fluxbase_hex, truss, rowbase, flux, supabase or hasura; retry_schedule replaces backoff (with none of max_retries, retry_backoff_seconds and retry_schedule given: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h); pause_after: pause automatically after failing this long (NULL: never); secret_headers: sent but never shown; max_concurrency (1-10000) and rate_limit_per_second (1-100000), NULL for no limit of its own. Returns it with its secret, shown only now. Errors: WH001-WH025.';
COMMENT ON FUNCTION webhooks.list_webhooks() IS
    'Every webhook, oldest first; never shows secrets.';
COMMENT ON FUNCTION webhooks.get_webhook(uuid) IS
    'One webhook by id (WH404 if unknown); never shows its secrets.';
COMMENT ON FUNCTION webhooks.update_webhook(uuid, jsonb) IS
    'Change a webhook: changes is a JSON object of the fields to set (name, url, events, secret, description, enabled, max_retries, timeout_seconds, retry_backoff_seconds, headers, profile, retry_schedule).';
COMMENT ON FUNCTION webhooks.rotate_secret(uuid, text, interval) IS
    'Start signing with a new secret (generated if not given); the current ones keep signing for grace_period (0 to 30 days). Returns the new secret.';
COMMENT ON FUNCTION webhooks.delete_webhook(uuid) IS
    'Delete a webhook, its deliveries and attempts, and any capture trigger no longer needed.';
COMMENT ON FUNCTION webhooks.get_deliveries(uuid, integer, integer) IS
    'A webhook''s deliveries, newest first: status, attempts, last response, error, latency, timestamps.';
COMMENT ON FUNCTION webhooks.get_delivery_attempts(bigint) IS
    'Every attempt of one delivery, oldest first.';
COMMENT ON FUNCTION webhooks.refresh_triggers() IS
    'Re-create capture triggers that no longer fit their table (run after adding or dropping a primary key); returns the number of watched tables checked.';
COMMENT ON FUNCTION webhooks.send_test(uuid, text, text, jsonb, jsonb, text, jsonb) IS
    'Queue a test event for one webhook (TEST; or a row change: event, table, record; or an application event: event_type, data); returns the delivery id.';
COMMENT ON FUNCTION webhooks.replay(bigint) IS
    'Send a delivery''s event again as a new delivery (same webhook-id); WH404 if the event was purged.';
COMMENT ON FUNCTION webhooks.replay_failed(uuid, timestamptz, boolean) IS
    'Replay every failed delivery of a webhook (completed since `since`, if given) once: a second call queues nothing new; dry_run only counts. Returns how many were (or would be) queued.';
COMMENT ON FUNCTION webhooks.hold_refused(jsonb) IS
    'For the runner: hand back deliveries its network policy refused to send ([{"delivery_id", "attempt", "reason"}]) without spending their attempt, and pause their webhooks with the reason.';
COMMENT ON FUNCTION webhooks._default_retry_schedule() IS
    'The retry schedule of a webhook created without retry settings (about 27 hours).';
COMMENT ON FUNCTION webhooks.purge(interval) IS
    'Delete finished deliveries and captures older than older_than (0 to 100 years); pending and leased work is never purged.';
COMMENT ON FUNCTION webhooks.version() IS
    'The installed pgwebhooks version.';
COMMENT ON FUNCTION webhooks.claim(integer, integer, integer, uuid[]) IS
    'For the runner: lease up to batch_size due deliveries, each with its attempt number, body and signed headers.';
COMMENT ON FUNCTION webhooks.complete(jsonb) IS
    'For the runner: apply a JSON array of attempt results under their leases; returns each delivery''s new status or refused.';
COMMENT ON FUNCTION webhooks.release(jsonb) IS
    'For the runner: hand leased deliveries back unsent ([{"delivery_id", "attempt"}]); the attempt does not count.';
COMMENT ON FUNCTION webhooks.complete(text) IS
    'complete() given JSON text: parsed first, so a NUL (\u0000) is WH034 and text that is no JSON WH013.';
COMMENT ON FUNCTION webhooks.release(text) IS
    'release() given JSON text: parsed first, so a NUL (\u0000) is WH034 and text that is no JSON WH013.';

-- issue 11 (health)
COMMENT ON VIEW webhooks.webhook_status IS
    'Health per webhook: state (healthy, failing, paused, disabled), pending (including changes captured but not yet fanned out), oldest_pending_at, consecutive_failures, last success/failure/error, and over the last hour delivered, failed_attempts, p50/p95 latency.';
COMMENT ON FUNCTION webhooks.pause_webhook(uuid, text) IS
    'Pause a webhook: its changes keep being captured and queued, nothing is sent until resume_webhook(). Unlike enabled = false, nothing is lost.';
COMMENT ON FUNCTION webhooks.resume_webhook(uuid) IS
    'Resume a paused webhook (paused by hand, by a 410 Gone or by pause_after): everything queued meanwhile is sent.';
COMMENT ON FUNCTION webhooks.get_webhook_status() IS
    'The rows of the webhook_status view (which reads them from here): health per webhook.';

COMMENT ON FUNCTION webhooks.release_held(uuid) IS
    'Re-evaluate the rows held for a webhook (its where filter failed at capture) with its current filter: '
    'queue those that match, drop the others, keep those whose filter still fails. Returns the three counts.';
COMMENT ON TABLE webhooks.held_rows IS
    'Rows kept for one webhook whose where filter failed at capture, with the error; see release_held()';

-- issue 17 (dashboard, API, metrics)
COMMENT ON TABLE webhooks.api_tokens IS
    'Dashboard and API tokens: only the SHA-256 of each is kept; access admin acts as webhooks_admin, read as webhooks_viewer.';
COMMENT ON FUNCTION webhooks.runner_backlog() IS
    'For the runner''s /metrics: per webhook its state, pending deliveries, oldest pending time and circuit (no URL, no secret).';
COMMENT ON FUNCTION webhooks.delivery_log(uuid, text, text, timestamptz, timestamptz, integer, bigint) IS
    'A webhook''s deliveries, newest first, filtered by status, event (operation or event type), created since/until; pages with before_id. Published events are listed by their type.';
COMMENT ON FUNCTION webhooks.delivery_request(bigint, integer) IS
    'The URL, body and headers a delivery sent, re-rendered from the outbox; secret header values and signatures are masked. Table changes only for callers who may SELECT the table.';
COMMENT ON FUNCTION webhooks.delivery_histogram(interval, integer) IS
    'Attempts per webhook (delivered, failed) in time slots up to now, for the dashboard''s charts.';
COMMENT ON FUNCTION webhooks.create_api_token(text, text) IS
    'Create a dashboard/API token (access admin or read); returns the token, shown only now (only its hash is kept).';
COMMENT ON FUNCTION webhooks.revoke_api_token(uuid) IS
    'Revoke a dashboard/API token at once.';
COMMENT ON FUNCTION webhooks.list_api_tokens() IS
    'Dashboard/API tokens: id, name, access, created, last used, revoked (never the token).';
COMMENT ON FUNCTION webhooks.authenticate_api_token(text) IS
    'The role a dashboard/API token acts as (webhooks_admin or webhooks_viewer), or NULL for an unknown or revoked token.';
COMMENT ON FUNCTION webhooks.api_tokens_configured() IS
    'Whether any dashboard/API token is usable (not revoked).';
