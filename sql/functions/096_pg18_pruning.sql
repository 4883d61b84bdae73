-- PostgreSQL 18.0 to 18.6: no run-time partition pruning in our statements that lock or change
-- rows.
--
-- In those releases an EvalPlanQual recheck (a READ COMMITTED UPDATE, DELETE or SELECT ... FOR
-- UPDATE that finds a row changed by a transaction committed since its snapshot, and re-reads it)
-- builds the statement's run-time pruning state again in the recheck's own memory and frees it
-- afterwards, while the statement goes on pruning through it: the backend can crash in
-- perform_pruning_base_step. Fixed upstream after 18.6 (PostgreSQL commit 1b5dd3a, "EPQ run-time
-- pruning", backpatched to 18). claim() rechecks whenever a delivery it is about to lease was
-- completed meanwhile, and its statements prune the partitioned outbox (073_blocks.sql) by
-- parameters: 18.4 and 18.6 servers crashed there in the suite now and then.
--
-- So on those releases every function of ours whose statements lock or change rows runs with
-- enable_partition_pruning = off: a lookup by id probes each block's index instead of one. Only
-- functions that already have SET clauses: adding one to a function the planner inlines into its
-- caller (LANGUAGE sql, none) would stop the inlining; those run inside a caller that has it.
-- The capture triggers only insert (routing, not pruning) and are left as they are. After the
-- server is upgraded past 18.6, `pgwebhooks migrate` takes the setting off again: it writes every
-- function each time, and CREATE OR REPLACE drops the SET clauses the definition does not name.
DO $$
DECLARE
    f regprocedure;
BEGIN
    IF current_setting('server_version_num')::int NOT BETWEEN 180000 AND 180006 THEN
        RETURN;
    END IF;
    FOR f IN
        SELECT p.oid::regprocedure
        FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'webhooks'::regnamespace AND p.prokind = 'f' AND p.proconfig IS NOT NULL
          -- Row locks, UPDATE and DELETE, written out or built for EXECUTE (format's %s).
          AND p.prosrc ~* '(\mFOR\s+(NO\s+KEY\s+)?UPDATE\M|\mFOR\s+(KEY\s+)?SHARE\M|\mUPDATE\s+(webhooks\.|%)|\mDELETE\s+FROM\M)'
          AND pg_catalog.pg_has_role(p.proowner, 'USAGE')
        ORDER BY p.oid
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET enable_partition_pruning = off', f);
    END LOOP;
END
$$;
