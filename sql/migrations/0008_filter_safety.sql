-- pgwebhooks 0008: capture filters fail closed. When a webhook's `where` cannot be evaluated for
-- a statement, the statement's rows are kept here for that webhook alone, with the error, instead
-- of being sent to it (or, as before, to every webhook of the table). release_held() re-evaluates
-- them with the webhook's current filter and queues those that match.
CREATE TABLE IF NOT EXISTS webhooks.held_rows (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id  uuid NOT NULL REFERENCES webhooks.webhooks (id) ON DELETE CASCADE,
    operation   text NOT NULL,
    relid       oid NOT NULL,
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    record      json,
    old_record  json,
    held_error  text NOT NULL,
    held_at     timestamptz NOT NULL DEFAULT statement_timestamp(),
    CONSTRAINT held_rows_operation_valid CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE'))
);
CREATE INDEX IF NOT EXISTS held_rows_webhook_id ON webhooks.held_rows (webhook_id, id);
