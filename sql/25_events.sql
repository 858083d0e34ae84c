-- Direct debit events: usage that happened without a reservation.

-- cycles.create_event: POST /v1/events (the body of the 201).
--
-- Charges actual to every derived scope with a budget in its unit,
-- atomically. Debt and over-limit do not block an event; by overage policy
-- (request, else the matching policy's, else deepest budget's, else
-- tenant's): REJECT refuses an event
-- larger than some scope's remaining; ALLOW_IF_AVAILABLE caps the charge at
-- the smallest positive remaining (the response then carries charged) and
-- marks the scopes that could not cover it over limit; ALLOW_WITH_OVERDRAFT
-- charges in full, the unfunded part as debt, unless a scope's debt would
-- pass its overdraft limit.
--
-- Locks: an advisory lock on (tenant, 'event', idempotency key); then the
-- budget rows FOR UPDATE in scope byte order.
--
-- Errors, in precedence order: UNAUTHORIZED; FORBIDDEN (permission
-- reservations:commit); INVALID_REQUEST; FORBIDDEN (subject.tenant);
-- FORBIDDEN (scope outside the key's scope_filter);
-- IDEMPOTENCY_MISMATCH; TENANT_CLOSED; FORBIDDEN (tenant suspended);
-- UNIT_MISMATCH / NOT_FOUND; per scope from the top: BUDGET_FROZEN,
-- BUDGET_CLOSED; BUDGET_EXCEEDED (REJECT); OVERDRAFT_LIMIT_EXCEEDED.
--
-- Invariants: one EVENT ledger row per budget with exactly the deltas
-- applied; a replay returns the same event_id and changes nothing.
CREATE FUNCTION cycles.create_event(p_api_key text, p_request jsonb, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_principal record;
    v_tenant    cycles.tenants;
    v_key       text;
    v_action    jsonb;
    v_amount    record;
    v_scopes    record;
    v_policy    text;
    v_hash      bytea;
    v_response  jsonb;
    v_before    cycles.budgets[];
    v_after     cycles.budgets[];
    v_row       cycles.budgets;
    v_cap       record;
    v_event_id  text;
BEGIN
    v_principal := cycles._runtime_principal(p_api_key, 'reservations:commit');
    v_tenant := v_principal.o_tenant;
    v_key := cycles._require_idempotency_key(p_request);
    v_action := cycles._require_action(p_request -> 'action');
    v_amount := cycles._request_amount(p_request -> 'actual', 'actual');
    v_policy := cycles._require_overage_policy(p_request ->> 'overage_policy');
    PERFORM cycles._request_object(p_request, 'metrics');
    PERFORM cycles._request_object(p_request, 'metadata');
    PERFORM cycles._json_int(p_request, 'client_time_ms', 0, 9223372036854775807, NULL);
    v_scopes := cycles._derive_scopes(p_request -> 'subject', v_tenant.tenant_id);
    v_scopes.o_scope_path :=
        cycles._require_scope_in_filter(v_principal.o_scope_filter, v_scopes.o_scope_path);

    v_hash := cycles._request_hash(p_request);
    v_response := cycles._idempotent_replay(v_tenant.tenant_id, 'event', v_key, v_hash, true);
    IF v_response IS NOT NULL THEN
        RETURN v_response;
    END IF;

    v_tenant := cycles._require_tenant_open(v_tenant, true);
    v_before := cycles._lock_budgets(v_scopes.o_affected_scopes, v_amount.o_unit);
    IF v_before IS NULL THEN
        PERFORM cycles._fail_no_budget(v_scopes.o_affected_scopes, v_amount.o_unit, v_scopes.o_scope_path);
    END IF;
    FOREACH v_row IN ARRAY v_before LOOP
        IF v_row.status IN ('FROZEN', 'CLOSED') THEN
            PERFORM cycles._fail_denial(CASE v_row.status WHEN 'FROZEN' THEN 'BUDGET_FROZEN' ELSE 'BUDGET_CLOSED' END,
                                        v_row, v_amount.o_amount);
        END IF;
    END LOOP;
    v_policy := coalesce(
        v_policy,
        (cycles._match_policy(v_tenant.tenant_id, v_scopes.o_scope_path)).commit_overage_policy,
        cycles._deepest_overage_policy(v_before),
        v_tenant.default_commit_overage_policy,
        'ALLOW_IF_AVAILABLE');
    IF v_policy = 'REJECT' THEN
        SELECT b.* INTO v_row FROM unnest(v_before) AS b
        WHERE b.remaining < v_amount.o_amount ORDER BY b.scope COLLATE "C" LIMIT 1;
        IF v_row.budget_id IS NOT NULL THEN
            PERFORM cycles._fail_denial('BUDGET_EXCEEDED', v_row, v_amount.o_amount);
        END IF;
    END IF;
    v_cap := cycles._overage_cap(v_before, v_amount.o_amount, v_policy);
    IF (v_cap.o_violation).budget_id IS NOT NULL THEN
        PERFORM cycles._fail('OVERDRAFT_LIMIT_EXCEEDED',
            format('an event of %s would take the debt of %s past its overdraft limit %s',
                   v_amount.o_amount, (v_cap.o_violation).scope, (v_cap.o_violation).overdraft_limit),
            jsonb_build_object('scope', (v_cap.o_violation).scope, 'unit', v_amount.o_unit,
                               'debt', (v_cap.o_violation).debt,
                               'overdraft_limit', (v_cap.o_violation).overdraft_limit,
                               'remaining', (v_cap.o_violation).remaining, 'requested', v_amount.o_amount));
    END IF;

    v_after := cycles._apply_charge(v_before, 0, 0, v_cap.o_capped, v_amount.o_amount, v_policy);
    v_event_id := cycles._new_id('evt_', 32);
    PERFORM cycles._record_changes(v_before, v_after, 'EVENT', cycles._runtime_actor(p_ctx, v_principal.o_key_id),
        p_ctx, p_event_id => v_event_id, p_action => v_action, p_subject => p_request -> 'subject',
        p_idempotency_key => v_key, p_overage_policy => v_policy);

    v_response := jsonb_build_object(
        'status', 'APPLIED',
        'event_id', v_event_id,
        'balances', cycles._balances_json(v_after));
    IF v_cap.o_capped < v_amount.o_amount THEN
        v_response := v_response || jsonb_build_object(
            'charged', cycles._amount_json(v_amount.o_unit, v_cap.o_capped));
    END IF;
    PERFORM cycles._idempotent_store(v_tenant.tenant_id, 'event', v_key, v_hash, v_response);
    RETURN v_response;
END;
$$;
