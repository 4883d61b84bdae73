-- pgwebhooks: fan-out. Captured changes and published events become deliveries, one per event
-- per receiving webhook; claim() calls it, so writers never pay for it.

-- Turn captured changes into deliveries, about `budget` of them: one per changed row per
-- subscribed webhook that is enabled now. Runs inside claim(), so the writer never pays for it;
-- a large capture is fanned out over several calls. Captures below `floor` are all fanned out
-- (claim() passes its session's open floor, 027_open_floors.sql).
CREATE OR REPLACE FUNCTION webhooks._fan_out(budget integer, floor bigint)
RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
    -- One statement for the whole batch, not three per capture: an OLTP backlog is thousands of
    -- one-row captures, and a loop over them cost about 0.2 ms each (see `make bench`).
    WITH locked AS (
        SELECT c.id, c.webhook_ids, c.row_count, c.fanned_out, c.routed
        FROM webhooks.captures c
        WHERE c.fanned_out < c.row_count
          AND c.id >= floor
        ORDER BY c.id
        LIMIT budget  -- every capture yields at least one delivery or costs one unit
        FOR UPDATE SKIP LOCKED
    ), targeted AS (
        SELECT l.*, h.hooks, coalesce(cardinality(h.hooks), 0) AS hook_count
        FROM locked l
        CROSS JOIN LATERAL (
            -- FOR KEY SHARE: a delete_webhook() running now waits for this fan-out to commit (and
            -- then deletes what it created), or, having deleted first, leaves nothing to fan out to.
            -- Without it, deliveries were created for a webhook deleted meanwhile, orphans forever.
            SELECT array_agg(x.id ORDER BY x.id) AS hooks
            FROM (SELECT w.id FROM webhooks.webhooks w WHERE w.id = ANY (l.webhook_ids) AND w.enabled
                  FOR KEY SHARE OF w) x
        ) h
    ), priced AS (
        -- A capture nobody receives any more is closed at once and costs one unit.
        SELECT t.*, CASE WHEN t.hook_count = 0 THEN 1 ELSE (t.row_count - t.fanned_out) * t.hook_count END AS cost
        FROM targeted t
    ), grouped AS (
        -- Captures going to the same webhooks form a group; every group gets an equal share of the
        -- budget first, oldest capture first within it. Oldest-first across all groups let one
        -- 200,000-row statement use every call's budget until it was done, and another webhook's
        -- one-row changes captured after it waited seconds behind it. (Running sums minus the row's
        -- own cost: a frame ending at 1 PRECEDING is recomputed for every row, quadratic in the batch.)
        SELECT p.*,
               greatest(1, budget / max(p.grp) OVER ()) AS share,
               sum(p.cost) OVER (PARTITION BY p.hooks ORDER BY p.id) - p.cost AS before_in_group
        FROM (SELECT p.*, dense_rank() OVER (ORDER BY p.hooks) AS grp FROM priced p) p
    ), shared AS (
        SELECT g.*, greatest(0, least(g.cost, g.share - g.before_in_group)) AS first_units
        FROM grouped g
    ), costed AS (
        -- What the shares leave goes to the oldest captures that still have rows to fan out.
        SELECT s.*,
               budget - sum(s.first_units) OVER () AS leftover,
               sum(s.cost - s.first_units) OVER (ORDER BY s.id) - (s.cost - s.first_units) AS spent
        FROM shared s
    ), planned AS (
        SELECT c.id, c.hooks, c.fanned_out, c.routed,
               CASE WHEN c.hook_count = 0 THEN c.row_count - c.fanned_out
                    ELSE least(c.row_count - c.fanned_out,
                               ceil((c.first_units + greatest(0, least(c.cost - c.first_units, c.leftover - c.spent)))::numeric
                                    / c.hook_count)::integer)
               END AS take
        FROM costed c
    ), taken AS (
        SELECT p.* FROM planned p WHERE p.take > 0
    ), created AS (
        INSERT INTO webhooks.deliveries (capture_id, n, webhook_id)
        SELECT p.id, g, hook
        FROM taken p
        CROSS JOIN LATERAL generate_series(p.fanned_out + 1, p.fanned_out + p.take) AS g
        CROSS JOIN LATERAL unnest(p.hooks) AS hook
        -- A filtered capture's rows each go to their own webhooks (see _capture_filtered).
        WHERE NOT p.routed
           OR hook = ANY (coalesce((SELECT e.webhook_ids FROM webhooks.events e
                                      WHERE e.capture_id = p.id AND e.n = g), '{}'))
        ORDER BY p.id, g, hook
        RETURNING 1
    ), advanced AS (
        UPDATE webhooks.captures c SET fanned_out = c.fanned_out + p.take
        FROM taken p WHERE c.id = p.id
    )
    SELECT count(*)::integer FROM created
$$;

-- From the first capture: for callers without an open floor (tests, benchmarks, an operator).
CREATE OR REPLACE FUNCTION webhooks._fan_out(budget integer)
RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    SELECT webhooks._fan_out(budget, 0)
$$;
