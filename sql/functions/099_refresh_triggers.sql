-- pgwebhooks: bring every capture trigger up to date with the functions just installed (a
-- no-op, taking no table lock, where they already are). Last, after the grants.

-- Re-create any capture trigger that no longer matches what its table needs; triggers already
-- right are left alone. Runs on every migrate; run it yourself after an ALTER TABLE that adds or
-- drops a table's primary key (the UPDATE trigger's kind depends on it) or partitions a table.
-- Returns how many watched tables were checked.
CREATE OR REPLACE FUNCTION webhooks.refresh_triggers()
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    checked integer := 0;
    r oid;
BEGIN
    -- In a restored copy, first point the subscriptions at the copy's tables (025_event_ids.sql).
    PERFORM webhooks._ensure_identity();
    FOR r IN SELECT DISTINCT s.relid FROM webhooks.subscriptions s ORDER BY s.relid LOOP
        PERFORM webhooks._sync_triggers(r);
        checked := checked + 1;
    END LOOP;
    PERFORM webhooks._drop_unused_capture_functions();  -- of dropped tables, or a restore's old oids
    RETURN checked;
END
$$;

REVOKE ALL ON FUNCTION webhooks.refresh_triggers FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhooks.refresh_triggers TO webhooks_admin;

COMMENT ON FUNCTION webhooks.refresh_triggers IS
    'Re-create capture triggers that no longer fit their table (run after adding or dropping a primary key); returns the number of watched tables checked.';

-- pgwebhooks: bring every capture trigger up to date with the functions just installed (a
-- no-op, taking no table lock, where they already are). Last, after the grants.
SELECT webhooks.refresh_triggers();
