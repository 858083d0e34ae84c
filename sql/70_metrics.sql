-- Operational state for monitoring.

-- cycles.metrics_snapshot: the figures GET /metrics reports as gauges, read
-- with one statement, each from an index or a small table: live reservations
-- and those past expiry plus grace not yet swept (the sweeper's partial
-- index), budgets over their limit or in debt, open webhook deliveries and
-- the age of the oldest (a partial index), and failed ones (bounded by
-- delivery retention). Settled reservations are not counted: that table only
-- grows. A function, so that a server connecting as cycles_app (EXECUTE
-- only, no table access) can report them.
-- Locks: none (plain reads). Errors: none.
CREATE FUNCTION cycles.metrics_snapshot()
RETURNS TABLE (
    o_reservations_active  bigint,
    o_reservations_overdue bigint,
    o_budgets_over_limit   bigint,
    o_budgets_in_debt      bigint,
    o_deliveries_pending   bigint,
    o_deliveries_retrying  bigint,
    o_delivery_lag_s       double precision,
    o_deliveries_failed    bigint
)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_now_ms bigint := cycles._now_ms();
BEGIN
    RETURN QUERY
    SELECT
        (SELECT count(*) FROM cycles.reservations AS r WHERE r.status = 'ACTIVE'),
        (SELECT count(*) FROM cycles.reservations AS r
         WHERE r.status = 'ACTIVE' AND r.expires_at_ms + r.grace_period_ms < v_now_ms),
        (SELECT count(*) FROM cycles.budgets AS b WHERE b.is_over_limit),
        (SELECT count(*) FROM cycles.budgets AS b WHERE b.debt > 0),
        o.pending, o.retrying, o.lag_s,
        (SELECT count(*) FROM cycles.webhook_deliveries AS d WHERE d.status = 'FAILED')
    FROM (
        SELECT count(*) FILTER (WHERE d.status = 'PENDING') AS pending,
               count(*) FILTER (WHERE d.status = 'RETRYING') AS retrying,
               coalesce(extract(epoch FROM clock_timestamp() - min(d.created_at)), 0)::float8 AS lag_s
        FROM cycles.webhook_deliveries AS d
        WHERE d.status IN ('PENDING', 'RETRYING')
    ) AS o;
END;
$$;
