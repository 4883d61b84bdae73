-- pgwebhooks migration 0018: each webhook's unfinished deliveries in id order.
--
-- claim() and next_due_in() ask first whether a webhook has any unfinished delivery at or above
-- its floor (see _open_floors, 027_open_floors.sql), an id below which all its work is known to
-- be finished. A drained webhook's due index holds an entry for every version its deliveries
-- went through; while another session holds an old snapshot, vacuum cannot remove them and a
-- scan of that index in time order steps over all of them. In id order the floor skips them.
-- The key is `id + 0`, an expression no other index has, and the probe is a row comparison on
-- (webhook_id, id + 0) in that order: this index is the only one that can answer it without
-- sorting. Any other (the primary key in `id` order, the due index from the webhook's first
-- entry) would step over what the floor is there to skip, and the planner, counting live rows,
-- could not tell.
CREATE INDEX IF NOT EXISTS deliveries_webhook_open ON webhooks.deliveries (webhook_id, (id + 0))
    WHERE status IN ('pending', 'leased');
