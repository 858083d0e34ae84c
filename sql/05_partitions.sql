-- Monthly partitions of the ledger.
--
-- cycles.ledger_entries is partitioned by RANGE (created_at), one partition
-- per calendar month in UTC, named ledger_entries_pYYYYMM, plus the DEFAULT
-- partition ledger_entries_default, which takes any row whose month has no
-- partition yet: an append never fails for lack of a partition. Months are
-- created ahead of time by cycles.ensure_ledger_partitions (called here at
-- load time, by migrations, and by any scheduler: cron, psql, a maintenance
-- loop). An old month is archived by detaching its partition
-- (docs/scaling.md, "Archiving a month of the ledger"): nothing is rewritten.
--
-- Every partition keeps the ledger's guarantees: the parent's row trigger
-- (no UPDATE, no DELETE) is cloned onto it by PostgreSQL; a TRUNCATE of a
-- partition fires only that partition's own statement trigger, added here;
-- no role but the owner has any privilege on a partition.

-- The statement trigger and privileges every partition carries.
CREATE FUNCTION cycles._protect_ledger_partition(p_partition regclass) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    EXECUTE format('CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON %s'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION cycles._ledger_is_append_only()', p_partition);
    EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', p_partition);
END;
$$;

CREATE TABLE cycles.ledger_entries_default PARTITION OF cycles.ledger_entries DEFAULT;

SELECT cycles._protect_ledger_partition('cycles.ledger_entries_default');

-- cycles.ensure_ledger_partitions ------------------------------------------------
-- Creates the monthly partitions from the month of p_from (default: the
-- current month, UTC) through p_months_ahead months after it, skipping those
-- that exist; cheap to call as often as one likes (one catalog lookup per
-- month when nothing is missing). Rows that already sit in the DEFAULT
-- partition for a month being created (written while that month had no
-- partition) are moved into the new partition in the same transaction: they
-- are copied unchanged (same entry_id, times and hashes), removed from the
-- DEFAULT partition with its append-only trigger suspended for that one
-- statement, and the new table is then attached.
-- Returns {"created": [partition names], "moved_rows": n}.
-- Locks: a transaction advisory lock serialising callers; before the first
-- partition it creates, SHARE ROW EXCLUSIVE on cycles.budgets (the lock the
-- new partition's foreign key to budgets takes), then creating a partition
-- takes an ACCESS EXCLUSIVE lock on the parent for an instant (writers wait,
-- they do not fail); moving rows also locks the DEFAULT partition. Budgets
-- before the ledger is every writer's order: taken the other way round, a
-- reserve holding its budget rows and about to append to the ledger and
-- this function holding the ledger and waiting for budgets deadlock.
-- Errors (in order): INVALID_REQUEST (p_months_ahead outside 0..120; a table
-- with a partition's name exists but is not attached: an archived month
-- is never re-created).
-- Invariants: every ledger row stays in the ledger exactly once, unchanged.
CREATE FUNCTION cycles.ensure_ledger_partitions(
    p_months_ahead integer DEFAULT 2,
    p_from         date DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_first   date := date_trunc('month', coalesce(p_from, (clock_timestamp() AT TIME ZONE 'UTC')::date))::date;
    v_month   date;
    v_start   timestamptz;
    v_end     timestamptz;
    v_name    text;
    v_table   regclass;
    v_created text[] := '{}';
    v_moved   bigint := 0;
    v_count   bigint;
BEGIN
    IF p_months_ahead IS NULL OR p_months_ahead NOT BETWEEN 0 AND 120 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'months_ahead must be between 0 and 120');
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('cycles.ensure_ledger_partitions', 0));
    FOR i IN 0 .. p_months_ahead LOOP
        v_month := (v_first + make_interval(months => i))::date;
        v_name := 'ledger_entries_p' || to_char(v_month, 'YYYYMM');
        v_table := to_regclass('cycles.' || v_name);
        IF v_table IS NOT NULL THEN
            IF NOT EXISTS (SELECT FROM pg_catalog.pg_inherits AS i
                           WHERE i.inhrelid = v_table AND i.inhparent = 'cycles.ledger_entries'::regclass) THEN
                PERFORM cycles._fail('INVALID_REQUEST', format(
                    'table cycles.%s exists but is not a partition of cycles.ledger_entries (an archived month?):'
                    ' rename or drop it first', v_name));
            END IF;
            CONTINUE;
        END IF;
        IF cardinality(v_created) = 0 THEN
            LOCK TABLE cycles.budgets IN SHARE ROW EXCLUSIVE MODE;
        END IF;
        v_start := v_month::timestamp AT TIME ZONE 'UTC';
        v_end := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        IF EXISTS (SELECT FROM cycles.ledger_entries_default AS d
                   WHERE d.created_at >= v_start AND d.created_at < v_end) THEN
            EXECUTE format('CREATE TABLE cycles.%I (LIKE cycles.ledger_entries INCLUDING DEFAULTS'
                           ' INCLUDING CONSTRAINTS)', v_name);
            EXECUTE format('INSERT INTO cycles.%I SELECT * FROM cycles.ledger_entries_default AS d'
                           ' WHERE d.created_at >= $1 AND d.created_at < $2', v_name) USING v_start, v_end;
            GET DIAGNOSTICS v_count = ROW_COUNT;
            ALTER TABLE cycles.ledger_entries_default DISABLE TRIGGER ledger_entries_append_only;
            DELETE FROM cycles.ledger_entries_default AS d WHERE d.created_at >= v_start AND d.created_at < v_end;
            ALTER TABLE cycles.ledger_entries_default ENABLE TRIGGER ledger_entries_append_only;
            EXECUTE format('ALTER TABLE cycles.ledger_entries ATTACH PARTITION cycles.%I FOR VALUES FROM (%L) TO (%L)',
                           v_name, v_start, v_end);
            v_moved := v_moved + v_count;
        ELSE
            EXECUTE format('CREATE TABLE cycles.%I PARTITION OF cycles.ledger_entries FOR VALUES FROM (%L) TO (%L)',
                           v_name, v_start, v_end);
        END IF;
        PERFORM cycles._protect_ledger_partition(('cycles.' || quote_ident(v_name))::regclass);
        v_created := v_created || v_name;
    END LOOP;
    RETURN jsonb_build_object('created', to_jsonb(v_created), 'moved_rows', v_moved);
END;
$$;

SELECT cycles.ensure_ledger_partitions(1);

-- cycles.verify_ledger_segment -------------------------------------------------
-- Verifies the hash chains inside one piece of the ledger: a partition
-- (attached, or detached and archived), or the whole ledger. p_table must be
-- cycles.ledger_entries or a table of its shape named ledger_entries* in
-- schema cycles or cycles_archive. Each budget's rows are walked in
-- created_at order; the first one must continue from p_previous (the piece
-- just before it: the budget's last row there gives the expected prev_hash
-- and running balances), or, without p_previous, must either start the chain
-- (no prev_hash, balances equal to its deltas) or be taken on trust as the
-- segment's anchor (p_anchored => true: its prev_hash and balances are then
-- only reported, the rows after it are checked against it).
-- Returns, per broken chain, its first broken link, with the problems of
-- cycles.verify_ledger_chain (first_row, prev_hash, entry_hash, balance);
-- empty when the piece is intact and continues p_previous.
-- Reads only. Errors: INVALID_REQUEST (a table that is not a ledger piece).
CREATE FUNCTION cycles.verify_ledger_segment(
    p_table    regclass,
    p_previous regclass DEFAULT NULL,
    p_anchored boolean DEFAULT false
)
RETURNS TABLE (budget_id bigint, tenant_id text, scope text, unit text, entry_id bigint,
               created_at timestamptz, problem text)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_table regclass;
BEGIN
    FOREACH v_table IN ARRAY ARRAY[p_table, coalesce(p_previous, p_table)] LOOP
        IF v_table IS NULL OR NOT EXISTS (
                SELECT FROM pg_catalog.pg_class AS c
                WHERE c.oid = v_table AND c.relkind IN ('r', 'p')
                  AND c.relnamespace IN ('cycles'::regnamespace, to_regnamespace('cycles_archive'))
                  AND c.relname LIKE 'ledger\_entries%') THEN
            PERFORM cycles._fail('INVALID_REQUEST',
                format('%s is not a piece of the ledger (cycles or cycles_archive ledger_entries*)', v_table));
        END IF;
    END LOOP;
    RETURN QUERY EXECUTE format($q$
        WITH anchor AS (
            SELECT DISTINCT ON (a.tenant_id, a.budget_id) a.tenant_id, a.budget_id, a.entry_hash,
                   a.allocated_after, a.spent_after, a.reserved_after, a.debt_after
            FROM %2$s AS a
            WHERE $1
            ORDER BY a.tenant_id, a.budget_id, a.created_at DESC
        ),
        walk AS (
            SELECT ROW(l.*)::cycles.ledger_entries AS entry, l.budget_id, l.tenant_id, l.scope, l.unit,
                   l.entry_id, l.created_at, l.prev_hash, l.entry_hash,
                   l.allocated_delta, l.spent_delta, l.reserved_delta, l.debt_delta,
                   l.allocated_after, l.spent_after, l.reserved_after, l.debt_after,
                   row_number() OVER chain AS position,
                   lag(l.entry_hash) OVER chain AS lag_hash,
                   lag(l.allocated_after) OVER chain AS lag_allocated,
                   lag(l.spent_after) OVER chain AS lag_spent,
                   lag(l.reserved_after) OVER chain AS lag_reserved,
                   lag(l.debt_after) OVER chain AS lag_debt
            FROM %1$s AS l
            WINDOW chain AS (PARTITION BY l.tenant_id, l.budget_id ORDER BY l.created_at)
        ),
        checked AS (
            SELECT w.budget_id, w.tenant_id, w.scope, w.unit, w.entry_id, w.created_at,
                   CASE
                       WHEN w.position = 1 AND a.budget_id IS NULL AND NOT $2 AND w.prev_hash IS NOT NULL
                           THEN 'first_row'
                       WHEN w.position = 1 AND a.budget_id IS NOT NULL AND w.prev_hash IS DISTINCT FROM a.entry_hash
                           THEN 'prev_hash'
                       WHEN w.position > 1 AND w.prev_hash IS DISTINCT FROM w.lag_hash THEN 'prev_hash'
                       WHEN w.entry_hash IS DISTINCT FROM cycles._ledger_entry_hash(w.entry) THEN 'entry_hash'
                       WHEN w.position = 1 AND a.budget_id IS NULL AND $2 THEN NULL
                       WHEN (w.allocated_after, w.spent_after, w.reserved_after, w.debt_after) IS DISTINCT FROM (
                               coalesce(CASE WHEN w.position = 1 THEN a.allocated_after ELSE w.lag_allocated END, 0)
                                   + w.allocated_delta,
                               coalesce(CASE WHEN w.position = 1 THEN a.spent_after ELSE w.lag_spent END, 0)
                                   + w.spent_delta,
                               coalesce(CASE WHEN w.position = 1 THEN a.reserved_after ELSE w.lag_reserved END, 0)
                                   + w.reserved_delta,
                               coalesce(CASE WHEN w.position = 1 THEN a.debt_after ELSE w.lag_debt END, 0)
                                   + w.debt_delta)
                           THEN 'balance'
                   END AS problem
            FROM walk AS w
            LEFT JOIN anchor AS a ON a.tenant_id = w.tenant_id AND a.budget_id = w.budget_id
        )
        SELECT DISTINCT ON (c.tenant_id, c.budget_id) c.budget_id, c.tenant_id, c.scope, c.unit, c.entry_id,
               c.created_at, c.problem
        FROM checked AS c
        WHERE c.problem IS NOT NULL
        ORDER BY c.tenant_id, c.budget_id, c.created_at
    $q$, p_table, coalesce(p_previous, p_table))
    USING p_previous IS NOT NULL, coalesce(p_anchored, false);
END;
$$;
