"""The capture triggers pgwebhooks is measured against, written from their public documentation.

- floor: a trigger that does nothing (what any AFTER row trigger costs the writer);
- naive: a row trigger building a json event and inserting it through a PL/pgSQL helper;
- Supabase-style: Supabase database webhooks (`supabase_functions.http_request`) call pg_net's
  `net.http_post`, which inserts the request (url, headers, body as bytea) into
  `net.http_request_queue`, and record the hook in `supabase_functions.hooks`;
- Hasura-style: a per-trigger row function builds `{"old", "new"}` and calls
  `hdb_catalog.insert_event_log`, which reads the session variables and trace context settings
  and inserts into `hdb_catalog.event_log` (uuid key, four indexes).
Each is installed with `install(conn, kind, table)`; `captured(conn, kind)` counts what it stored.
"""

from __future__ import annotations

from typing import Any

import psycopg

NAIVE_DDL = """
CREATE TABLE IF NOT EXISTS event_log (
    id         bigserial PRIMARY KEY,
    table_name text NOT NULL,
    operation  text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION log_event(table_name text, operation text, payload jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_log (table_name, operation, payload) VALUES (table_name, operation, payload);
END
$$;
CREATE OR REPLACE FUNCTION naive_capture() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM log_event(TG_TABLE_NAME, TG_OP, json_build_object(
        'event', TG_OP, 'table', TG_TABLE_NAME, 'schema', TG_TABLE_SCHEMA,
        'record', row_to_json(NEW), 'old_record', NULL, 'timestamp', now())::jsonb);
    RETURN NULL;
END
$$;
"""

FLOOR_DDL = """
CREATE OR REPLACE FUNCTION floor_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
"""

SUPABASE_DDL = """
CREATE SCHEMA IF NOT EXISTS net;
CREATE SCHEMA IF NOT EXISTS supabase_functions;
CREATE TABLE IF NOT EXISTS net.http_request_queue (
    id bigserial NOT NULL,
    method text NOT NULL,
    url text NOT NULL,
    headers jsonb NOT NULL,
    body bytea NULL,
    timeout_milliseconds integer NOT NULL
);
CREATE TABLE IF NOT EXISTS supabase_functions.hooks (
    id bigserial PRIMARY KEY,
    hook_table_id integer NOT NULL,
    hook_name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    request_id bigint
);
CREATE INDEX IF NOT EXISTS supabase_functions_hooks_request_id_idx ON supabase_functions.hooks (request_id);
CREATE INDEX IF NOT EXISTS supabase_functions_hooks_h_table_id_h_name_idx
    ON supabase_functions.hooks (hook_table_id, hook_name);
CREATE OR REPLACE FUNCTION net.http_post(url text, body jsonb DEFAULT '{}', params jsonb DEFAULT '{}',
    headers jsonb DEFAULT '{"Content-Type": "application/json"}', timeout_milliseconds int DEFAULT 5000)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    request_id bigint;
BEGIN
    INSERT INTO net.http_request_queue (method, url, headers, body, timeout_milliseconds)
    VALUES ('POST', url, headers, convert_to(body::text, 'UTF8'), timeout_milliseconds)
    RETURNING id INTO request_id;
    RETURN request_id;
END
$$;
CREATE OR REPLACE FUNCTION supabase_functions.http_request() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    request_id bigint;
    payload jsonb;
BEGIN
    payload = jsonb_build_object(
        'old_record', CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN OLD END,
        'record', CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN NEW END,
        'type', TG_OP, 'table', TG_TABLE_NAME, 'schema', TG_TABLE_SCHEMA);
    SELECT net.http_post(TG_ARGV[0], payload, '{}', TG_ARGV[2]::jsonb, TG_ARGV[3]::int) INTO request_id;
    INSERT INTO supabase_functions.hooks (hook_table_id, hook_name, request_id)
    VALUES (TG_RELID, TG_NAME, request_id);
    RETURN NEW;
END
$$;
"""

HASURA_DDL = """
CREATE SCHEMA IF NOT EXISTS hdb_catalog;
CREATE TABLE IF NOT EXISTS hdb_catalog.event_log (
    id TEXT DEFAULT gen_random_uuid() PRIMARY KEY,
    schema_name TEXT NOT NULL,
    table_name TEXT NOT NULL,
    trigger_name TEXT NOT NULL,
    payload JSONB NOT NULL,
    delivered BOOLEAN NOT NULL DEFAULT FALSE,
    error BOOLEAN NOT NULL DEFAULT FALSE,
    tries INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMP DEFAULT NOW(),
    locked TIMESTAMPTZ,
    next_retry_at TIMESTAMP,
    archived BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS event_log_trigger_name ON hdb_catalog.event_log (trigger_name);
CREATE INDEX IF NOT EXISTS event_log_locked ON hdb_catalog.event_log (locked);
CREATE INDEX IF NOT EXISTS event_log_delivered ON hdb_catalog.event_log (delivered);
CREATE INDEX IF NOT EXISTS event_log_created_at ON hdb_catalog.event_log (created_at);
CREATE OR REPLACE FUNCTION hdb_catalog.insert_event_log(schema_name text, table_name text, trigger_name text,
                                                        op text, row_data json)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    id text;
    payload json;
    session_variables json;
    trace_context json;
BEGIN
    id := gen_random_uuid();
    session_variables := NULLIF(current_setting('hasura.user', 't'), '');
    trace_context := NULLIF(current_setting('hasura.tracecontext', 't'), '');
    payload := json_build_object('op', op, 'data', row_data, 'session_variables', session_variables,
                                 'trace_context', trace_context);
    INSERT INTO hdb_catalog.event_log (id, schema_name, table_name, trigger_name, payload)
    VALUES (id, schema_name, table_name, trigger_name, payload);
    RETURN id;
END
$$;
CREATE OR REPLACE FUNCTION hdb_catalog.notify_hasura_orders_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    _old record;
    _new record;
    _data json;
BEGIN
    IF TG_OP = 'UPDATE' THEN _old := OLD; _new := NEW; ELSE _old := NULL; _new := NEW; END IF;
    _data := json_build_object('old', NULL, 'new', row_to_json(NEW));
    PERFORM hdb_catalog.insert_event_log(CAST(TG_TABLE_SCHEMA AS text), CAST(TG_TABLE_NAME AS text),
                                         CAST('orders_insert' AS text), TG_OP, _data);
    RETURN NULL;
END
$$;
"""

TRIGGERS = {
    "floor": (FLOOR_DDL, "floor_trigger()"),
    "naive": (NAIVE_DDL, "naive_capture()"),
    "supabase-style": (SUPABASE_DDL, "supabase_functions.http_request('http://127.0.0.1:9/never', 'POST', "
                                     "'{\"Content-Type\":\"application/json\"}', '5000')"),
    "hasura-style": (HASURA_DDL, "hdb_catalog.notify_hasura_orders_insert()"),
}
KINDS = tuple(TRIGGERS)


def install(conn: psycopg.Connection[Any], kind: str, table: str) -> None:
    """Install peer `kind`'s capture on INSERT into `table`."""
    ddl, call = TRIGGERS[kind]
    conn.execute(ddl)
    conn.execute(f"CREATE TRIGGER peer_capture AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {call}")


STORED = {
    "floor": None,
    "naive": "SELECT count(*) FROM event_log",
    "supabase-style": "SELECT count(*) FROM net.http_request_queue",
    "hasura-style": "SELECT count(*) FROM hdb_catalog.event_log",
}
OUTBOXES = {
    "naive": "event_log",
    "supabase-style": "net.http_request_queue, supabase_functions.hooks",
    "hasura-style": "hdb_catalog.event_log",
}
