-- pgwebhooks: the capture triggers of each watched table kept in step with its subscriptions
-- (the trigger functions are 030_capture.sql's and 032_capture_filters.sql's).

-- The name of `relid`'s own capture function, written (or rewritten) to be the current
-- _capture_statement with its one-row type probe folded into its plan: each /*probe*/ becomes
-- _guarded_columns(<relid>), a constant to the planner (see 030_capture.sql). The probe costs a
-- one-row transaction ~10 us when run. A copy restored under another oid (pg_dump keeps the
-- function, the table gets a new oid) finds TG_RELID is not its table and takes the images
-- read-only, as for a table with a type not built in, until refresh_triggers writes the table a
-- copy of its own.
-- Owned by webhooks_capture, like the function it copies; a copy already current is left alone.
CREATE OR REPLACE FUNCTION webhooks._table_capture_function(relid oid)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fn text := '_capture_table_' || relid;
    source text;
    existing regprocedure;
BEGIN
    source := (SELECT p.prosrc FROM pg_proc p WHERE p.oid = 'webhooks._capture_statement()'::regprocedure);
    IF (SELECT count(*) FROM regexp_matches(source, '/\*(probe|own table)\*/', 'g')) <> 4 THEN
        RAISE EXCEPTION 'webhooks._capture_statement has not the 4 marks _table_capture_function rewrites';
    END IF;
    source := regexp_replace(source, '/\*probe\*/.*?/\*probe end\*/', format(
        '(TG_RELID OPERATOR(pg_catalog.=) %1$s::pg_catalog.oid AND NOT webhooks._guarded_columns(%1$s::pg_catalog.regclass))',
        relid), 'g');
    -- Called for another table, the copy takes that table's images read-only, one row or many:
    -- correct for any table, and slower only until refresh_triggers runs.
    source := replace(source, '/*own table*/', format('OR TG_RELID OPERATOR(pg_catalog.<>) %s::pg_catalog.oid', relid));
    -- One writer of a table's function at a time: two first subscriptions of a table at once.
    PERFORM pg_advisory_xact_lock(2017, relid::integer);
    existing := to_regprocedure(format('webhooks.%I()', fn));
    IF existing IS NOT NULL AND source = (SELECT p.prosrc FROM pg_proc p WHERE p.oid = existing) THEN
        RETURN fn;
    END IF;
    EXECUTE format('CREATE OR REPLACE FUNCTION webhooks.%I() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS %L',
                   fn, source);
    IF existing IS NULL THEN
        -- Given to webhooks_capture as 030_capture.sql gives _capture_statement: the role may
        -- own a function in the schema only while it may create there, for this statement.
        GRANT CREATE ON SCHEMA webhooks TO webhooks_capture;
        EXECUTE format('ALTER FUNCTION webhooks.%I() OWNER TO webhooks_capture', fn);
        REVOKE CREATE ON SCHEMA webhooks FROM webhooks_capture;
        -- As migrate does for every function (090_privileges.sql): no role may put it on a table
        -- of its own with another webhook's id as the argument.
        EXECUTE format('REVOKE ALL ON FUNCTION webhooks.%I() FROM PUBLIC', fn);
        EXECUTE format('COMMENT ON FUNCTION webhooks.%I() IS %L', fn, format(
            'Capture trigger of the table of oid %s: webhooks._capture_statement with its type probe folded into the plan.',
            relid));
    END IF;
    RETURN fn;
END
$$;

-- Drop the tables' own capture functions no trigger calls any more (their table was dropped,
-- restored under another oid, or lost its statement triggers): `relid`'s, or all of them.
-- Returns how many were dropped.
CREATE OR REPLACE FUNCTION webhooks._drop_unused_capture_functions(relid oid DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f regprocedure;
    dropped integer := 0;
BEGIN
    FOR f IN SELECT p.oid FROM pg_proc p
             WHERE p.pronamespace = 'webhooks'::regnamespace AND p.proname ~ '^_capture_table_[0-9]+$'
               AND (_drop_unused_capture_functions.relid IS NULL
                    OR p.proname = '_capture_table_' || _drop_unused_capture_functions.relid)
               AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgfoid = p.oid) LOOP
        EXECUTE format('DROP FUNCTION %s', f);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;

-- Make the capture triggers on `relid` match its subscriptions: one per subscribed operation,
-- carrying the subscribed webhooks, none for the others. Called by every management function
-- that changes subscriptions and by every migrate (refresh_triggers); a trigger that already
-- matches is left alone, so a re-sync takes no lock on a table whose triggers are current.
--
-- The kind of trigger: FOR EACH STATEMENT with transition tables, except FOR EACH ROW for
-- partitioned tables (cloned to every partition, so writes made straight into a partition are
-- captured too) and for UPDATE on a table without a key to pair old and new rows by.
CREATE OR REPLACE FUNCTION webhooks._sync_triggers(relid oid)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    op text;
    trigger_name text;
    hooks uuid[];
    has_key boolean;
    partitioned boolean;
    by_row boolean;
    fn text;
    own_fn text;  -- the table's copy of _capture_statement, written at most once a sync
    args text[];
    filter_query text;
BEGIN
    SELECT c.relkind = 'p' INTO partitioned FROM pg_class c WHERE c.oid = relid;
    IF NOT FOUND THEN RETURN; END IF;  -- the table was dropped, and its triggers with it
    PERFORM webhooks._sync_routes(relid);
    has_key := webhooks._pairing_index(relid) IS NOT NULL;
    FOREACH op IN ARRAY ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'] LOOP
        trigger_name := 'webhooks_capture_' || lower(op);
        SELECT array_agg(s.webhook_id ORDER BY s.webhook_id) INTO hooks
        FROM webhooks.subscriptions s
        WHERE s.relid = _sync_triggers.relid AND op = ANY (s.operations);
        -- Capture filters (031): statement-level, pairing by key when there is one; refused on
        -- partitioned tables. TRUNCATE has no rows to filter: it keeps its statement trigger.
        filter_query := CASE WHEN hooks IS NOT NULL AND NOT partitioned AND op <> 'TRUNCATE'
                             THEN webhooks._filter_query(relid, op) END;
        by_row := op <> 'TRUNCATE' AND filter_query IS NULL AND (partitioned OR (op = 'UPDATE' AND NOT has_key));
        fn := CASE WHEN op = 'TRUNCATE' THEN '_capture_truncate'
                   WHEN filter_query IS NOT NULL THEN '_capture_filtered'
                   WHEN by_row OR hooks IS NULL THEN '_capture_row'  -- (no hooks: no trigger to create)
                   ELSE coalesce(own_fn, webhooks._table_capture_function(relid)) END;
        own_fn := CASE WHEN fn LIKE '\_capture\_table\_%' THEN fn ELSE own_fn END;
        -- A filtered trigger lists only the webhooks not routed by value (its fallback reads those
        -- from capture_routes): its argument stays the same however many tenants come and go.
        args := CASE WHEN filter_query IS NOT NULL
                     THEN ARRAY[coalesce(ARRAY(SELECT h FROM unnest(hooks) h WHERE NOT EXISTS (
                              SELECT 1 FROM webhooks.subscriptions s WHERE s.webhook_id = h
                                AND s.relid = _sync_triggers.relid AND s.route_column IS NOT NULL)), '{}')::text,
                                filter_query]
                          -- Routes on one column only: a third argument, that column (see _routed_row).
                          || ARRAY(SELECT r::text FROM webhooks._route_column(relid, op) r WHERE r IS NOT NULL)
                     WHEN partitioned THEN ARRAY[hooks::text, 'root']
                     -- One-row changes on the table and operation's route (migration 0023).
                     WHEN hooks IS NOT NULL AND fn LIKE '\_capture\_table\_%' AND op <> 'TRUNCATE'
                     THEN ARRAY[hooks::text, webhooks._table_route(relid, op)::text]
                     ELSE ARRAY[hooks::text] END;
        -- The route's cursors: one per webhook while its trigger routes; a trigger that no longer
        -- does (a filter came, or the key went) keeps those of webhooks still subscribed, for what
        -- is on the route already, and adds none (a filtered webhook must never read a route).
        PERFORM webhooks._sync_route_cursors(r.route, hooks, coalesce(args[2] = r.route::text, false))
        FROM webhooks.table_routes r
        WHERE r.relid = _sync_triggers.relid AND r.operation = op;
        IF hooks IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_trigger t
            WHERE t.tgrelid = _sync_triggers.relid AND t.tgname = trigger_name AND NOT t.tgisinternal
              AND t.tgfoid = format('webhooks.%I()', fn)::regprocedure
              AND ((t.tgtype & 1) = 1) = by_row
              AND encode(t.tgargs, 'escape') = array_to_string(args, '\000') || '\000'
        ) THEN
            CONTINUE;  -- already what it should be
        END IF;
        IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = _sync_triggers.relid AND t.tgname = trigger_name) THEN
            EXECUTE format('DROP TRIGGER %I ON %s', trigger_name, relid::regclass);
        END IF;
        IF hooks IS NOT NULL THEN
            EXECUTE format(
                'CREATE TRIGGER %I AFTER %s ON %s %s EXECUTE FUNCTION webhooks.%s(%s)',
                trigger_name, op, relid::regclass,
                CASE
                    WHEN by_row THEN 'FOR EACH ROW'
                    WHEN op = 'TRUNCATE' THEN 'FOR EACH STATEMENT'
                    WHEN op = 'INSERT' THEN 'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT'
                    WHEN op = 'DELETE' THEN 'REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT'
                    ELSE 'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT'
                END,
                fn, (SELECT string_agg(quote_literal(a), ', ') FROM unnest(args) a));
        END IF;
    END LOOP;
    -- A table whose last statement trigger went (unwatched, filtered, partitioned) keeps no copy.
    PERFORM webhooks._drop_unused_capture_functions(relid);
END
$$;
