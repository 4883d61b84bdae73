-- pgwebhooks: how a statement-level UPDATE capture pairs each new row with its old one.

-- "(n.new_row).id OPERATOR(pg_catalog.=) (o.old_row).id AND ..." for the key of `relid` that pairs the old
-- and new rows of an UPDATE, or NULL without one. The key is the primary key or, without one, a
-- unique index over plain NOT NULL columns (what logical replication accepts as an identity), so a
-- table whose primary key was dropped keeps exact pre-change rows while it has such an index.
-- Each column is compared with the equality operator of its index's operator class,
-- named with its schema, so the caller's search_path cannot substitute another. Read at fire time
-- so that a key changed by ALTER TABLE is followed.
CREATE OR REPLACE FUNCTION webhooks._pairing_index(relid oid)
RETURNS oid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT i.indexrelid
    FROM pg_index i
    WHERE i.indrelid = relid AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
      AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = relid AND a.attnum = ANY (i.indkey::int2[]) AND NOT a.attnotnull)
    ORDER BY i.indisprimary DESC, i.indexrelid
    LIMIT 1
$$;

CREATE OR REPLACE FUNCTION webhooks._primary_key_join(relid oid)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(CASE
               WHEN has_schema_privilege(ns.oid, 'USAGE')
               THEN format('(n.new_row).%1$I OPERATOR(%2$I.%3$s) (o.old_row).%1$I', a.attname, ns.nspname, op.oprname)
               -- The operator's schema is out of the capture role's reach (say citext installed in
               -- a locked-down schema): compare text forms rather than fail the application's UPDATE.
               ELSE format('(n.new_row).%1$I::pg_catalog.text OPERATOR(pg_catalog.=) (o.old_row).%1$I::pg_catalog.text',
                           a.attname)
           END, ' AND ' ORDER BY k.ord)
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey::int2[], i.indclass::oid[]) WITH ORDINALITY AS k(attnum, opclass, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    JOIN pg_opclass oc ON oc.oid = k.opclass
    JOIN pg_amop ao ON ao.amopfamily = oc.opcfamily AND ao.amopstrategy = 3
                   AND ao.amoplefttype = oc.opcintype AND ao.amoprighttype = oc.opcintype
                   AND ao.amopmethod = oc.opcmethod
    JOIN pg_operator op ON op.oid = ao.amopopr
    JOIN pg_namespace ns ON ns.oid = op.oprnamespace
    WHERE i.indexrelid = webhooks._pairing_index(relid)
$$;
