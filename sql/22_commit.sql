-- Commit: settle a reservation with the actual amount.

-- cycles.commit: POST /v1/reservations/{reservation_id}/commit.
--
-- Releases the reservation's estimate and charges actual to the scopes that
-- were charged at reserve time. actual <= estimate: the difference goes back
-- to remaining ("released"). actual > estimate, by the reservation's overage
-- policy: REJECT refuses the commit (the reservation stays ACTIVE);
-- ALLOW_IF_AVAILABLE charges the overage up to the smallest positive
-- remaining, marks the scopes that could not cover it over limit, and never
-- creates debt; ALLOW_WITH_OVERDRAFT charges it in full, the unfunded part as
-- debt, unless that would take a scope's debt past its overdraft limit.
-- Accepted until expires_at_ms + grace_period_ms. Frozen budgets and debt do
-- not block a commit: the work has already been done.
--
-- Locks: the reservation row FOR UPDATE (serialises all settlements of it,
-- and with them same-key retries), then its budget rows FOR UPDATE in scope
-- byte order.
--
-- Errors, in precedence order: UNAUTHORIZED; FORBIDDEN (permission
-- reservations:commit); INVALID_REQUEST; NOT_FOUND; FORBIDDEN (another
-- tenant's reservation, or its scope outside the key's scope_filter);
-- IDEMPOTENCY_MISMATCH; TENANT_CLOSED;
-- RESERVATION_EXPIRED (status EXPIRED); RESERVATION_FINALIZED (COMMITTED
-- with another key, or RELEASED); UNIT_MISMATCH; RESERVATION_EXPIRED (past
-- grace); BUDGET_EXCEEDED (REJECT overage); OVERDRAFT_LIMIT_EXCEEDED.
--
-- Invariants: one COMMIT ledger row per charged budget with exactly the
-- deltas applied; committed = charged; a replay changes nothing.
CREATE FUNCTION cycles.commit(
    p_api_key text, p_reservation_id text, p_request jsonb, p_ctx jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_principal   record;
    v_locked      record;
    v_reservation cycles.reservations;
    v_key         text;
    v_amount      record;
    v_metrics     jsonb;
    v_metadata    jsonb;
    v_hash        bytea;
    v_response    jsonb;
    v_before      cycles.budgets[];
    v_after       cycles.budgets[];
    v_delta       bigint;
    v_cap         record;
    v_charged     bigint;
    v_released    bigint;
    v_actor       jsonb;
BEGIN
    v_principal := cycles._runtime_principal(p_api_key, 'reservations:commit');
    v_key := cycles._require_idempotency_key(p_request);
    v_amount := cycles._request_amount(p_request -> 'actual', 'actual');
    v_metrics := cycles._request_object(p_request, 'metrics');
    v_metadata := cycles._request_object(p_request, 'metadata');

    v_locked := cycles._lock_reservation(p_reservation_id, (v_principal.o_tenant).tenant_id);
    v_reservation := v_locked.o_reservation;
    v_reservation.scope_path :=
        cycles._require_scope_in_filter(v_principal.o_scope_filter, v_reservation.scope_path);

    v_hash := cycles._request_hash(p_request, p_reservation_id);
    v_response := cycles._idempotent_replay(v_reservation.tenant_id, 'commit:' || p_reservation_id, v_key,
                                            v_hash, false);
    IF v_response IS NOT NULL THEN
        RETURN v_response;
    END IF;

    v_locked.o_tenant := cycles._require_tenant_open(v_locked.o_tenant, false);
    IF v_reservation.status <> 'ACTIVE' THEN
        PERFORM cycles._require_settleable(v_reservation, true);
    END IF;
    IF v_amount.o_unit <> v_reservation.unit THEN
        PERFORM cycles._fail('UNIT_MISMATCH',
            format('actual is in %s but the reservation is in %s', v_amount.o_unit, v_reservation.unit),
            jsonb_build_object('scope', v_reservation.scope_path, 'requested_unit', v_amount.o_unit,
                               'expected_units', jsonb_build_array(v_reservation.unit)));
    END IF;
    PERFORM cycles._require_settleable(v_reservation, true);

    v_delta := v_amount.o_amount - v_reservation.estimate;
    IF v_delta > 0 AND v_reservation.overage_policy = 'REJECT' THEN
        PERFORM cycles._fail('BUDGET_EXCEEDED',
            format('actual %s exceeds the reserved %s and the overage policy is REJECT',
                   v_amount.o_amount, v_reservation.estimate),
            jsonb_build_object('scope', v_reservation.scope_path, 'unit', v_reservation.unit,
                               'reserved', v_reservation.estimate, 'requested', v_amount.o_amount));
    END IF;

    v_before := cycles._lock_budgets(v_reservation.budgeted_scopes, v_reservation.unit);
    v_cap := cycles._overage_cap(v_before, v_delta, v_reservation.overage_policy);
    IF (v_cap.o_violation).budget_id IS NOT NULL THEN
        PERFORM cycles._fail('OVERDRAFT_LIMIT_EXCEEDED',
            format('the overage of %s would take the debt of %s past its overdraft limit %s',
                   v_delta, (v_cap.o_violation).scope, (v_cap.o_violation).overdraft_limit),
            jsonb_build_object('scope', (v_cap.o_violation).scope, 'unit', v_reservation.unit,
                               'debt', (v_cap.o_violation).debt,
                               'overdraft_limit', (v_cap.o_violation).overdraft_limit,
                               'remaining', (v_cap.o_violation).remaining, 'requested', v_delta));
    END IF;

    v_after := cycles._apply_charge(v_before, v_reservation.estimate,
        least(v_amount.o_amount, v_reservation.estimate), v_cap.o_capped, v_delta, v_reservation.overage_policy);
    v_charged := least(v_amount.o_amount, v_reservation.estimate) + v_cap.o_capped;
    v_released := greatest(v_reservation.estimate - v_amount.o_amount, 0);

    UPDATE cycles.reservations AS r SET
        status = 'COMMITTED',
        committed = v_charged,
        released = v_released,
        committed_metadata = v_metadata,
        metrics = v_metrics,
        finalized_at_ms = cycles._now_ms()
    WHERE r.tenant_id = v_reservation.tenant_id AND r.reservation_id = p_reservation_id;

    v_actor := cycles._runtime_actor(p_ctx, v_principal.o_key_id);
    PERFORM cycles._record_changes(v_before, v_after, 'COMMIT', v_actor, p_ctx,
        p_reservation_id => p_reservation_id, p_action => v_reservation.action,
        p_subject => v_reservation.subject, p_idempotency_key => v_key,
        p_overage_policy => v_reservation.overage_policy);
    IF v_delta > 0 THEN
        PERFORM cycles._emit_event(
            v_reservation.tenant_id, 'reservation.commit_overage', 'cycles-server', v_actor,
            jsonb_build_object(
                'reservation_id', p_reservation_id, 'scope', v_reservation.scope_path,
                'unit', v_reservation.unit, 'estimated_amount', v_reservation.estimate,
                'actual_amount', v_amount.o_amount, 'overage', v_delta,
                'overage_policy', v_reservation.overage_policy,
                'debt_incurred', (SELECT coalesce(max(a.debt - b.debt), 0)
                                  FROM unnest(v_before) AS b JOIN unnest(v_after) AS a USING (budget_id))),
            v_reservation.scope_path, p_ctx ->> 'request_id', p_ctx ->> 'trace_id', p_reservation_id);
    END IF;

    v_response := jsonb_build_object(
        'status', 'COMMITTED',
        'charged', cycles._amount_json(v_reservation.unit, v_charged),
        'balances', cycles._balances_json(v_after));
    IF v_released > 0 THEN
        v_response := v_response || jsonb_build_object(
            'released', cycles._amount_json(v_reservation.unit, v_released));
    END IF;
    PERFORM cycles._idempotent_store(v_reservation.tenant_id, 'commit:' || p_reservation_id, v_key, v_hash,
                                     v_response, p_reservation_id);
    RETURN v_response;
END;
$$;
