-- pgwebhooks migration 0024: the outbox's four tables are partitioned by blocks of ids
-- (docs/outbox-design.md, step 3), so that maintain() removes finished work a block at a time
-- (TRUNCATE, then DROP) instead of deleting it row by row: no dead rows, no bloat, no vacuum.
--
-- Two families, each numbered by one sequence: captures and events by the capture id, deliveries
-- and delivery_attempts by the delivery id. A block is 2^36 ids (073_blocks.sql). maintain()
-- closes the current block once its first row is older than the roll interval, by moving the
-- sequence to the next block's start (created ahead), so a block holds the rows of one stretch of
-- time. Ids keep growing: nothing else changes for readers. A DEFAULT partition catches any id
-- past the blocks created ahead (maintain() stalled for long), so a write never fails for want of
-- a partition.
--
-- Here: each table becomes the parent, and what it held becomes its first block (from MINVALUE to
-- the start of the next), checked once by ATTACH. Identity columns cannot be on a partitioned
-- table before PostgreSQL 17, so ids come from sequences of the same names (the values go on).
-- delivery_attempts is partitioned by its delivery's id, with its delivery's block: its primary
-- key becomes (delivery_id, id). The functions and grants are applied after this, on the parents.

CREATE OR REPLACE FUNCTION webhooks._partition_by_blocks(tbl text, part_key text, primary_key text, first_block_end bigint)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parent text := 'webhooks.' || quote_ident(tbl);
    first_block text := tbl || '_0';
    id_column record;
    last_id bigint;
    was_called boolean;
    sequence_name text;
    idx record;
    table_comment text := obj_description(parent::regclass, 'pg_class');
BEGIN
    -- Identity columns become sequence defaults, under the identity sequence's name and position.
    FOR id_column IN
        SELECT a.attname, pg_get_serial_sequence(parent, a.attname) AS seq
        FROM pg_attribute a WHERE a.attrelid = parent::regclass AND a.attidentity <> '' AND NOT a.attisdropped
    LOOP
        EXECUTE format('SELECT last_value, is_called FROM %s', id_column.seq) INTO last_id, was_called;
        sequence_name := id_column.seq;
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP IDENTITY', parent, id_column.attname);
        EXECUTE format('CREATE SEQUENCE %s AS bigint', sequence_name);
        PERFORM setval(sequence_name, last_id, was_called);
    END LOOP;

    EXECUTE format('ALTER TABLE %s RENAME TO %I', parent, first_block);
    FOR idx IN
        SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        WHERE x.indrelid = ('webhooks.' || quote_ident(first_block))::regclass
    LOOP
        EXECUTE format('ALTER INDEX webhooks.%I RENAME TO %I', idx.relname, first_block || '_' || idx.relname);
    END LOOP;
    EXECUTE format('CREATE TABLE %s (LIKE webhooks.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE '
                   'INCLUDING COMMENTS) PARTITION BY RANGE (%I)', parent, first_block, part_key);
    EXECUTE format('COMMENT ON TABLE %s IS %L', parent, table_comment);
    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I PRIMARY KEY (%s)', parent, tbl || '_pkey', primary_key);
    -- The other indexes, as they were, on the parent (ATTACH adopts the first block's copies).
    FOR idx IN
        SELECT substr(i.relname, length(first_block) + 2) AS name, pg_get_indexdef(x.indexrelid) AS def
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        WHERE x.indrelid = ('webhooks.' || quote_ident(first_block))::regclass AND NOT x.indisprimary
    LOOP
        EXECUTE regexp_replace(idx.def, '^CREATE INDEX \S+ ON webhooks\.\S+ ',
                               format('CREATE INDEX %I ON %s ', idx.name, parent));
    END LOOP;
    IF sequence_name IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN id SET DEFAULT nextval(%L)', parent, sequence_name);
        EXECUTE format('ALTER SEQUENCE %s OWNED BY %s.id', sequence_name, parent);
    END IF;
    -- A primary key other than the parent's (delivery_attempts: id alone) gives way to the
    -- parent's, which ATTACH builds.
    IF primary_key <> 'id' AND tbl <> 'events' THEN
        EXECUTE format('ALTER TABLE webhooks.%I DROP CONSTRAINT %I', first_block, first_block || '_' || tbl || '_pkey');
    END IF;
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION webhooks.%I FOR VALUES FROM (MINVALUE) TO (%s)',
                   parent, first_block, first_block_end);
    EXECUTE format('CREATE TABLE webhooks.%I PARTITION OF %s FOR VALUES FROM (%s) TO (%s)',
                   tbl || '_' || (first_block_end >> 36), parent, first_block_end, first_block_end + (1::bigint << 36));
    EXECUTE format('CREATE TABLE webhooks.%I PARTITION OF %s DEFAULT', tbl || '_default', parent);
    -- Roles reach the rows through the parent only (090_privileges.sql grants on it).
    FOR idx IN
        SELECT DISTINCT a.grantee::regrole AS grantee FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = ('webhooks.' || quote_ident(first_block))::regclass AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('REVOKE ALL ON webhooks.%I FROM %s', first_block,
                       CASE WHEN idx.grantee::oid = 0 THEN 'PUBLIC' ELSE idx.grantee::text END);
    END LOOP;
    EXECUTE format('COMMENT ON TABLE webhooks.%I IS %L', first_block,
                   format('Block of %s: the rows written before 0024 (073_blocks.sql)', parent));
    EXECUTE format('COMMENT ON TABLE webhooks.%I IS %L', tbl || '_' || (first_block_end >> 36),
                   format('Block of %s: ids from %s (073_blocks.sql)', parent, first_block_end));
    EXECUTE format('COMMENT ON TABLE webhooks.%I IS %L', tbl || '_default',
                   format('Catches ids of %s past the blocks created ahead (073_blocks.sql)', parent));
END
$$;

DO $$
DECLARE
    -- Each family's first block ends at the next multiple of 2^36 above the ids handed out so far.
    captures_end bigint := ((SELECT last_value FROM webhooks.captures_id_seq) >> 36) + 1 << 36;
    deliveries_end bigint := ((SELECT last_value FROM webhooks.deliveries_id_seq) >> 36) + 1 << 36;
    watched regclass;
BEGIN
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = 'webhooks.captures'::regclass) = 'p' THEN
        RETURN;  -- applied already (an install made from the bare files, adopted)
    END IF;
    -- Writers lock their table, then the outbox; `migrate` rebuilds the capture triggers after
    -- this in the same transaction. Taking the watched tables first, in a writer's order, keeps a
    -- writer that is between the two from deadlocking with the upgrade.
    FOR watched IN
        SELECT DISTINCT t.tgrelid::regclass FROM pg_trigger t
        WHERE t.tgname LIKE 'webhooks\_capture\_%' ORDER BY 1
    LOOP
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', watched);
    END LOOP;
    -- Then the outbox's four tables, in the order a claim takes them (deliveries first: its
    -- open floors read them before the captures; complete() writes attempts after the
    -- deliveries), so a claim that holds one of them is not waiting for another we hold. A
    -- session that takes them in another order may still deadlock with this; `migrate` then
    -- rolls back and tries again, as for a lock held too long.
    LOCK TABLE webhooks.deliveries, webhooks.captures, webhooks.events, webhooks.delivery_attempts
        IN ACCESS EXCLUSIVE MODE;
    PERFORM webhooks._partition_by_blocks('captures', 'id', 'id', captures_end);
    PERFORM webhooks._partition_by_blocks('events', 'capture_id', 'capture_id, n', captures_end);
    PERFORM webhooks._partition_by_blocks('deliveries', 'id', 'id', deliveries_end);
    PERFORM webhooks._partition_by_blocks('delivery_attempts', 'delivery_id', 'delivery_id, id', deliveries_end);
END
$$;

DROP FUNCTION webhooks._partition_by_blocks(text, text, text, bigint);

-- Blocks maintain() found not yet done after scanning them, and when to look again (073_blocks.sql).
CREATE TABLE IF NOT EXISTS webhooks._block_checks (
    family     text NOT NULL,
    block      bigint NOT NULL,
    next_check timestamptz NOT NULL,
    PRIMARY KEY (family, block),
    CONSTRAINT block_checks_family_valid CHECK (family IN ('captures', 'deliveries'))
);
COMMENT ON TABLE webhooks._block_checks IS
    'Outbox blocks maintain() scanned and found still needed, and when it looks at each again';
