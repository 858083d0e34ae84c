-- The expiry sweeper.

-- cycles.expire_due: expires up to p_batch_size ACTIVE reservations whose
-- deadline (expires_at_ms + grace_period_ms) has passed, set-based.
--
-- Each one's estimate goes back to the scopes it was taken from (one EXPIRE
-- ledger row per reservation and budget, actor system), its status becomes
-- EXPIRED, and one reservation.expired event is written (source
-- expiry-sweeper). Returns the number of reservations expired. (Idempotency
-- records are pruned by the maintenance jobs: cycles.prune_idempotency_records.)
--
-- Locks: a transaction-scoped advisory lock (try only: a concurrent sweeper
-- returns 0 at once); the due reservation rows FOR UPDATE SKIP LOCKED (a
-- reservation being settled right now is left for the next pass); then their
-- budget rows FOR UPDATE in (scope byte order, unit), the global lock order.
-- Settlements lock their reservation before its budgets too, so no cycle.
--
-- Errors: INVALID_REQUEST (batch size outside 1..100000).
--
-- Invariants: reserved never goes negative; for every budget the ledger sums
-- equal the counters.
CREATE FUNCTION cycles.expire_due(p_batch_size integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v_now_ms  bigint := cycles._now_ms();
    v_ids     text[];
    v_count   integer;
    v_actor   jsonb := jsonb_build_object('type', 'system');
BEGIN
    IF p_batch_size IS NULL OR p_batch_size NOT BETWEEN 1 AND 100000 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'batch size must be between 1 and 100000');
    END IF;
    IF NOT pg_try_advisory_xact_lock(hashtextextended('cycles.expire_due', 0)) THEN
        RETURN 0;
    END IF;

    SELECT array_agg(due.reservation_id) INTO v_ids
    FROM (
        SELECT r.reservation_id
        FROM cycles.reservations AS r
        WHERE r.status = 'ACTIVE' AND r.expires_at_ms + r.grace_period_ms < v_now_ms
        ORDER BY r.expires_at_ms + r.grace_period_ms
        LIMIT p_batch_size
        FOR UPDATE SKIP LOCKED
    ) AS due;
    v_count := coalesce(cardinality(v_ids), 0);

    IF v_count > 0 THEN
        PERFORM 1
        FROM cycles.budgets AS b
        WHERE (b.tenant_id, b.scope, b.unit) IN (
            SELECT r.tenant_id, s.scope, r.unit
            FROM cycles.reservations AS r
            CROSS JOIN LATERAL unnest(r.budgeted_scopes) AS s(scope)
            WHERE r.reservation_id = ANY (v_ids))
        ORDER BY b.scope COLLATE "C", b.unit
        FOR UPDATE OF b;

        UPDATE cycles.budgets AS b SET
            reserved = b.reserved - held.amount,
            remaining = b.remaining + held.amount,
            updated_at = clock_timestamp()
        FROM (
            SELECT r.tenant_id, s.scope, r.unit, sum(r.estimate)::bigint AS amount
            FROM cycles.reservations AS r
            CROSS JOIN LATERAL unnest(r.budgeted_scopes) AS s(scope)
            WHERE r.reservation_id = ANY (v_ids)
            GROUP BY r.tenant_id, s.scope, r.unit
        ) AS held
        WHERE b.tenant_id = held.tenant_id AND b.scope = held.scope AND b.unit = held.unit AND held.amount <> 0;

        PERFORM cycles._append_ledger_rows(ARRAY(
            SELECT cycles._ledger_row(
                b.budget_id, b.tenant_id, b.scope, b.unit, 'EXPIRE', v_actor,
                p_reserved_delta => -r.estimate,
                p_reservation_id => r.reservation_id,
                p_action => r.action,
                p_subject => r.subject,
                p_idempotency_key => r.idempotency_key,
                p_reason => 'expired')
            FROM cycles.reservations AS r
            CROSS JOIN LATERAL unnest(r.budgeted_scopes) AS s(scope)
            JOIN cycles.budgets AS b ON b.tenant_id = r.tenant_id AND b.scope = s.scope AND b.unit = r.unit
            WHERE r.reservation_id = ANY (v_ids) AND r.estimate <> 0
            ORDER BY r.reservation_id, b.scope COLLATE "C"));

        UPDATE cycles.reservations AS r SET status = 'EXPIRED'
        WHERE r.reservation_id = ANY (v_ids);

        PERFORM cycles._emit_event(
            r.tenant_id, 'reservation.expired', 'expiry-sweeper', v_actor,
            jsonb_build_object(
                'reservation_id', r.reservation_id,
                'scope', r.scope_path,
                'unit', r.unit,
                'estimated_amount', r.estimate,
                'created_at', to_char(cycles._ms_to_timestamptz(r.created_at_ms) AT TIME ZONE 'UTC',
                                      'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                'expired_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                'ttl_ms', r.ttl_ms,
                'extensions_used', r.extension_count),
            r.scope_path, r.request_id, r.trace_id, r.reservation_id)
        FROM cycles.reservations AS r
        WHERE r.reservation_id = ANY (v_ids)
        ORDER BY r.expires_at_ms + r.grace_period_ms, r.reservation_id;
    END IF;

    RETURN v_count;
END;
$$;
