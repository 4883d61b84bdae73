-- pgwebhooks: the capture-filter parser. `columns`, `exclude_columns` and `where` of one events
-- entry, checked when a webhook is created or changed (WH017, WH018, WH026-WH028); the runtime
-- that evaluates them at capture is 032_capture_filters.sql.

-- The capture filters of one events entry. `columns` and `exclude_columns` must name
-- columns of the table (WH017); `where` must be one boolean expression over the table's columns
-- (the old row of an UPDATE is `(old).column`), checked by _check_where (WH018, WH026, WH027).
-- An equality on one column of a plain type (`tenant_id = 42`) is returned as a
-- route, looked up at capture rather than evaluated.
CREATE OR REPLACE FUNCTION webhooks._parse_filters(field text, relid oid, item jsonb)
RETURNS TABLE (columns text[], exclude_columns text[], where_clause text, route_column name, route_value text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key text;
    list text[];
    missing text;
    m text[];
    col_type regtype;
BEGIN
    FOREACH key IN ARRAY ARRAY['columns', 'exclude_columns'] LOOP
        list := NULL;
        IF item ? key THEN
            IF jsonb_typeof(item -> key) <> 'array' OR jsonb_array_length(item -> key) = 0
               OR EXISTS (SELECT 1 FROM jsonb_array_elements(item -> key) e WHERE jsonb_typeof(e) <> 'string') THEN
                PERFORM webhooks._fail('WH017', field || '.' || key,
                    format('must be a non-empty array of column names, got %s', left((item -> key)::text, 200)));
            END IF;
            list := ARRAY(SELECT DISTINCT e FROM jsonb_array_elements_text(item -> key) e ORDER BY e);
            SELECT c INTO missing FROM unnest(list) c
            WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = relid AND a.attname = c
                                                          AND a.attnum > 0 AND NOT a.attisdropped)
            LIMIT 1;
            IF missing IS NOT NULL THEN
                PERFORM webhooks._fail('WH017', field || '.' || key,
                    format('table %s has no column %I', relid::regclass, missing));
            END IF;
        END IF;
        IF key = 'columns' THEN columns := list; ELSE exclude_columns := list; END IF;
    END LOOP;
    IF item ? 'where' THEN
        IF jsonb_typeof(item -> 'where') <> 'string' OR btrim(item ->> 'where') = '' THEN
            PERFORM webhooks._fail('WH018', field || '.where',
                format('must be a non-empty string (a SQL condition), got %s', left((item -> 'where')::text, 200)));
        END IF;
        where_clause := item ->> 'where';
        PERFORM webhooks._check_where(field || '.where', relid, where_clause);
        -- "column = 42" or "column = 'text'": routed by value.
        m := regexp_match(where_clause, '^\s*([a-z_][a-z0-9_]*)\s*=\s*(-?[0-9]+|''(?:[^'']|'''')*'')\s*$');
        IF m IS NOT NULL AND (columns IS NULL) THEN
            SELECT a.atttypid::regtype INTO col_type FROM pg_attribute a
            WHERE a.attrelid = relid AND a.attname = m[1] AND a.attnum > 0 AND NOT a.attisdropped;
            -- Only types whose text form is canonical: equal values, equal text.
            IF col_type IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype, 'text'::regtype,
                            'character varying'::regtype, 'uuid'::regtype) THEN
                route_column := m[1];
                BEGIN
                    EXECUTE format('SELECT (%s::%s)::text', m[2], col_type) INTO route_value;
                EXCEPTION WHEN data_exception THEN
                    -- 99999999999999999999 for an integer column: no row could ever match.
                    PERFORM webhooks._fail('WH018', field, format('%s is not a value of column %I (%s): %s',
                                                                  left(m[2], 100), m[1], col_type, SQLERRM));
                END;
            END IF;
        END IF;
    END IF;
    -- Partitioned tables are captured row by row in each partition; filters are not applied there yet.
    IF (columns IS NOT NULL OR where_clause IS NOT NULL)
       AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = relid AND c.relkind = 'p') THEN
        PERFORM webhooks._fail('WH018', field, format('"columns" and "where" are not supported on the partitioned table %s',
                                                      relid::regclass));
    END IF;
    RETURN NEXT;
END
$$;

-- The functions a filter may call although they are not leakproof (cheap, and built in).
CREATE OR REPLACE FUNCTION webhooks._where_allowed_functions()
RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY['lower', 'upper', 'length', 'char_length', 'character_length', 'octet_length',
        'btrim', 'ltrim', 'rtrim', 'abs', 'round', 'trunc', 'ceil', 'ceiling', 'floor', 'sign', 'left', 'right',
        'substr', 'substring', 'strpos', 'position', 'starts_with', 'mod', 'div', 'greatest', 'least',
        'date_trunc', 'date_part', 'extract', 'jsonb_typeof', 'json_typeof', 'jsonb_exists', 'jsonb_extract_path_text',
        'jsonb_extract_path', 'json_extract_path_text', 'json_extract_path', 'jsonb_array_length',
        'array_length', 'cardinality', 'array_position', 'isfinite', 'num_nulls', 'num_nonnulls',
        'like', 'textlike', 'textnlike', 'bool', 'int4', 'int8', 'int2', 'numeric', 'float8', 'text',
        'chr', 'ascii', 'md5', 'concat', 'concat_ws', 'nullif', 'to_char', 'split_part', 'replace', 'initcap']
$$;

-- The checks of a `where` on its text alone, before it is parsed: its length, nothing that
-- could end the query it is put in, no string literal while a user domain would judge it.
CREATE OR REPLACE FUNCTION webhooks._check_where_text(field text, clause text)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF length(clause) > 4000 THEN
        PERFORM webhooks._fail('WH018', field, format('is %s characters long; at most 4000 are allowed', length(clause)));
    END IF;
    IF strpos(clause, ';') > 0 OR strpos(clause, '--') > 0 OR strpos(clause, '/*') > 0 THEN
        PERFORM webhooks._fail('WH018', field, format('%L may not contain ";", "--" or "/*" anywhere, not even inside '
            'quotes: give one condition (write a semicolon in text as chr(59))', left(clause, 200)));
    END IF;
    IF strpos(clause, '''') > 0 AND EXISTS (
        SELECT 1 FROM pg_constraint k JOIN pg_depend dd ON dd.classid = 'pg_constraint'::regclass AND dd.objid = k.oid
        WHERE k.contypid <> 0 AND dd.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass)
          AND dd.refobjid >= 16384) THEN
        PERFORM webhooks._fail('WH026', field, format('%L holds a string literal, refused while a domain of this '
            'database checks its values with a function that is not built in', left(clause, 200)));
    END IF;
END
$$;

-- The type of a `where`'s probe view when it is one column but not boolean, as the message says it.
CREATE OR REPLACE FUNCTION webhooks._where_type_problem(probe oid)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('is of type %s, not boolean', a.atttypid::regtype)
    FROM pg_attribute a
    WHERE a.attrelid = probe AND a.attnum = 1 AND a.atttypid <> 'boolean'::regtype
      AND (SELECT count(*) FROM pg_attribute b WHERE b.attrelid = probe AND b.attnum > 0) = 1
$$;

-- Why the query tree of a `where`'s probe view holds what a filter may not (a list, a subquery,
-- an aggregate, a node that reads the session or runs code), or NULL. A non-boolean condition
-- is _where_type_problem's, and only the node scan applies to it.
CREATE OR REPLACE FUNCTION webhooks._where_tree_refusal(probe oid, tree text)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        CASE
            WHEN (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = probe AND a.attnum > 0) <> 1
                THEN 'must be one condition, not a list'
            WHEN (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = probe AND a.attnum = 1) <> 'boolean'::regtype
                THEN NULL
            WHEN tree ~ '\:hasSubLinks true' THEN 'may not hold a subquery'
            WHEN tree ~ '\:hasAggs true' THEN 'may not hold an aggregate'
            WHEN tree ~ '\:hasWindowFuncs true' THEN 'may not hold a window function'
            WHEN tree ~ '\:hasTargetSRFs true' THEN 'may not hold a set-returning function'
            WHEN tree ~ '\:setOperations [^<]' THEN 'may not hold UNION, INTERSECT or EXCEPT'
        END,
        (SELECT 'may not use ' || lower(m[1]) || ' (it reads the session or runs code)'
         FROM regexp_matches(tree, '\{(SQLVALUEFUNCTION|NEXTVALUEEXPR|XMLEXPR|COERCETODOMAIN|SUBLINK|AGGREF'
                                   '|WINDOWFUNC|GROUPINGFUNC|CURRENTOFEXPR|PARAM)\M', 'g') m LIMIT 1))
$$;

-- What the probe view of a `where` on `relid` refers to, besides itself and its table. Built-in
-- (pinned) objects have no pg_depend rows: the functions, operators and types are read from the
-- query tree as well.
CREATE OR REPLACE FUNCTION webhooks._where_dependencies(probe oid, relid oid, tree text)
RETURNS TABLE (refclassid oid, refobjid oid)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT dep.refclassid, dep.refobjid FROM pg_depend dep JOIN pg_rewrite w ON w.oid = dep.objid
    WHERE dep.classid = 'pg_rewrite'::regclass AND w.ev_class = probe
      AND NOT (dep.refclassid = 'pg_class'::regclass AND dep.refobjid IN (probe, relid))
    UNION
    SELECT 'pg_proc'::regclass, m[2]::oid FROM regexp_matches(tree, ':(funcid|opfuncid) (\d+)', 'g') m
    WHERE m[2] <> '0'
    UNION
    SELECT 'pg_operator'::regclass, m[1]::oid FROM regexp_matches(tree, '\:opno (\d+)', 'g') m
    UNION
    SELECT 'pg_operator'::regclass, o::oid
    FROM regexp_matches(tree, '\:opnos \(o ([0-9 ]+)\)', 'g') m, regexp_split_to_table(m[1], ' ') o
    UNION
    SELECT 'pg_type'::regclass, m[2]::oid
    FROM regexp_matches(tree, ':(consttype|resulttype|funcresulttype|opresulttype|row_typeid|vartype|casetype'
                              '|coalescetype|minmaxtype|array_typeid|element_typeid) (\d+)', 'g') m
    WHERE m[2] <> '0'
$$;

-- Why a `where` on `relid` may not refer to one object (a table, function, operator, type), or NULL.
CREATE OR REPLACE FUNCTION webhooks._where_dependency_refusal(refclassid oid, refobjid oid, relid oid)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    refusal text;
BEGIN
    IF refclassid = 'pg_class'::regclass THEN
        refusal := format('may only read its own row, not %s', refobjid::regclass);
    ELSIF refclassid = 'pg_proc'::regclass THEN
        refusal := webhooks._where_function_problem(refobjid, webhooks._where_allowed_functions());
    ELSIF refclassid = 'pg_operator'::regclass THEN
        refusal := (SELECT coalesce(webhooks._where_function_problem(o.oprcode, webhooks._where_allowed_functions()),
                                    CASE WHEN o.oid >= 16384 THEN format('may not use operator %s, which is not built in', o.oid::regoperator) END)
                    FROM pg_operator o WHERE o.oid = _where_dependency_refusal.refobjid);
    ELSIF refclassid = 'pg_type'::regclass THEN
        SELECT CASE
            WHEN t.typtype = 'd' OR et.typtype = 'd' THEN format('may not use the domain %s (its checks run code)', t.oid::regtype)
            WHEN n.nspname LIKE 'pg\_temp%' THEN format('may not use the temporary type %s', t.oid::regtype)
            WHEN t.typrelid <> 0 AND t.typrelid <> _where_dependency_refusal.relid THEN format('may not use the row type %s', t.oid::regtype)
        END INTO refusal
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typlen = -1
        WHERE t.oid = _where_dependency_refusal.refobjid;
    ELSIF refclassid <> 'pg_collation'::regclass THEN
        refusal := format('may not refer to %s', pg_describe_object(refclassid, refobjid, 0));
    END IF;
    RETURN refusal;
END
$$;

-- Check a `where` filter. It is data, not code: nothing in it may run with the definer's rights,
-- here or at capture. So it is refused if it holds `;`, `--` or `/*` anywhere, even inside quotes
-- (one EXECUTE is then one statement whatever the quoting: E'', U&'', dollar quotes); then it is
-- parse-analysed, never planned (planning folds IMMUTABLE calls, which would run an admin's
-- pg_temp function as the installer), as the body of a view created in a subtransaction rolled
-- back on purpose; the view's dependencies and query tree are then read and everything but the
-- table's columns, constants of plain types and cheap built-in immutable functions is refused.
-- Parse analysis can only run code through a string literal typed as an array or row of a
-- domain (its CHECK runs on input), so while any domain's CHECK calls non-built-in code, string
-- literals are refused.
CREATE OR REPLACE FUNCTION webhooks._check_where(field text, relid oid, clause text)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text;
    refusal text;
    probe oid;
    tree text;
    d record;
BEGIN
    PERFORM webhooks._check_where_text(field, clause);
    BEGIN
        PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
        EXECUTE format('CREATE VIEW webhooks._where_probe AS SELECT (%s) AS keep FROM %s AS r '
                       'CROSS JOIN (SELECT NULL::%s AS old, NULL::boolean AS paired) x',
                       clause, relid::regclass, relid::regclass);
        probe := 'webhooks._where_probe'::regclass;
        SELECT w.ev_action::text INTO tree FROM pg_rewrite w WHERE w.ev_class = probe AND w.rulename = '_RETURN';
        problem := webhooks._where_type_problem(probe);
        refusal := webhooks._where_tree_refusal(probe, tree);
        FOR d IN SELECT * FROM webhooks._where_dependencies(probe, relid, tree) LOOP
            EXIT WHEN refusal IS NOT NULL;
            refusal := webhooks._where_dependency_refusal(d.refclassid, d.refobjid, relid);
        END LOOP;
        RAISE EXCEPTION USING ERRCODE = 'WHR00';
    EXCEPTION
        WHEN SQLSTATE 'WHR00' THEN NULL;
        WHEN OTHERS THEN problem := SQLERRM;
    END;
    IF problem IS NOT NULL THEN
        PERFORM webhooks._fail('WH018', field, format('%L is not a condition on table %s: %s',
                                                      left(clause, 200), relid::regclass, problem));
    END IF;
    IF refusal IS NOT NULL THEN
        PERFORM webhooks._fail('WH027', field, format('%L %s: a filter may use the row''s columns, (old).column, '
            'constants, operators and cheap built-in immutable functions only', left(clause, 200), refusal));
    END IF;
END
$$;

-- Why a function may not be called by a `where` filter, or NULL if it may: built in, immutable,
-- a plain scalar function, and leakproof, an operator's or a cast's, or on the allow-list; never
-- a regular expression (one crafted pattern can take minutes on the writer's row).
CREATE OR REPLACE FUNCTION webhooks._where_function_problem(fn oid, allowed text[])
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN p.oid IS NULL THEN format('may not call function %s', fn)
        WHEN p.oid >= 16384 THEN format('may not call %s, which is not built in', p.oid::regprocedure)
        WHEN p.proname ~ 'regex|similar' OR p.prosrc ~ 'regex|similar' THEN format('may not use a regular expression (%s)', p.oid::regprocedure)
        WHEN p.provolatile <> 'i' OR p.prokind <> 'f' OR p.proretset
            THEN format('may not call %s, which is not an immutable scalar function', p.oid::regprocedure)
        WHEN NOT (p.proleakproof OR p.proname = ANY (allowed)
                  OR EXISTS (SELECT 1 FROM pg_operator o WHERE o.oprcode = p.oid AND o.oid < 16384)
                  OR EXISTS (SELECT 1 FROM pg_cast c WHERE c.castfunc = p.oid AND c.oid < 16384))
            THEN format('may not call %s, which is not on the list of functions allowed in filters', p.oid::regprocedure)
    END
    FROM (SELECT fn AS oid) f LEFT JOIN pg_proc p ON p.oid = f.oid
$$;

COMMENT ON FUNCTION webhooks._where_allowed_functions IS
    'Functions a where filter may call although they are not leakproof.';

COMMENT ON FUNCTION webhooks._check_where_text IS
    'Checks of a where filter on its text alone: length, no ; -- /*, no string literal while a user domain checks values.';

COMMENT ON FUNCTION webhooks._where_type_problem IS
    'The type of a where filter''s probe view when it is one column but not boolean, or NULL.';

COMMENT ON FUNCTION webhooks._where_tree_refusal IS
    'Why a where filter''s query tree holds a list, subquery, aggregate or session-reading node, or NULL.';

COMMENT ON FUNCTION webhooks._where_dependencies IS
    'The objects a where filter''s probe view refers to, from pg_depend and from its query tree.';

COMMENT ON FUNCTION webhooks._where_dependency_refusal IS
    'Why a where filter may not refer to one object (table, function, operator, type), or NULL.';
