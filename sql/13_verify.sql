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
        LEFT JOIN cycles.ledger_entries AS l ON l.budget_id = b.budget_id
        GROUP BY b.budget_id
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
