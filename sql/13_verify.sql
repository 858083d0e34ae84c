-- Reconciliation: the ledger proves the counters.

-- cycles.verify_ledger -------------------------------------------------------
-- Every (budget, counter) whose stored value differs from what the ledger
-- says it should be: for allocated, spent, reserved and debt the sum of that
-- counter's deltas over the budget's ledger rows; for remaining, the identity
-- allocated - spent - reserved - debt over those sums. A budget with no
-- ledger rows is expected to hold zeros. Every function that changes a
-- counter appends the same delta to the ledger in the same transaction, so
-- the result is always empty; a row here means a counter was changed behind
-- the functions' back (or a function has a bug).
-- Reads only; takes no locks beyond the snapshot. Sums are numeric, so a
-- corrupt ledger cannot make the check itself overflow.
CREATE FUNCTION cycles.verify_ledger()
RETURNS TABLE (budget_id bigint, tenant_id text, scope text, unit text, counter text,
               expected numeric, actual bigint)
LANGUAGE sql STABLE
AS $$
    WITH sums AS (
        SELECT b.budget_id, b.tenant_id, b.scope, b.unit,
               b.allocated, b.spent, b.reserved, b.debt, b.remaining,
               coalesce(sum(l.allocated_delta), 0) AS allocated_sum,
               coalesce(sum(l.spent_delta), 0)     AS spent_sum,
               coalesce(sum(l.reserved_delta), 0)  AS reserved_sum,
               coalesce(sum(l.debt_delta), 0)      AS debt_sum
        FROM cycles.budgets AS b
        LEFT JOIN cycles.ledger_entries AS l ON l.tenant_id = b.tenant_id AND l.budget_id = b.budget_id
        GROUP BY b.tenant_id, b.budget_id
    )
    SELECT s.budget_id, s.tenant_id, s.scope, s.unit, c.counter, c.expected, c.actual
    FROM sums AS s
    CROSS JOIN LATERAL (VALUES
        ('allocated', s.allocated_sum, s.allocated),
        ('spent', s.spent_sum, s.spent),
        ('reserved', s.reserved_sum, s.reserved),
        ('debt', s.debt_sum, s.debt),
        ('remaining', s.allocated_sum - s.spent_sum - s.reserved_sum - s.debt_sum, s.remaining)
    ) AS c (counter, expected, actual)
    WHERE c.expected <> c.actual
    ORDER BY s.scope COLLATE "C", s.unit, c.counter
$$;

-- cycles.verify_ledger_chain -------------------------------------------------
-- Recomputes the hash chain of every budget (or of one tenant's, or of one
-- (scope, unit)) and returns, per broken chain, its first broken link:
--   entry_hash   the row's content no longer hashes to its entry_hash (the
--                row was changed);
--   prev_hash    the row does not name the previous row's hash (a row before
--                it was removed, inserted or changed together with its hash);
--   balance      the row's running balances are not the previous row's plus
--                its deltas;
--   first_row    the chain's first row names a predecessor.
-- Chains are walked in (budget_id, created_at) order, the order they were
-- written in. An empty result means every row is as it was written, unless
-- the whole tail of a chain was rewritten consistently: the budget's live
-- counters then differ from the last row (cycles_reporting.reconciliation),
-- and chain heads exported earlier (cycles_reporting.chain_heads) no longer
-- appear.
-- Reads only; takes no locks beyond the snapshot.
-- Errors: INVALID_REQUEST (unknown unit, malformed scope).
CREATE FUNCTION cycles.verify_ledger_chain(
    p_tenant_id text DEFAULT NULL,
    p_scope     text DEFAULT NULL,
    p_unit      text DEFAULT NULL
)
RETURNS TABLE (budget_id bigint, tenant_id text, scope text, unit text, entry_id bigint,
               created_at timestamptz, problem text)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_scope text := CASE WHEN p_scope IS NOT NULL THEN cycles._canonical_scope(p_scope) END;
BEGIN
    IF p_unit IS NOT NULL THEN
        PERFORM cycles._require_unit(p_unit);
    END IF;
    RETURN QUERY
    SELECT DISTINCT ON (c.budget_id) c.budget_id, c.tenant_id, c.scope, c.unit, c.entry_id, c.created_at, c.problem
    FROM (
        SELECT w.budget_id, w.tenant_id, w.scope, w.unit, w.entry_id, w.created_at,
               CASE
                   WHEN w.position = 1 AND w.prev_hash IS NOT NULL THEN 'first_row'
                   WHEN w.position > 1 AND w.prev_hash IS DISTINCT FROM w.expected_prev THEN 'prev_hash'
                   WHEN w.entry_hash IS DISTINCT FROM cycles._ledger_entry_hash(w.entry) THEN 'entry_hash'
                   WHEN (w.allocated_after, w.spent_after, w.reserved_after, w.debt_after) IS DISTINCT FROM
                        (coalesce(w.prev_allocated, 0) + w.allocated_delta, coalesce(w.prev_spent, 0) + w.spent_delta,
                         coalesce(w.prev_reserved, 0) + w.reserved_delta, coalesce(w.prev_debt, 0) + w.debt_delta)
                       THEN 'balance'
               END AS problem
        FROM (
            SELECT l AS entry, l.budget_id, l.tenant_id, l.scope, l.unit, l.entry_id, l.created_at,
                   l.prev_hash, l.entry_hash, l.allocated_delta, l.spent_delta, l.reserved_delta, l.debt_delta,
                   l.allocated_after, l.spent_after, l.reserved_after, l.debt_after,
                   row_number() OVER chain AS position,
                   lag(l.entry_hash) OVER chain AS expected_prev,
                   lag(l.allocated_after) OVER chain AS prev_allocated,
                   lag(l.spent_after) OVER chain AS prev_spent,
                   lag(l.reserved_after) OVER chain AS prev_reserved,
                   lag(l.debt_after) OVER chain AS prev_debt
            FROM cycles.ledger_entries AS l
            WHERE (p_tenant_id IS NULL OR l.tenant_id = p_tenant_id)
              AND (v_scope IS NULL OR l.scope = v_scope)
              AND (p_unit IS NULL OR l.unit = p_unit)
            WINDOW chain AS (PARTITION BY l.budget_id ORDER BY l.created_at)
        ) AS w
    ) AS c
    WHERE c.problem IS NOT NULL
    ORDER BY c.budget_id, c.created_at;
END;
$$;
