-- pgwebhooks migration 0023: one-row changes through cursors (docs/outbox-design.md, step 1b).
--
-- Published events go through cursors since 0022. Now the common captured change does too: a
-- one-row statement on a table whose webhooks are all unfiltered is written once, on the route of
-- its (table, operation), with its transaction id, and each subscribed webhook's cursor on that
-- route gives it the change (041_cursors.sql). Nothing fans it out and nothing updates it. Bulk
-- statements, filtered tables, row-level triggers and images taken read-only keep the fan-out.
--
-- The capture triggers carry the route as their second argument; `migrate` rebuilds them
-- (refresh_triggers) in the same run, and their cursors start there. Changes captured before
-- have no route and are fanned out as before.

-- A route per watched (table, operation), numbered from the event types' sequence: a cursor's
-- route is either. Table routes never rest (there is one per watched table and operation, and a
-- capture trigger cannot read a route's state without costing every write a lookup).
CREATE TABLE IF NOT EXISTS webhooks.table_routes (
    route     integer PRIMARY KEY DEFAULT nextval('webhooks.routes_id_seq'),
    relid     oid NOT NULL,
    operation text NOT NULL,
    CONSTRAINT table_routes_operation_valid CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE')),
    CONSTRAINT table_routes_relid_operation UNIQUE (relid, operation)
);
COMMENT ON TABLE webhooks.table_routes IS
    'The route of each watched table and operation: one-row changes captured on it are read by its webhooks'' cursors';

-- A cursor's route is an event type's or a table's: no foreign key to either. Cursors go with
-- their webhook (the key that stays), when unsubscribed (_sync_route_cursors) and with their
-- event type (delete_event_type).
ALTER TABLE webhooks.cursors DROP CONSTRAINT IF EXISTS cursors_route_fkey;
