-- pgwebhooks migration 0022: published events through cursors (docs/outbox-design.md, step 1a).
--
-- A published event was a `captures` row that claim() fanned out: one `deliveries` row per
-- subscribed webhook, and the capture updated to say so. Each event type is now a route, and
-- each (webhook, route) a cursor: claim() gives each webhook the events past its cursor, in the
-- order they committed, and moves the cursor. Events published before this migration keep the
-- fan-out; every cursor starts at the beginning, since only events published after it have a
-- route.

-- A route per event type: the id publish() stores with each event, and whether any cursor of
-- it may have events to take (the same three steps to rest as a webhook's, 044_resting_webhooks.sql).
CREATE SEQUENCE IF NOT EXISTS webhooks.routes_id_seq AS integer;
ALTER TABLE webhooks.event_types ADD COLUMN IF NOT EXISTS route integer;
ALTER TABLE webhooks.event_types ALTER COLUMN route SET DEFAULT nextval('webhooks.routes_id_seq');
UPDATE webhooks.event_types SET route = nextval('webhooks.routes_id_seq') WHERE route IS NULL;
ALTER TABLE webhooks.event_types ALTER COLUMN route SET NOT NULL;
ALTER SEQUENCE webhooks.routes_id_seq OWNED BY webhooks.event_types.route;
CREATE UNIQUE INDEX IF NOT EXISTS event_types_route ON webhooks.event_types (route);
ALTER TABLE webhooks.event_types ADD COLUMN IF NOT EXISTS route_state text NOT NULL DEFAULT 'open';
ALTER TABLE webhooks.event_types ADD COLUMN IF NOT EXISTS route_horizon xid8;
ALTER TABLE webhooks.event_types DROP CONSTRAINT IF EXISTS event_types_route_state_valid;
ALTER TABLE webhooks.event_types ADD CONSTRAINT event_types_route_state_valid
    CHECK (route_state IN ('open', 'emptied', 'idle'));
ALTER TABLE webhooks.event_types DROP CONSTRAINT IF EXISTS event_types_route_horizon_when_emptied;
ALTER TABLE webhooks.event_types ADD CONSTRAINT event_types_route_horizon_when_emptied
    CHECK (route_horizon IS NULL OR route_state = 'emptied');
-- The routes a claim looks at (041_cursors.sql): the ones not at rest.
CREATE INDEX IF NOT EXISTS event_types_route_not_idle ON webhooks.event_types (route) WHERE route_state <> 'idle';
COMMENT ON COLUMN webhooks.event_types.route IS
    'The route its published events take: stored with each event, read by the cursors of its subscribers';
COMMENT ON COLUMN webhooks.event_types.route_state IS
    'open: a cursor may have events to take; emptied: none seen, waiting out publishers that were running; idle: none';

-- Where each event was published from: its route and its transaction. A cursor passes events in
-- (xid, id) order, and only those of transactions that have ended.
ALTER TABLE webhooks.captures ADD COLUMN IF NOT EXISTS route integer;
ALTER TABLE webhooks.captures ADD COLUMN IF NOT EXISTS xid xid8;
CREATE INDEX IF NOT EXISTS captures_routed ON webhooks.captures (route, xid, id) WHERE route IS NOT NULL;

-- A cursor per webhook and route: every event at or before (xid, id) has been given to the
-- webhook; past an older publisher still running, events may have been given ahead of it, up to
-- (ahead_xid, ahead_id), with the publishers then running below that point in `ahead_open`.
CREATE TABLE IF NOT EXISTS webhooks.cursors (
    route      integer NOT NULL REFERENCES webhooks.event_types (route) ON DELETE CASCADE,
    webhook_id uuid NOT NULL REFERENCES webhooks.webhooks (id) ON DELETE CASCADE,
    xid        xid8 NOT NULL DEFAULT '0',
    id         bigint NOT NULL DEFAULT 0,
    ahead_xid  xid8,
    ahead_id   bigint,
    ahead_open xid8[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (route, webhook_id),
    CONSTRAINT cursors_ahead_both CHECK ((ahead_xid IS NULL) = (ahead_id IS NULL))
);
COMMENT ON TABLE webhooks.cursors IS
    'How far each webhook has been given the events of each route it receives (see _fill_from_cursors)';
CREATE INDEX IF NOT EXISTS cursors_webhook_id ON webhooks.cursors (webhook_id);

INSERT INTO webhooks.cursors (route, webhook_id)
SELECT t.route, h FROM webhooks.event_types t CROSS JOIN LATERAL unnest(t.webhook_ids) h
WHERE EXISTS (SELECT 1 FROM webhooks.webhooks w WHERE w.id = h)
ON CONFLICT DO NOTHING;

-- Routes an event was published on while not open: only ever inserted by publishers, so a
-- publisher never waits; _rest_routes opens those routes and removes the rows.
CREATE TABLE IF NOT EXISTS webhooks._route_wakes (
    route integer NOT NULL
);
COMMENT ON TABLE webhooks._route_wakes IS
    'Routes an event was published on while not open (see publish); consumed by _rest_routes';
CREATE INDEX IF NOT EXISTS route_wakes_route ON webhooks._route_wakes (route);
