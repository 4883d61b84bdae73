-- 097: the one-job helpers the long functions were split into are internal like every `_`
-- function: each fixes its search_path, none is SECURITY DEFINER, each has a COMMENT, and none
-- is executable by an admin, runner, viewer, publisher or application role. The capture
-- filters' helpers run inside _capture_filtered, as webhooks_capture: that role alone may
-- execute them.
BEGIN;
SELECT plan(6);

CREATE TEMP TABLE helpers (name text, for_capture boolean);
INSERT INTO helpers VALUES
    ('_check_change_fields', false), ('_apply_changes', false), ('_kept_secret_headers', false),
    ('_change_pause_after', false), ('_events_entry', false), ('_events_pattern', false),
    ('_events_table', false), ('_events_operations', false), ('_where_allowed_functions', false),
    ('_check_where_text', false), ('_where_type_problem', false), ('_where_tree_refusal', false),
    ('_where_dependencies', false), ('_where_dependency_refusal', false), ('_deliveries_page', false),
    ('_test_row_change', false), ('_filter_units', true), ('_filter_merge', true), ('_hold_rows', true),
    ('_split_old_images', true), ('_store_filtered', true);
CREATE ROLE app_writer_097 NOLOGIN;

SELECT is((SELECT count(*)::int FROM helpers h JOIN pg_proc p ON p.proname = h.name
           WHERE p.pronamespace = 'webhooks'::regnamespace), 21, 'every helper exists, once');
SELECT is_empty($$SELECT h.name FROM helpers h JOIN pg_proc p ON p.proname = h.name
                  AND p.pronamespace = 'webhooks'::regnamespace
                  WHERE NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)$$,
                'every helper sets search_path = pg_catalog, pg_temp');
SELECT is_empty($$SELECT h.name FROM helpers h JOIN pg_proc p ON p.proname = h.name
                  AND p.pronamespace = 'webhooks'::regnamespace WHERE p.prosecdef$$,
                'no helper is SECURITY DEFINER');
SELECT is_empty($$SELECT h.name FROM helpers h JOIN pg_proc p ON p.proname = h.name
                  AND p.pronamespace = 'webhooks'::regnamespace
                  WHERE coalesce(obj_description(p.oid, 'pg_proc'), '') = ''$$,
                'every helper has a COMMENT');
SELECT is_empty($$SELECT h.name, r.role FROM helpers h JOIN pg_proc p ON p.proname = h.name
                  AND p.pronamespace = 'webhooks'::regnamespace
                  CROSS JOIN unnest(ARRAY['webhooks_admin', 'webhooks_runner', 'webhooks_viewer',
                                          'webhooks_publisher', 'app_writer_097']) r(role)
                  WHERE has_function_privilege(r.role, p.oid, 'EXECUTE')$$,
                'no helper is executable by admin, runner, viewer, publisher or an application role');
SELECT is((SELECT array_agg(h.name ORDER BY h.name) FROM helpers h JOIN pg_proc p ON p.proname = h.name
           AND p.pronamespace = 'webhooks'::regnamespace
           WHERE has_function_privilege('webhooks_capture', p.oid, 'EXECUTE')),
          (SELECT array_agg(h.name ORDER BY h.name) FROM helpers h WHERE h.for_capture),
          'webhooks_capture may execute the capture filters'' helpers, and only those');

SELECT * FROM finish();
ROLLBACK;
