-- Budgets: create, fund (credit, debit, reset, reset spent, repay debt),
-- freeze, unfreeze, close, update, read and list.
--
-- A budget is one (scope, unit) ledger. Its counters move only together with
-- one ledger row carrying exactly the deltas applied, so the sums of the
-- ledger always equal the counters (cycles.verify_ledger). Every function
-- that changes a budget locks the owning tenant FOR SHARE first (a concurrent
-- tenant close waits, or the change sees TENANT_CLOSED), then the budget row
-- FOR UPDATE.
--
-- Arithmetic is done in numeric and range-checked before it is stored: an
-- amount that would leave bigint is INVALID_REQUEST, never an overflow error.
--
-- is_over_limit: the runtime raises it when debt passes overdraft_limit or
-- when an ALLOW_IF_AVAILABLE commit could not cover its overage; it is sticky
-- for the runtime. Every admin funding operation and update is the operator's
-- reconciliation and recomputes it as debt > overdraft_limit. A change of the
-- flag emits budget.over_limit_entered / budget.over_limit_exited in addition
-- to the operation's own event.

-- Helpers ----------------------------------------------------------------------

-- The spec's Amount / SignedAmount object.
CREATE FUNCTION cycles._amount_json(p_unit text, p_amount bigint) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN jsonb_build_object('unit', p_unit, 'amount', p_amount);
END;
$$;

-- p_value as bigint, or INVALID_REQUEST naming p_what when it does not fit.
CREATE FUNCTION cycles._checked_bigint(p_value numeric, p_what text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_value NOT BETWEEN -9223372036854775808 AND 9223372036854775807 THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('%s would be %s, outside the 64-bit integer range', p_what, p_value));
    END IF;
    RETURN p_value::bigint;
END;
$$;

-- The spec's BudgetLedger object, nulls omitted. ledger_id is the budget id.
CREATE FUNCTION cycles._budget_json(p_budget cycles.budgets) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'ledger_id', p_budget.budget_id::text,
        'tenant_id', p_budget.tenant_id,
        'scope', p_budget.scope,
        'scope_path', p_budget.scope,
        'unit', p_budget.unit,
        'allocated', cycles._amount_json(p_budget.unit, p_budget.allocated),
        'remaining', cycles._amount_json(p_budget.unit, p_budget.remaining),
        'reserved', cycles._amount_json(p_budget.unit, p_budget.reserved),
        'spent', cycles._amount_json(p_budget.unit, p_budget.spent),
        'debt', cycles._amount_json(p_budget.unit, p_budget.debt),
        'overdraft_limit', cycles._amount_json(p_budget.unit, p_budget.overdraft_limit),
        'is_over_limit', p_budget.is_over_limit,
        'commit_overage_policy', p_budget.commit_overage_policy,
        'status', p_budget.status,
        'created_at', cycles._iso8601(p_budget.created_at),
        'updated_at', cycles._iso8601(p_budget.updated_at)));
END;
$$;

-- The previous_state / new_state snapshot of EventDataBudgetLifecycle.
CREATE FUNCTION cycles._budget_state(p_budget cycles.budgets) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN jsonb_build_object(
        'allocated', p_budget.allocated, 'remaining', p_budget.remaining, 'debt', p_budget.debt,
        'spent', p_budget.spent, 'reserved', p_budget.reserved, 'status', p_budget.status);
END;
$$;

-- A budget lifecycle event (EventDataBudgetLifecycle), plus the over-limit
-- event when the change flipped is_over_limit.
CREATE FUNCTION cycles._budget_event(
    p_event_type text,
    p_operation  text,
    p_before     cycles.budgets,
    p_after      cycles.budgets,
    p_reason     text,
    p_ctx        jsonb,
    p_extra      jsonb DEFAULT '{}'
) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM cycles._emit_event(
        p_tenant_id => p_after.tenant_id, p_event_type => p_event_type, p_source => 'cycles-admin',
        p_actor => cycles._actor(p_ctx),
        p_data => jsonb_build_object(
            'ledger_id', p_after.budget_id::text, 'scope', p_after.scope, 'unit', p_after.unit,
            'operation', p_operation,
            'previous_state', CASE WHEN p_before.budget_id IS NOT NULL THEN cycles._budget_state(p_before) END,
            'new_state', cycles._budget_state(p_after),
            'reason', p_reason) || coalesce(p_extra, '{}'::jsonb),
        p_scope => p_after.scope, p_request_id => p_ctx ->> 'request_id', p_trace_id => p_ctx ->> 'trace_id',
        p_correlation_id => p_ctx ->> 'correlation_id');
    IF p_before.budget_id IS NOT NULL AND p_before.is_over_limit <> p_after.is_over_limit THEN
        PERFORM cycles._emit_event(
            p_tenant_id => p_after.tenant_id,
            p_event_type => CASE WHEN p_after.is_over_limit THEN 'budget.over_limit_entered'
                                 ELSE 'budget.over_limit_exited' END,
            p_source => 'cycles-admin', p_actor => cycles._actor(p_ctx),
            p_data => jsonb_build_object(
                'scope', p_after.scope, 'unit', p_after.unit, 'debt', p_after.debt,
                'overdraft_limit', p_after.overdraft_limit, 'is_over_limit', p_after.is_over_limit,
                'debt_utilization', CASE WHEN p_after.overdraft_limit > 0
                                         THEN round(p_after.debt::numeric / p_after.overdraft_limit, 6) END),
            p_scope => p_after.scope, p_request_id => p_ctx ->> 'request_id', p_trace_id => p_ctx ->> 'trace_id');
    END IF;
END;
$$;

-- The budget at (scope, unit), validated, its tenant locked FOR SHARE and
-- itself locked FOR UPDATE, for an admin change.
-- Errors, in precedence order: INVALID_REQUEST (malformed scope, unknown
-- unit), TENANT_NOT_FOUND, TENANT_CLOSED, BUDGET_NOT_FOUND.
CREATE FUNCTION cycles._lock_budget_for_change(p_scope text, p_unit text) RETURNS cycles.budgets
LANGUAGE plpgsql
AS $$
DECLARE
    v_scope  text := cycles._canonical_scope(p_scope);
    v_unit   text := cycles._require_unit(p_unit);
    v_budget cycles.budgets;
BEGIN
    PERFORM cycles._lock_tenant_for_child_change(cycles._scope_tenant(v_scope));
    SELECT b.* INTO v_budget FROM cycles.budgets AS b WHERE b.tenant_id = cycles._scope_tenant(v_scope) AND b.scope = v_scope AND b.unit = v_unit
        FOR UPDATE;
    IF v_budget.budget_id IS NULL THEN
        PERFORM cycles._fail('BUDGET_NOT_FOUND', format('no %s budget at scope %L', v_unit, v_scope),
            jsonb_build_object('scope', v_scope, 'unit', v_unit));
    END IF;
    RETURN v_budget;
END;
$$;

CREATE FUNCTION cycles._require_budget_open(p_budget cycles.budgets, p_allow_frozen boolean) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_budget.status = 'CLOSED' THEN
        PERFORM cycles._fail('BUDGET_CLOSED', format('budget %s %s is closed', p_budget.scope, p_budget.unit),
            jsonb_build_object('scope', p_budget.scope, 'unit', p_budget.unit));
    END IF;
    IF p_budget.status = 'FROZEN' AND NOT p_allow_frozen THEN
        PERFORM cycles._fail('BUDGET_FROZEN', format('budget %s %s is frozen', p_budget.scope, p_budget.unit),
            jsonb_build_object('scope', p_budget.scope, 'unit', p_budget.unit));
    END IF;
END;
$$;

-- cycles.create_budget -------------------------------------------------------
-- Creates the (scope, unit) budget with remaining = allocated and nothing
-- reserved, spent or owed. The scope is canonicalised; its tenant is the
-- owner and must be ACTIVE. commit_overage_policy NULL means "inherit from
-- the tenant". Options (p_options): metadata (object); tenant_id (the
-- owner the admin names; must be the scope's tenant; a tenant key may not
-- send it); rollover_policy (only NONE: periods are not implemented).
-- Authorization: the admin, or a tenant key with budgets:write or
-- admin:budgets:write whose tenant owns the scope and whose scope_filter
-- covers it (FORBIDDEN otherwise).
-- Locks: the tenant row FOR SHARE; the new budget row (ON CONFLICT waits for
-- a concurrent insert of the same scope and unit).
-- Errors, in precedence order:
--   INSUFFICIENT_PERMISSIONS the tenant key lacks the permission
--   INVALID_REQUEST    malformed scope, unknown unit, negative or missing
--                      amount, unknown policy, unknown option, tenant_id
--                      other than the scope's
--   FORBIDDEN          a tenant key outside its tenant or scope_filter
--   TENANT_NOT_FOUND   the scope's tenant does not exist
--   TENANT_CLOSED      the tenant is closed
--   TENANT_SUSPENDED   the tenant is suspended
--   DUPLICATE_RESOURCE a budget exists for this scope and unit
-- Invariants: one CREATE ledger row with allocated_delta = allocated;
-- emits budget.created; one audit row (createBudget).
CREATE FUNCTION cycles.create_budget(
    p_scope                 text,
    p_unit                  text,
    p_allocated             bigint,
    p_overdraft_limit       bigint DEFAULT 0,
    p_commit_overage_policy text DEFAULT NULL,
    p_options               jsonb DEFAULT '{}',
    p_ctx                   jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx      jsonb := cycles._admin_principal(p_ctx, ARRAY['budgets:write', 'admin:budgets:write']);
    v_scope    text := cycles._canonical_scope(p_scope);
    v_unit     text := cycles._require_unit(p_unit);
    v_options  jsonb;
    v_metadata jsonb;
    v_tenant   cycles.tenants;
    v_budget   cycles.budgets;
    v_none     cycles.budgets;
BEGIN
    PERFORM cycles._require_amount(p_allocated, 'allocated');
    PERFORM cycles._require_amount(p_overdraft_limit, 'overdraft_limit');
    PERFORM cycles._require_overage_policy(p_commit_overage_policy);
    v_options := cycles._require_known_options(p_options, ARRAY['metadata', 'tenant_id', 'rollover_policy'],
                                               'budget option');
    v_metadata := coalesce(nullif(v_options -> 'metadata', 'null'::jsonb), '{}'::jsonb);
    IF jsonb_typeof(v_metadata) <> 'object' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'metadata must be a JSON object');
    END IF;
    IF coalesce(cycles._text_option(v_options, 'rollover_policy', 32), 'NONE') <> 'NONE' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'rollover_policy: only NONE is supported');
    END IF;
    IF v_options ? 'tenant_id' AND v_ctx ? 'principal_tenant_id' THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            'tenant_id must not be sent with an API key: the key''s tenant owns the budget');
    END IF;
    IF cycles._text_option(v_options, 'tenant_id', 64) IS DISTINCT FROM cycles._scope_tenant(v_scope)
       AND v_options ? 'tenant_id' THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('scope %L does not belong to tenant %L', v_scope, v_options ->> 'tenant_id'),
            jsonb_build_object('scope', v_scope, 'tenant_id', v_options ->> 'tenant_id'));
    END IF;
    PERFORM cycles._admin_require_scope(v_ctx, v_scope);

    v_tenant := cycles._lock_tenant_for_child_change(cycles._scope_tenant(v_scope));
    IF v_tenant.status = 'SUSPENDED' THEN
        PERFORM cycles._fail('TENANT_SUSPENDED', format('tenant %L is suspended', v_tenant.tenant_id),
            jsonb_build_object('tenant_id', v_tenant.tenant_id));
    END IF;

    INSERT INTO cycles.budgets AS b (
        tenant_id, scope, unit, allocated, remaining, overdraft_limit, commit_overage_policy, metadata)
    VALUES (
        v_tenant.tenant_id, v_scope, v_unit, p_allocated, p_allocated, p_overdraft_limit,
        p_commit_overage_policy, v_metadata)
    ON CONFLICT ON CONSTRAINT budgets_scope_unit_key DO NOTHING
    RETURNING b.* INTO v_budget;
    IF v_budget.budget_id IS NULL THEN
        PERFORM cycles._fail('DUPLICATE_RESOURCE', format('a %s budget already exists at scope %L', v_unit, v_scope),
            jsonb_build_object('scope', v_scope, 'unit', v_unit));
    END IF;

    PERFORM cycles._append_ledger(
        p_budget_id => v_budget.budget_id, p_tenant_id => v_budget.tenant_id, p_scope => v_scope,
        p_unit => v_unit, p_operation => 'CREATE', p_actor => cycles._actor(v_ctx),
        p_allocated_delta => p_allocated,
        p_request_id => v_ctx ->> 'request_id', p_trace_id => v_ctx ->> 'trace_id');
    PERFORM cycles._budget_event('budget.created', 'CREATE', v_none, v_budget, NULL, v_ctx);
    PERFORM cycles._audit(v_ctx, 'createBudget', 'budget', v_budget.budget_id::text, 201, v_budget.tenant_id,
        p_amount => cycles._amount_json(v_unit, p_allocated),
        p_metadata => jsonb_build_object('scope', v_scope, 'unit', v_unit));
    RETURN cycles._budget_json(v_budget);
END;
$$;

-- cycles.fund_budget ---------------------------------------------------------
-- Changes a budget's allocation outside the reservation flow (a = p_amount):
--   CREDIT      owed debt is repaid first (the protocol: "when budget is added
--               to a scope with debt > 0, debt MUST be repaid first, then
--               remaining funds added"): debt -= min(debt, a), allocated +=
--               the rest; remaining += a either way. Event budget.funded.
--   DEBIT       allocated -= a, remaining -= a; refused with BUDGET_EXCEEDED
--               when remaining < a (nothing changes). Event budget.debited.
--   RESET       allocated = a; spent, reserved, debt kept; remaining follows
--               and may go negative. Event budget.reset.
--   RESET_SPENT allocated = a, spent = p_spent (default 0); reserved and debt
--               kept; remaining may go negative. Event budget.reset_spent
--               with spent_override_provided. p_spent is ignored otherwise.
--   REPAY_DEBT  debt -= min(debt, a), any excess is credited to allocated;
--               remaining += a. Event budget.debt_repaid.
-- CREDIT, DEBIT and REPAY_DEBT need a > 0; RESET and RESET_SPENT take a >= 0.
-- is_over_limit is recomputed as debt > overdraft_limit.
-- Idempotent on (tenant, 'fund_budget', p_idempotency_key) for 24 hours: a
-- replay of the same request returns the stored response (even if the
-- budget changed since); another request with the same key is
-- IDEMPOTENCY_MISMATCH.
-- Returns BudgetFundingResponse {operation, previous_/new_ allocated,
-- remaining, debt, spent (Amount objects), timestamp}.
-- Locks, in order: a transaction advisory lock on (tenant, key); the tenant
-- row FOR SHARE; the budget row FOR UPDATE.
-- Errors, in precedence order:
--   INVALID_REQUEST      malformed scope, unknown unit or operation, bad
--                        amount/spent, reason > 512, key missing or > 256
--   IDEMPOTENCY_MISMATCH the key was used for a different request
--   TENANT_NOT_FOUND     the scope's tenant does not exist
--   TENANT_CLOSED        the tenant is closed
--   BUDGET_NOT_FOUND     no budget at (scope, unit)
--   BUDGET_CLOSED, BUDGET_FROZEN
--   BUDGET_EXCEEDED      DEBIT larger than remaining
--   INVALID_REQUEST      a counter would leave the 64-bit range
-- Invariants: exactly one ledger row with the deltas applied;
-- remaining = allocated - spent - reserved - debt.
-- This is the body behind cycles.fund_budget and the budget bulk action
-- (no authorization, no audit row); a NULL p_idempotency_key (bulk rows,
-- whose idempotency is the bulk call's) skips the idempotency record.
CREATE FUNCTION cycles._fund_budget(
    p_scope           text,
    p_unit            text,
    p_operation       text,
    p_amount          bigint,
    p_idempotency_key text,
    p_spent           bigint,
    p_reason          text,
    p_ctx             jsonb
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_scope     text := cycles._canonical_scope(p_scope);
    v_unit      text := cycles._require_unit(p_unit);
    v_tenant_id text;
    v_spent_arg bigint := CASE WHEN p_operation = 'RESET_SPENT' THEN p_spent END;
    v_hash      bytea;
    v_record    cycles.idempotency_records;
    v_before    cycles.budgets;
    v_after     cycles.budgets;
    v_repaid    bigint;
    v_allocated bigint;
    v_spent     bigint;
    v_debt      bigint;
    v_remaining bigint;
    v_response  jsonb;
    v_event     text;
BEGIN
    IF p_operation IS NULL OR p_operation NOT IN ('CREDIT', 'DEBIT', 'RESET', 'RESET_SPENT', 'REPAY_DEBT') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown funding operation %L: expected CREDIT, DEBIT, RESET, RESET_SPENT or REPAY_DEBT',
                   p_operation));
    END IF;
    PERFORM cycles._require_amount(p_amount, 'amount');
    IF p_amount = 0 AND p_operation IN ('CREDIT', 'DEBIT', 'REPAY_DEBT') THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('amount must be positive for %s', p_operation));
    END IF;
    IF v_spent_arg IS NOT NULL THEN
        PERFORM cycles._require_amount(v_spent_arg, 'spent');
    END IF;
    IF char_length(p_reason) > 512 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'reason must be at most 512 characters');
    END IF;
    IF char_length(p_idempotency_key) NOT BETWEEN 1 AND 256 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'idempotency_key must be 1 to 256 characters long');
    END IF;

    v_tenant_id := cycles._scope_tenant(v_scope);
    v_hash := sha256(convert_to(jsonb_build_object(
        'scope', v_scope, 'unit', v_unit, 'operation', p_operation, 'amount', p_amount,
        'spent', v_spent_arg, 'reason', p_reason)::text, 'UTF8'));

    -- Serialise requests carrying the same key, then replay or refuse.
    IF p_idempotency_key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(v_tenant_id || ':fund_budget:' || p_idempotency_key, 0));
        SELECT r.* INTO v_record FROM cycles.idempotency_records AS r
        WHERE r.tenant_id = v_tenant_id AND r.endpoint = 'fund_budget' AND r.idempotency_key = p_idempotency_key;
        IF v_record.tenant_id IS NOT NULL AND v_record.expires_at > clock_timestamp() THEN
            IF v_record.request_hash <> v_hash THEN
                PERFORM cycles._fail('IDEMPOTENCY_MISMATCH',
                    format('idempotency_key %L was already used for a different funding request', p_idempotency_key),
                    jsonb_build_object('idempotency_key', p_idempotency_key));
            END IF;
            RETURN v_record.response;
        END IF;
    END IF;

    v_before := cycles._lock_budget_for_change(v_scope, v_unit);
    PERFORM cycles._require_budget_open(v_before, false);

    v_allocated := v_before.allocated;
    v_spent := v_before.spent;
    v_debt := v_before.debt;
    CASE p_operation
        WHEN 'CREDIT', 'REPAY_DEBT' THEN
            v_repaid := least(v_before.debt, p_amount);
            v_debt := v_before.debt - v_repaid;
            v_allocated := cycles._checked_bigint(v_before.allocated::numeric + (p_amount - v_repaid), 'allocated');
        WHEN 'DEBIT' THEN
            IF v_before.remaining < p_amount THEN
                PERFORM cycles._fail('BUDGET_EXCEEDED',
                    format('cannot debit %s from %s %s: only %s remaining', p_amount, v_scope, v_unit,
                           v_before.remaining),
                    jsonb_build_object('scope', v_scope, 'unit', v_unit, 'remaining', v_before.remaining,
                                       'requested', p_amount));
            END IF;
            v_allocated := v_before.allocated - p_amount;
        WHEN 'RESET' THEN
            v_allocated := p_amount;
        WHEN 'RESET_SPENT' THEN
            v_allocated := p_amount;
            v_spent := coalesce(v_spent_arg, 0);
    END CASE;
    v_remaining := cycles._checked_bigint(
        v_allocated::numeric - v_spent - v_before.reserved - v_debt, 'remaining');

    UPDATE cycles.budgets AS b
    SET allocated = v_allocated, spent = v_spent, debt = v_debt, remaining = v_remaining,
        is_over_limit = v_debt > b.overdraft_limit, updated_at = clock_timestamp()
    WHERE b.tenant_id = v_before.tenant_id AND b.budget_id = v_before.budget_id
    RETURNING b.* INTO v_after;

    PERFORM cycles._append_ledger(
        p_budget_id => v_after.budget_id, p_tenant_id => v_after.tenant_id, p_scope => v_scope,
        p_unit => v_unit, p_operation => p_operation, p_actor => cycles._actor(p_ctx),
        p_allocated_delta => v_after.allocated - v_before.allocated,
        p_spent_delta => v_after.spent - v_before.spent,
        p_debt_delta => v_after.debt - v_before.debt,
        p_idempotency_key => p_idempotency_key, p_reason => p_reason,
        p_request_id => p_ctx ->> 'request_id', p_trace_id => p_ctx ->> 'trace_id');
    v_event := CASE p_operation
        WHEN 'CREDIT' THEN 'budget.funded'
        WHEN 'DEBIT' THEN 'budget.debited'
        WHEN 'RESET' THEN 'budget.reset'
        WHEN 'RESET_SPENT' THEN 'budget.reset_spent'
        WHEN 'REPAY_DEBT' THEN 'budget.debt_repaid'
    END;
    PERFORM cycles._budget_event(v_event, p_operation, v_before, v_after, p_reason, p_ctx,
        CASE WHEN p_operation = 'RESET_SPENT'
             THEN jsonb_build_object('spent_override_provided', v_spent_arg IS NOT NULL) END);

    v_response := jsonb_build_object(
        'operation', p_operation,
        'previous_allocated', cycles._amount_json(v_unit, v_before.allocated),
        'new_allocated', cycles._amount_json(v_unit, v_after.allocated),
        'previous_remaining', cycles._amount_json(v_unit, v_before.remaining),
        'new_remaining', cycles._amount_json(v_unit, v_after.remaining),
        'previous_debt', cycles._amount_json(v_unit, v_before.debt),
        'new_debt', cycles._amount_json(v_unit, v_after.debt),
        'previous_spent', cycles._amount_json(v_unit, v_before.spent),
        'new_spent', cycles._amount_json(v_unit, v_after.spent),
        'timestamp', cycles._iso8601(v_after.updated_at));

    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO cycles.idempotency_records AS r (
            tenant_id, endpoint, idempotency_key, request_hash, response, created_at, expires_at)
        VALUES (
            v_tenant_id, 'fund_budget', p_idempotency_key, v_hash, v_response, clock_timestamp(),
            clock_timestamp() + interval '24 hours')
        ON CONFLICT ON CONSTRAINT idempotency_records_pkey DO UPDATE
            SET request_hash = excluded.request_hash, response = excluded.response,
                created_at = excluded.created_at, expires_at = excluded.expires_at;
    END IF;
    RETURN v_response;
END;
$$;

-- cycles.freeze_budget / cycles.unfreeze_budget ------------------------------
-- ACTIVE -> FROZEN (no reservations, commits of new work, or funding) and
-- back. Property updates stay allowed while frozen. Returns BudgetLedger.
-- Locks: the tenant row FOR SHARE, then the budget row FOR UPDATE.
-- Errors, in precedence order: INVALID_REQUEST (malformed scope, unknown
-- unit, reason > 512), TENANT_NOT_FOUND, TENANT_CLOSED, BUDGET_NOT_FOUND,
-- INVALID_TRANSITION (already in the target state, or CLOSED).
-- Authorization (public functions): the admin, or a tenant key with
-- admin:budgets:write on a scope of its tenant within its scope_filter
-- (INSUFFICIENT_PERMISSIONS, then FORBIDDEN, before anything else).
-- Invariants: no counter changes, so no ledger row; emits budget.frozen /
-- budget.unfrozen; one audit row (freezeBudget / unfreezeBudget).
CREATE FUNCTION cycles._set_budget_frozen(
    p_scope text, p_unit text, p_frozen boolean, p_reason text, p_ctx jsonb
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_from   text := CASE WHEN p_frozen THEN 'ACTIVE' ELSE 'FROZEN' END;
    v_to     text := CASE WHEN p_frozen THEN 'FROZEN' ELSE 'ACTIVE' END;
    v_before cycles.budgets;
    v_after  cycles.budgets;
BEGIN
    IF char_length(p_reason) > 512 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'reason must be at most 512 characters');
    END IF;
    v_before := cycles._lock_budget_for_change(p_scope, p_unit);
    IF v_before.status <> v_from THEN
        PERFORM cycles._fail('INVALID_TRANSITION',
            format('budget %s %s is %s: only an %s budget can become %s', v_before.scope, v_before.unit,
                   v_before.status, v_from, v_to),
            jsonb_build_object('scope', v_before.scope, 'unit', v_before.unit, 'status', v_before.status));
    END IF;
    UPDATE cycles.budgets AS b
    SET status = v_to, updated_at = clock_timestamp()
    WHERE b.tenant_id = v_before.tenant_id AND b.budget_id = v_before.budget_id
    RETURNING b.* INTO v_after;
    PERFORM cycles._budget_event(CASE WHEN p_frozen THEN 'budget.frozen' ELSE 'budget.unfrozen' END,
        'STATUS_CHANGE', v_before, v_after, p_reason, p_ctx);
    RETURN cycles._budget_json(v_after);
END;
$$;

CREATE FUNCTION cycles.freeze_budget(
    p_scope text, p_unit text, p_reason text DEFAULT NULL, p_ctx jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, ARRAY['admin:budgets:write']);
    v_result jsonb;
BEGIN
    PERFORM cycles._admin_require_scope(v_ctx, cycles._canonical_scope(p_scope));
    v_result := cycles._set_budget_frozen(p_scope, p_unit, true, p_reason, v_ctx);
    PERFORM cycles._audit(v_ctx, 'freezeBudget', 'budget', v_result ->> 'ledger_id', 200, v_result ->> 'tenant_id',
        p_metadata => jsonb_build_object('scope', v_result ->> 'scope', 'unit', v_result ->> 'unit',
                                         'reason', p_reason));
    RETURN v_result;
END;
$$;

CREATE FUNCTION cycles.unfreeze_budget(
    p_scope text, p_unit text, p_reason text DEFAULT NULL, p_ctx jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, ARRAY['admin:budgets:write']);
    v_result jsonb;
BEGIN
    PERFORM cycles._admin_require_scope(v_ctx, cycles._canonical_scope(p_scope));
    v_result := cycles._set_budget_frozen(p_scope, p_unit, false, p_reason, v_ctx);
    PERFORM cycles._audit(v_ctx, 'unfreezeBudget', 'budget', v_result ->> 'ledger_id', 200, v_result ->> 'tenant_id',
        p_metadata => jsonb_build_object('scope', v_result ->> 'scope', 'unit', v_result ->> 'unit',
                                         'reason', p_reason));
    RETURN v_result;
END;
$$;

-- cycles.close_budget --------------------------------------------------------
-- ACTIVE|FROZEN -> CLOSED, irreversibly. Refused while reservations hold part
-- of the budget (reserved > 0): their commit or release must land on an open
-- budget, so the operator releases them (or lets them expire) first; closing
-- the whole tenant releases them itself. Debt is kept on the closed budget.
-- Returns BudgetLedger.
-- Locks: the tenant row FOR SHARE, then the budget row FOR UPDATE.
-- Errors, in precedence order: INVALID_REQUEST (malformed scope, unknown
-- unit, reason > 512), TENANT_NOT_FOUND, TENANT_CLOSED, BUDGET_NOT_FOUND,
-- INVALID_TRANSITION (already CLOSED, or reserved > 0).
-- Authorization: as freeze_budget (admin:budgets:write).
-- Invariants: one CLOSE ledger row with zero deltas; emits budget.closed;
-- one audit row (closeBudget).
CREATE FUNCTION cycles.close_budget(
    p_scope text, p_unit text, p_reason text DEFAULT NULL, p_ctx jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, ARRAY['admin:budgets:write']);
    v_before cycles.budgets;
    v_after  cycles.budgets;
BEGIN
    PERFORM cycles._admin_require_scope(v_ctx, cycles._canonical_scope(p_scope));
    IF char_length(p_reason) > 512 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'reason must be at most 512 characters');
    END IF;
    v_before := cycles._lock_budget_for_change(p_scope, p_unit);
    IF v_before.status = 'CLOSED' THEN
        PERFORM cycles._fail('INVALID_TRANSITION',
            format('budget %s %s is already CLOSED', v_before.scope, v_before.unit),
            jsonb_build_object('scope', v_before.scope, 'unit', v_before.unit, 'status', v_before.status));
    END IF;
    IF v_before.reserved > 0 THEN
        PERFORM cycles._fail('INVALID_TRANSITION',
            format('budget %s %s has %s reserved by open reservations: release them first',
                   v_before.scope, v_before.unit, v_before.reserved),
            jsonb_build_object('scope', v_before.scope, 'unit', v_before.unit, 'reserved', v_before.reserved));
    END IF;
    UPDATE cycles.budgets AS b
    SET status = 'CLOSED', closed_at = clock_timestamp(), updated_at = clock_timestamp()
    WHERE b.tenant_id = v_before.tenant_id AND b.budget_id = v_before.budget_id
    RETURNING b.* INTO v_after;
    PERFORM cycles._append_ledger(
        p_budget_id => v_after.budget_id, p_tenant_id => v_after.tenant_id, p_scope => v_after.scope,
        p_unit => v_after.unit, p_operation => 'CLOSE', p_actor => cycles._actor(v_ctx), p_reason => p_reason,
        p_request_id => v_ctx ->> 'request_id', p_trace_id => v_ctx ->> 'trace_id');
    PERFORM cycles._budget_event('budget.closed', 'STATUS_CHANGE', v_before, v_after, p_reason, v_ctx);
    PERFORM cycles._audit(v_ctx, 'closeBudget', 'budget', v_after.budget_id::text, 200, v_after.tenant_id,
        p_metadata => jsonb_build_object('scope', v_after.scope, 'unit', v_after.unit, 'reason', p_reason));
    RETURN cycles._budget_json(v_after);
END;
$$;

-- cycles.update_budget -------------------------------------------------------
-- Changes a budget's properties: p_patch may hold overdraft_limit (integer
-- >= 0, or an Amount object {unit, amount} in the budget's unit), commit_overage_policy (a policy, or null to inherit from the tenant)
-- and metadata (object). Allowed while FROZEN. is_over_limit is recomputed as
-- debt > overdraft_limit. An empty patch changes nothing and emits nothing.
-- Returns BudgetLedger.
-- Locks: the tenant row FOR SHARE, then the budget row FOR UPDATE.
-- Errors, in precedence order: INVALID_REQUEST (malformed scope, unknown
-- unit, unknown or malformed field), TENANT_NOT_FOUND, TENANT_CLOSED,
-- BUDGET_NOT_FOUND, BUDGET_CLOSED.
-- Authorization: as freeze_budget (admin:budgets:write).
-- Invariants: no counter changes, so no ledger row; emits budget.updated;
-- one audit row (updateBudget).
CREATE FUNCTION cycles.update_budget(
    p_scope text, p_unit text, p_patch jsonb, p_ctx jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx      jsonb := cycles._admin_principal(p_ctx, ARRAY['admin:budgets:write']);
    v_patch    jsonb := cycles._require_known_options(p_patch,
                            ARRAY['overdraft_limit', 'commit_overage_policy', 'metadata'], 'budget field');
    v_limit    bigint;
    v_policy   text;
    v_metadata jsonb;
    v_before   cycles.budgets;
    v_after    cycles.budgets;
BEGIN
    PERFORM cycles._admin_require_scope(v_ctx, cycles._canonical_scope(p_scope));
    IF jsonb_typeof(v_patch -> 'overdraft_limit') = 'object' THEN
        IF v_patch #>> '{overdraft_limit,unit}' IS DISTINCT FROM p_unit THEN
            PERFORM cycles._fail('UNIT_MISMATCH',
                format('overdraft_limit unit %s does not match the budget unit %s',
                       coalesce(v_patch #>> '{overdraft_limit,unit}', 'null'), p_unit),
                jsonb_build_object('unit', p_unit));
        END IF;
        v_patch := jsonb_set(v_patch, '{overdraft_limit}', coalesce(v_patch #> '{overdraft_limit,amount}', 'null'));
    END IF;
    IF v_patch ? 'overdraft_limit' THEN
        v_limit := cycles._json_int(v_patch, 'overdraft_limit', 0, 9223372036854775807, NULL);
        IF v_limit IS NULL THEN
            PERFORM cycles._fail('INVALID_REQUEST', 'overdraft_limit must be an integer >= 0');
        END IF;
    END IF;
    v_policy := cycles._require_overage_policy(cycles._text_option(v_patch, 'commit_overage_policy', 64));
    IF v_patch ? 'metadata' THEN
        v_metadata := v_patch -> 'metadata';
        IF jsonb_typeof(v_metadata) <> 'object' THEN
            PERFORM cycles._fail('INVALID_REQUEST', 'metadata must be a JSON object');
        END IF;
    END IF;

    v_before := cycles._lock_budget_for_change(p_scope, p_unit);
    PERFORM cycles._require_budget_open(v_before, true);
    IF v_patch = '{}'::jsonb THEN
        PERFORM cycles._audit(v_ctx, 'updateBudget', 'budget', v_before.budget_id::text, 200, v_before.tenant_id,
            p_metadata => jsonb_build_object('scope', v_before.scope, 'unit', v_before.unit));
        RETURN cycles._budget_json(v_before);
    END IF;
    UPDATE cycles.budgets AS b
    SET overdraft_limit = coalesce(v_limit, b.overdraft_limit),
        commit_overage_policy = CASE WHEN v_patch ? 'commit_overage_policy' THEN v_policy
                                     ELSE b.commit_overage_policy END,
        metadata = coalesce(v_metadata, b.metadata),
        is_over_limit = b.debt > coalesce(v_limit, b.overdraft_limit),
        updated_at = clock_timestamp()
    WHERE b.tenant_id = v_before.tenant_id AND b.budget_id = v_before.budget_id
    RETURNING b.* INTO v_after;
    -- EventDataBudgetLifecycle has no changed_fields: the states tell, and the
    -- audit row below lists the fields.
    PERFORM cycles._budget_event('budget.updated', 'UPDATE', v_before, v_after, NULL, v_ctx);
    PERFORM cycles._audit(v_ctx, 'updateBudget', 'budget', v_after.budget_id::text, 200, v_after.tenant_id,
        p_metadata => jsonb_build_object('scope', v_after.scope, 'unit', v_after.unit,
            'changed_fields', (SELECT jsonb_agg(k ORDER BY k) FROM jsonb_object_keys(v_patch) AS k)));
    RETURN cycles._budget_json(v_after);
END;
$$;

-- cycles.get_budget ----------------------------------------------------------
-- The BudgetLedger at (scope, unit) (lookupBudget). Reads only; allowed for
-- a closed tenant.
-- Authorization: the admin, or a tenant key with budgets:read or
-- admin:budgets:read on a scope of its tenant within its scope_filter.
-- Errors: INSUFFICIENT_PERMISSIONS, INVALID_REQUEST (malformed scope,
-- unknown unit), FORBIDDEN, BUDGET_NOT_FOUND.
-- Invariants: one audit row (lookupBudget).
CREATE FUNCTION cycles.get_budget(p_scope text, p_unit text, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, ARRAY['budgets:read', 'admin:budgets:read']);
    v_scope  text := cycles._canonical_scope(p_scope);
    v_unit   text := cycles._require_unit(p_unit);
    v_budget cycles.budgets;
BEGIN
    PERFORM cycles._admin_require_scope(v_ctx, v_scope);
    SELECT b.* INTO v_budget FROM cycles.budgets AS b WHERE b.tenant_id = cycles._scope_tenant(v_scope) AND b.scope = v_scope AND b.unit = v_unit;
    IF v_budget.budget_id IS NULL THEN
        PERFORM cycles._fail('BUDGET_NOT_FOUND', format('no %s budget at scope %L', v_unit, v_scope),
            jsonb_build_object('scope', v_scope, 'unit', v_unit));
    END IF;
    PERFORM cycles._audit(v_ctx, 'lookupBudget', 'budget', v_budget.budget_id::text, 200, v_budget.tenant_id,
        p_metadata => jsonb_build_object('scope', v_scope, 'unit', v_unit));
    RETURN cycles._budget_json(v_budget);
END;
$$;

-- spent / allocated, 0 when nothing is allocated (the utilization filters).
CREATE FUNCTION cycles._utilization(p_budget cycles.budgets) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN CASE WHEN p_budget.allocated > 0 THEN p_budget.spent::numeric / p_budget.allocated ELSE 0 END;
END;
$$;

-- cycles.list_budgets --------------------------------------------------------
-- A page of budgets in scope order: {ledgers, has_more, next_cursor}.
-- Filters (AND): p_tenant_id (NULL: every tenant, admin view), p_scope_prefix
-- (start of the canonical scope, case-insensitive), p_unit, p_status,
-- p_over_limit (is_over_limit equals it), p_has_debt (debt > 0 equals it),
-- p_utilization_min / p_utilization_max (inclusive bounds on spent /
-- allocated in [0, 1]; allocated = 0 counts as 0), p_search (substring of
-- tenant_id or scope, case-insensitive; empty means absent). The cursor is
-- the ledger_id of the last row of the previous page.
-- Authorization: the admin, or a tenant key with budgets:read or
-- admin:budgets:read: its own tenant's budgets only (p_tenant_id is
-- ignored), and only scopes within its scope_filter.
-- Errors: INSUFFICIENT_PERMISSIONS; INVALID_REQUEST (unknown unit or status,
-- utilization bound outside [0, 1] or min > max, search > 128, limit outside
-- 1..100, unknown cursor); TENANT_NOT_FOUND.
-- Invariants: one audit row (listBudgets).
CREATE FUNCTION cycles.list_budgets(
    p_tenant_id       text DEFAULT NULL,
    p_scope_prefix    text DEFAULT NULL,
    p_unit            text DEFAULT NULL,
    p_status          text DEFAULT NULL,
    p_limit           integer DEFAULT 50,
    p_cursor          text DEFAULT NULL,
    p_over_limit      boolean DEFAULT NULL,
    p_has_debt        boolean DEFAULT NULL,
    p_utilization_min numeric DEFAULT NULL,
    p_utilization_max numeric DEFAULT NULL,
    p_search          text DEFAULT NULL,
    p_ctx             jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx       jsonb := cycles._admin_principal(p_ctx, ARRAY['budgets:read', 'admin:budgets:read']);
    v_tenant_id text := coalesce(v_ctx ->> 'principal_tenant_id', p_tenant_id);
    v_limit     integer := cycles._page_limit(p_limit);
    v_prefix    text := lower(nullif(p_scope_prefix, ''));
    v_search    text := lower(nullif(p_search, ''));
    v_after     cycles.budgets;
    v_rows      cycles.budgets[];
BEGIN
    IF p_unit IS NOT NULL THEN
        PERFORM cycles._require_unit(p_unit);
    END IF;
    IF p_status IS NOT NULL AND p_status NOT IN ('ACTIVE', 'FROZEN', 'CLOSED') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown budget status %L: expected ACTIVE, FROZEN or CLOSED', p_status));
    END IF;
    IF p_utilization_min NOT BETWEEN 0 AND 1 OR p_utilization_max NOT BETWEEN 0 AND 1 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'utilization_min and utilization_max must lie in [0, 1]');
    END IF;
    IF p_utilization_min > p_utilization_max THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'utilization_min must not exceed utilization_max');
    END IF;
    IF char_length(v_search) > 128 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'search must be at most 128 characters');
    END IF;
    IF v_tenant_id IS NOT NULL AND NOT EXISTS (SELECT FROM cycles.tenants AS t WHERE t.tenant_id = v_tenant_id) THEN
        PERFORM cycles._fail('TENANT_NOT_FOUND', format('tenant %L not found', v_tenant_id),
            jsonb_build_object('tenant_id', v_tenant_id));
    END IF;
    IF p_cursor IS NOT NULL THEN
        SELECT b.* INTO v_after FROM cycles.budgets AS b
        WHERE b.budget_id::text = p_cursor AND (v_tenant_id IS NULL OR b.tenant_id = v_tenant_id);
        IF v_after.budget_id IS NULL THEN
            PERFORM cycles._fail('INVALID_REQUEST', format('unknown cursor %L', p_cursor));
        END IF;
    END IF;

    SELECT coalesce(array_agg(page ORDER BY page.scope COLLATE "C", page.unit), '{}') INTO v_rows
    FROM (
        SELECT b.*
        FROM cycles.budgets AS b
        WHERE (v_tenant_id IS NULL OR b.tenant_id = v_tenant_id)
          AND (v_prefix IS NULL OR left(b.scope, char_length(v_prefix)) = v_prefix)
          AND (p_unit IS NULL OR b.unit = p_unit)
          AND (p_status IS NULL OR b.status = p_status)
          AND (p_over_limit IS NULL OR b.is_over_limit = p_over_limit)
          AND (p_has_debt IS NULL OR (b.debt > 0) = p_has_debt)
          AND (p_utilization_min IS NULL OR cycles._utilization(b) >= p_utilization_min)
          AND (p_utilization_max IS NULL OR cycles._utilization(b) <= p_utilization_max)
          AND (v_search IS NULL OR strpos(b.tenant_id, v_search) > 0 OR strpos(b.scope, v_search) > 0)
          AND (NOT v_ctx ? 'principal_tenant_id' OR cycles._scope_filter_allows(v_ctx -> 'scope_filter', b.scope))
          AND (v_after.budget_id IS NULL
               OR (b.scope COLLATE "C", b.unit) > (v_after.scope COLLATE "C", v_after.unit))
        ORDER BY b.scope COLLATE "C", b.unit
        LIMIT v_limit + 1
    ) AS page;

    PERFORM cycles._audit(v_ctx, 'listBudgets', 'budget', NULL, 200, v_tenant_id);
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'ledgers', coalesce((SELECT jsonb_agg(cycles._budget_json(v_rows[i]) ORDER BY i)
                             FROM generate_series(1, least(cardinality(v_rows), v_limit)) AS i), '[]'::jsonb),
        'has_more', cardinality(v_rows) > v_limit,
        'next_cursor', CASE WHEN cardinality(v_rows) > v_limit THEN (v_rows[v_limit]).budget_id::text END));
END;
$$;

-- cycles.fund_budget ---------------------------------------------------------
-- POST /v1/admin/budgets/fund: see cycles._fund_budget for the five
-- operations, idempotency (p_idempotency_key required, 1..256), locks and
-- errors. p_tenant_id, when given, must be the scope's tenant (the REST
-- admin path requires it, as the reference does).
-- Authorization: the admin, or a tenant key with budgets:write or
-- admin:budgets:write on a scope of its tenant within its scope_filter.
-- Errors first, in precedence order: INSUFFICIENT_PERMISSIONS;
-- INVALID_REQUEST (malformed scope, missing key, tenant_id other than the
-- scope's); FORBIDDEN; then those of cycles._fund_budget.
-- Invariants: one audit row (fundBudget), also for an idempotent replay.
CREATE FUNCTION cycles.fund_budget(
    p_scope           text,
    p_unit            text,
    p_operation       text,
    p_amount          bigint,
    p_idempotency_key text,
    p_spent           bigint DEFAULT NULL,
    p_reason          text DEFAULT NULL,
    p_tenant_id       text DEFAULT NULL,
    p_ctx             jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx      jsonb := cycles._admin_principal(p_ctx, ARRAY['budgets:write', 'admin:budgets:write']);
    v_scope    text := cycles._canonical_scope(p_scope);
    v_response jsonb;
BEGIN
    IF p_idempotency_key IS NULL OR char_length(p_idempotency_key) NOT BETWEEN 1 AND 256 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'idempotency_key must be 1 to 256 characters long');
    END IF;
    IF p_tenant_id IS NOT NULL AND NOT v_ctx ? 'principal_tenant_id'
       AND p_tenant_id <> cycles._scope_tenant(v_scope) THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('scope %L does not belong to tenant %L', v_scope, p_tenant_id),
            jsonb_build_object('scope', v_scope, 'tenant_id', p_tenant_id));
    END IF;
    PERFORM cycles._admin_require_scope(v_ctx, v_scope);
    v_response := cycles._fund_budget(p_scope, p_unit, p_operation, p_amount, p_idempotency_key, p_spent,
                                      p_reason, v_ctx);
    PERFORM cycles._audit(v_ctx, 'fundBudget', 'budget', v_scope || ' ' || p_unit, 200, cycles._scope_tenant(v_scope),
        p_amount => cycles._amount_json(p_unit, p_amount),
        p_metadata => jsonb_build_object('scope', v_scope, 'unit', p_unit, 'operation', p_operation,
                                         'idempotency_key', p_idempotency_key, 'reason', p_reason));
    RETURN v_response;
END;
$$;
