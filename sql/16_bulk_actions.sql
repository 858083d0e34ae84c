-- Bulk actions: one lifecycle action over every tenant, or one funding
-- operation over every budget, that a filter matches.
--
-- Guards shared by both (the spec's bulk-action contract):
--   - the filter is counted before anything changes; expected_count, when
--     given, must equal that count, else COUNT_MISMATCH (409), no writes;
--   - at most 500 matching rows, else LIMIT_EXCEEDED (400), no writes;
--   - idempotency_key: the first response is kept 15 minutes; a repeat with
--     the same request returns it unchanged, a different request with the
--     same key is IDEMPOTENCY_MISMATCH;
--   - a row that fails is reported in failed[] (its own subtransaction rolls
--     back) and the others proceed; the call answers 200.
-- Each mutated row emits its usual event, with correlation_id
-- '<kind>_bulk_action:<action lower-cased>:<request_id>'; the call writes
-- one audit row carrying the per-row outcome.

CREATE TABLE cycles.bulk_action_records (
    kind            text        NOT NULL,
    idempotency_key text        NOT NULL,
    request_hash    bytea       NOT NULL,
    response        jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at      timestamptz NOT NULL,
    CONSTRAINT bulk_action_records_pkey PRIMARY KEY (kind, idempotency_key),
    CONSTRAINT bulk_action_records_kind_valid CHECK (kind IN ('tenant', 'budget')),
    CONSTRAINT bulk_action_records_key_length CHECK (char_length(idempotency_key) BETWEEN 1 AND 128),
    CONSTRAINT bulk_action_records_expiry_after_creation CHECK (expires_at > created_at)
);

-- LIMIT_EXCEEDED as a 400 (too many rows matched), which the spec gives
-- the same error code as the 429 throttle; its own SQLSTATE tells them apart.
CREATE FUNCTION cycles._fail_bulk_limit(p_total integer) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'CY4LE',
        MESSAGE = format('the filter matches %s rows; a bulk action applies to at most 500', p_total),
        DETAIL = jsonb_build_object('error', 'LIMIT_EXCEEDED',
                                    'details', jsonb_build_object('total_matched', p_total, 'limit', 500))::text;
END;
$$;

-- The stored response of an earlier identical bulk request within 15 minutes
-- (NULL when there is none), after taking the per-key advisory lock that
-- serialises requests with the same key. IDEMPOTENCY_MISMATCH when the key
-- was used for a different request.
CREATE FUNCTION cycles._bulk_replay(p_kind text, p_key text, p_hash bytea) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_record cycles.bulk_action_records;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('bulk_action:' || p_kind || ':' || p_key, 0));
    SELECT r.* INTO v_record FROM cycles.bulk_action_records AS r
    WHERE r.kind = p_kind AND r.idempotency_key = p_key AND r.expires_at > clock_timestamp();
    IF v_record.kind IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_record.request_hash <> p_hash THEN
        PERFORM cycles._fail('IDEMPOTENCY_MISMATCH',
            format('idempotency_key %L was already used for a different bulk request', p_key),
            jsonb_build_object('idempotency_key', p_key));
    END IF;
    RETURN v_record.response;
END;
$$;

CREATE FUNCTION cycles._bulk_store(p_kind text, p_key text, p_hash bytea, p_response jsonb) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO cycles.bulk_action_records AS r (kind, idempotency_key, request_hash, response, created_at, expires_at)
    VALUES (p_kind, p_key, p_hash, p_response, clock_timestamp(), clock_timestamp() + interval '15 minutes')
    ON CONFLICT ON CONSTRAINT bulk_action_records_pkey DO UPDATE
        SET request_hash = excluded.request_hash, response = excluded.response,
            created_at = excluded.created_at, expires_at = excluded.expires_at;
END;
$$;

-- Checks shared by both bulk functions, before anything is read.
CREATE FUNCTION cycles._require_bulk_request(p_key text, p_expected_count integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_key IS NULL OR char_length(p_key) NOT BETWEEN 1 AND 128 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'idempotency_key must be 1 to 128 characters long');
    END IF;
    IF p_expected_count < 0 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'expected_count must be >= 0');
    END IF;
END;
$$;

-- The count gate: LIMIT_EXCEEDED above 500, COUNT_MISMATCH when an expected
-- count was given and differs.
CREATE FUNCTION cycles._bulk_count_gate(p_total integer, p_expected_count integer) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_total > 500 THEN
        PERFORM cycles._fail_bulk_limit(p_total);
    END IF;
    IF p_expected_count IS NOT NULL AND p_expected_count <> p_total THEN
        PERFORM cycles._fail('COUNT_MISMATCH',
            format('the filter matches %s rows, not the expected %s', p_total, p_expected_count),
            jsonb_build_object('total_matched', p_total, 'expected_count', p_expected_count));
    END IF;
END;
$$;

-- The failed[] entry of a row whose action raised: the error code and
-- message of a cycles._fail error, else INTERNAL_ERROR without the message.
CREATE FUNCTION cycles._bulk_row_failure(p_id text, p_detail text, p_message text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_code text;
BEGIN
    BEGIN
        v_code := p_detail::jsonb ->> 'error';
    EXCEPTION WHEN OTHERS THEN
        v_code := NULL;
    END;
    -- Only a protocol error's message is shown: anything else may carry
    -- server-internal detail.
    RETURN jsonb_build_object('id', p_id, 'error_code', coalesce(v_code, 'INTERNAL_ERROR'),
                              'message', CASE WHEN v_code IS NULL THEN 'internal error'
                                              ELSE left(coalesce(p_message, 'failed'), 1024) END);
END;
$$;

-- cycles.bulk_tenant_action ----------------------------------------------------
-- POST /v1/admin/tenants/bulk-action. p_filter (at least one of status,
-- parent_tenant_id, observe_mode, search; same meaning as list_tenants;
-- observe_mode: tenants here always enforce, so ENFORCE and DISABLED match
-- every tenant, OBSERVE none); p_action SUSPEND | REACTIVATE | CLOSE.
-- Per row: SUSPEND of a SUSPENDED tenant, REACTIVATE of an ACTIVE one, CLOSE
-- of a CLOSED one are skipped (ALREADY_IN_TARGET_STATE); SUSPEND or
-- REACTIVATE of a CLOSED tenant fails (INVALID_TRANSITION); CLOSE runs the
-- whole cascade of cycles._close_tenant.
-- Returns {action, total_matched, succeeded[], failed[], skipped[],
-- idempotency_key}, rows as {id, error_code?, message?, reason?}.
-- Authorization: the admin only.
-- Locks: the per-key advisory lock; then, per row in tenant_id order, what
-- the transition takes.
-- Errors, in precedence order: INSUFFICIENT_PERMISSIONS; INVALID_REQUEST
-- (bad key, action, filter or expected_count); IDEMPOTENCY_MISMATCH;
-- LIMIT_EXCEEDED (400, > 500 rows); COUNT_MISMATCH (409).
-- Invariants: no write at all unless both gates pass; one audit row
-- (bulkActionTenants), also for a replay.
CREATE FUNCTION cycles.bulk_tenant_action(
    p_filter          jsonb,
    p_action          text,
    p_idempotency_key text,
    p_expected_count  integer DEFAULT NULL,
    p_ctx             jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx       jsonb := cycles._admin_principal(p_ctx, NULL);
    v_filter    jsonb;
    v_status    text;
    v_parent    text;
    v_mode      text;
    v_search    text;
    v_hash      bytea;
    v_response  jsonb;
    v_ids       text[];
    v_row_ctx   jsonb;
    v_tenant    cycles.tenants;
    v_succeeded jsonb := '[]';
    v_failed    jsonb := '[]';
    v_skipped   jsonb := '[]';
    v_detail    text;
    v_message   text;
BEGIN
    PERFORM cycles._require_bulk_request(p_idempotency_key, p_expected_count);
    IF p_action IS NULL OR p_action NOT IN ('SUSPEND', 'REACTIVATE', 'CLOSE') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown tenant bulk action %L: expected SUSPEND, REACTIVATE or CLOSE', p_action));
    END IF;
    v_filter := cycles._require_known_options(p_filter, ARRAY['status', 'parent_tenant_id', 'observe_mode', 'search'],
                                              'tenant filter');
    v_filter := jsonb_strip_nulls(v_filter);
    IF v_filter = '{}'::jsonb THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'filter must name at least one property');
    END IF;
    v_status := cycles._text_option(v_filter, 'status', 16);
    IF v_status NOT IN ('ACTIVE', 'SUSPENDED', 'CLOSED') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown tenant status %L: expected ACTIVE, SUSPENDED or CLOSED', v_status));
    END IF;
    v_parent := cycles._text_option(v_filter, 'parent_tenant_id', 64);
    v_mode := cycles._text_option(v_filter, 'observe_mode', 32);
    v_search := lower(nullif(cycles._text_option(v_filter, 'search', 128), ''));

    v_hash := sha256(convert_to(jsonb_build_object(
        'filter', v_filter, 'action', p_action, 'expected_count', p_expected_count)::text, 'UTF8'));
    v_response := cycles._bulk_replay('tenant', p_idempotency_key, v_hash);
    IF v_response IS NOT NULL THEN
        PERFORM cycles._audit(v_ctx, 'bulkActionTenants', 'tenant', NULL, 200,
            p_metadata => jsonb_build_object('filter', v_filter, 'action', p_action, 'replay', true,
                                             'idempotency_key', p_idempotency_key));
        RETURN v_response;
    END IF;

    SELECT coalesce(array_agg(t.tenant_id ORDER BY t.tenant_id), '{}') INTO v_ids
    FROM cycles.tenants AS t
    WHERE (v_status IS NULL OR t.status = v_status)
      AND (v_parent IS NULL OR t.parent_tenant_id = v_parent)
      AND (v_mode IS NULL OR upper(v_mode) IN ('ENFORCE', 'DISABLED'))
      AND (v_search IS NULL OR strpos(t.tenant_id, v_search) > 0 OR strpos(lower(t.name), v_search) > 0);
    PERFORM cycles._bulk_count_gate(cardinality(v_ids), p_expected_count);

    v_row_ctx := v_ctx || jsonb_build_object('correlation_id',
        format('tenant_bulk_action:%s:%s', lower(p_action),
               coalesce(v_ctx ->> 'request_id', cycles._new_id('req_', 32))));
    FOR i IN 1 .. cardinality(v_ids) LOOP
        BEGIN
            SELECT t.* INTO v_tenant FROM cycles.tenants AS t WHERE t.tenant_id = v_ids[i] FOR NO KEY UPDATE;
            IF (p_action = 'SUSPEND' AND v_tenant.status = 'SUSPENDED')
               OR (p_action = 'REACTIVATE' AND v_tenant.status = 'ACTIVE')
               OR (p_action = 'CLOSE' AND v_tenant.status = 'CLOSED') THEN
                v_skipped := v_skipped || jsonb_build_object('id', v_ids[i], 'reason', 'ALREADY_IN_TARGET_STATE');
                CONTINUE;
            END IF;
            CASE p_action
                WHEN 'SUSPEND' THEN PERFORM cycles._suspend_tenant(v_ids[i], v_row_ctx);
                WHEN 'REACTIVATE' THEN PERFORM cycles._reactivate_tenant(v_ids[i], v_row_ctx);
                WHEN 'CLOSE' THEN PERFORM cycles._close_tenant(v_ids[i], v_row_ctx);
            END CASE;
            v_succeeded := v_succeeded || jsonb_build_object('id', v_ids[i]);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL, v_message = MESSAGE_TEXT;
            v_failed := v_failed || cycles._bulk_row_failure(v_ids[i], v_detail, v_message);
        END;
    END LOOP;

    v_response := jsonb_build_object(
        'action', p_action, 'total_matched', cardinality(v_ids), 'succeeded', v_succeeded,
        'failed', v_failed, 'skipped', v_skipped, 'idempotency_key', p_idempotency_key);
    PERFORM cycles._bulk_store('tenant', p_idempotency_key, v_hash, v_response);
    PERFORM cycles._audit(v_ctx, 'bulkActionTenants', 'tenant', NULL, 200,
        p_metadata => jsonb_build_object(
            'filter', v_filter, 'action', p_action, 'idempotency_key', p_idempotency_key,
            'succeeded_ids', (SELECT coalesce(jsonb_agg(e -> 'id'), '[]') FROM jsonb_array_elements(v_succeeded) AS e),
            'failed_rows', v_failed, 'skipped_rows', v_skipped));
    RETURN v_response;
END;
$$;

-- cycles.bulk_budget_action ----------------------------------------------------
-- POST /v1/admin/budgets/bulk-action. p_filter: tenant_id (required) and
-- optionally scope_prefix, unit, status, over_limit, has_debt,
-- utilization_min, utilization_max, search (same meaning as list_budgets).
-- p_action: CREDIT | DEBIT | RESET | RESET_SPENT | REPAY_DEBT, applied with
-- p_amount (required) and, for RESET_SPENT, p_spent (default 0) to every
-- matched budget exactly as cycles.fund_budget applies it to one. p_unit is
-- the unit of the amount: a matched budget of another unit fails
-- (INVALID_TRANSITION) and the others proceed; NULL applies the amount in
-- each budget's own unit. Row failures: BUDGET_EXCEEDED, BUDGET_FROZEN,
-- BUDGET_CLOSED, INVALID_TRANSITION, INVALID_REQUEST (a counter out of range).
-- Returns {action, total_matched, succeeded[], failed[], skipped[],
-- idempotency_key} with rows {id: ledger_id, ...}.
-- Authorization: the admin only.
-- Locks: the per-key advisory lock; the tenant row FOR SHARE; then each
-- budget (scope order) as cycles._fund_budget locks it.
-- Errors, in precedence order: INSUFFICIENT_PERMISSIONS; INVALID_REQUEST
-- (bad key, action, amount, spent, reason or filter); IDEMPOTENCY_MISMATCH;
-- TENANT_NOT_FOUND; LIMIT_EXCEEDED (400); COUNT_MISMATCH (409).
-- Invariants: no write unless both gates pass; each row's change has its
-- ledger row and event; one audit row (bulkActionBudgets), also for a replay.
CREATE FUNCTION cycles.bulk_budget_action(
    p_filter          jsonb,
    p_action          text,
    p_idempotency_key text,
    p_amount          bigint DEFAULT NULL,
    p_unit            text DEFAULT NULL,
    p_spent           bigint DEFAULT NULL,
    p_expected_count  integer DEFAULT NULL,
    p_reason          text DEFAULT NULL,
    p_ctx             jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx       jsonb := cycles._admin_principal(p_ctx, NULL);
    v_filter    jsonb;
    v_tenant_id text;
    v_prefix    text;
    v_unit      text;
    v_status    text;
    v_min       numeric;
    v_max       numeric;
    v_search    text;
    v_hash      bytea;
    v_response  jsonb;
    v_rows      cycles.budgets[];
    v_budget    cycles.budgets;
    v_row_ctx   jsonb;
    v_succeeded jsonb := '[]';
    v_failed    jsonb := '[]';
    v_detail    text;
    v_message   text;
BEGIN
    PERFORM cycles._require_bulk_request(p_idempotency_key, p_expected_count);
    IF p_action IS NULL OR p_action NOT IN ('CREDIT', 'DEBIT', 'RESET', 'RESET_SPENT', 'REPAY_DEBT') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown budget bulk action %L: expected CREDIT, DEBIT, RESET, RESET_SPENT or REPAY_DEBT',
                   p_action));
    END IF;
    IF p_amount IS NULL THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('amount is required for %s', p_action));
    END IF;
    PERFORM cycles._require_amount(p_amount, 'amount');
    IF p_amount = 0 AND p_action IN ('CREDIT', 'DEBIT', 'REPAY_DEBT') THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('amount must be positive for %s', p_action));
    END IF;
    IF p_spent IS NOT NULL THEN
        PERFORM cycles._require_amount(p_spent, 'spent');
    END IF;
    IF p_unit IS NOT NULL THEN
        PERFORM cycles._require_unit(p_unit);
    END IF;
    IF char_length(p_reason) > 512 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'reason must be at most 512 characters');
    END IF;
    v_filter := jsonb_strip_nulls(cycles._require_known_options(p_filter, ARRAY[
        'tenant_id', 'scope_prefix', 'unit', 'status', 'over_limit', 'has_debt', 'utilization_min',
        'utilization_max', 'search'], 'budget filter'));
    v_tenant_id := cycles._text_option(v_filter, 'tenant_id', 64);
    IF v_tenant_id IS NULL THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'filter.tenant_id is required');
    END IF;
    v_prefix := lower(nullif(cycles._text_option(v_filter, 'scope_prefix', 1024), ''));
    v_unit := cycles._text_option(v_filter, 'unit', 32);
    IF v_unit IS NOT NULL THEN
        PERFORM cycles._require_unit(v_unit);
    END IF;
    v_status := cycles._text_option(v_filter, 'status', 16);
    IF v_status NOT IN ('ACTIVE', 'FROZEN', 'CLOSED') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown budget status %L: expected ACTIVE, FROZEN or CLOSED', v_status));
    END IF;
    IF jsonb_typeof(v_filter -> 'over_limit') NOT IN ('boolean') OR jsonb_typeof(v_filter -> 'has_debt') <> 'boolean'
       OR jsonb_typeof(v_filter -> 'utilization_min') <> 'number'
       OR jsonb_typeof(v_filter -> 'utilization_max') <> 'number' THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            'over_limit and has_debt must be booleans, utilization_min and utilization_max numbers');
    END IF;
    v_min := (v_filter ->> 'utilization_min')::numeric;
    v_max := (v_filter ->> 'utilization_max')::numeric;
    IF v_min NOT BETWEEN 0 AND 1 OR v_max NOT BETWEEN 0 AND 1 OR v_min > v_max THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            'utilization_min and utilization_max must lie in [0, 1], min not above max');
    END IF;
    v_search := lower(nullif(cycles._text_option(v_filter, 'search', 128), ''));

    v_hash := sha256(convert_to(jsonb_build_object(
        'filter', v_filter, 'action', p_action, 'amount', p_amount, 'unit', p_unit, 'spent', p_spent,
        'expected_count', p_expected_count, 'reason', p_reason)::text, 'UTF8'));
    v_response := cycles._bulk_replay('budget', p_idempotency_key, v_hash);
    IF v_response IS NOT NULL THEN
        PERFORM cycles._audit(v_ctx, 'bulkActionBudgets', 'budget', NULL, 200, v_tenant_id,
            p_metadata => jsonb_build_object('filter', v_filter, 'action', p_action, 'replay', true,
                                             'idempotency_key', p_idempotency_key));
        RETURN v_response;
    END IF;

    IF NOT EXISTS (SELECT FROM cycles.tenants AS t WHERE t.tenant_id = v_tenant_id) THEN
        PERFORM cycles._fail('TENANT_NOT_FOUND', format('tenant %L not found', v_tenant_id),
            jsonb_build_object('tenant_id', v_tenant_id));
    END IF;

    SELECT coalesce(array_agg(b ORDER BY b.scope COLLATE "C", b.unit), '{}') INTO v_rows
    FROM cycles.budgets AS b
    WHERE b.tenant_id = v_tenant_id
      AND (v_prefix IS NULL OR left(b.scope, char_length(v_prefix)) = v_prefix)
      AND (v_unit IS NULL OR b.unit = v_unit)
      AND (v_status IS NULL OR b.status = v_status)
      AND (NOT v_filter ? 'over_limit' OR b.is_over_limit = (v_filter ->> 'over_limit')::boolean)
      AND (NOT v_filter ? 'has_debt' OR (b.debt > 0) = (v_filter ->> 'has_debt')::boolean)
      AND (v_min IS NULL OR cycles._utilization(b) >= v_min)
      AND (v_max IS NULL OR cycles._utilization(b) <= v_max)
      AND (v_search IS NULL OR strpos(b.tenant_id, v_search) > 0 OR strpos(b.scope, v_search) > 0);
    PERFORM cycles._bulk_count_gate(cardinality(v_rows), p_expected_count);

    v_row_ctx := v_ctx || jsonb_build_object('correlation_id',
        format('budget_bulk_action:%s:%s', lower(p_action),
               coalesce(v_ctx ->> 'request_id', cycles._new_id('req_', 32))));
    FOREACH v_budget IN ARRAY v_rows LOOP
        BEGIN
            IF p_unit IS NOT NULL AND p_unit <> v_budget.unit THEN
                PERFORM cycles._fail('INVALID_TRANSITION',
                    format('amount unit %s does not match the budget unit %s', p_unit, v_budget.unit));
            END IF;
            PERFORM cycles._fund_budget(v_budget.scope, v_budget.unit, p_action, p_amount, NULL, p_spent,
                                        p_reason, v_row_ctx);
            v_succeeded := v_succeeded || jsonb_build_object('id', v_budget.budget_id::text);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL, v_message = MESSAGE_TEXT;
            v_failed := v_failed || cycles._bulk_row_failure(v_budget.budget_id::text, v_detail, v_message);
        END;
    END LOOP;

    v_response := jsonb_build_object(
        'action', p_action, 'total_matched', cardinality(v_rows), 'succeeded', v_succeeded,
        'failed', v_failed, 'skipped', '[]'::jsonb, 'idempotency_key', p_idempotency_key);
    PERFORM cycles._bulk_store('budget', p_idempotency_key, v_hash, v_response);
    PERFORM cycles._audit(v_ctx, 'bulkActionBudgets', 'budget', NULL, 200, v_tenant_id,
        p_amount => CASE WHEN p_unit IS NOT NULL THEN cycles._amount_json(p_unit, p_amount) END,
        p_metadata => jsonb_build_object(
            'filter', v_filter, 'action', p_action, 'idempotency_key', p_idempotency_key, 'reason', p_reason,
            'succeeded_ids', (SELECT coalesce(jsonb_agg(e -> 'id'), '[]') FROM jsonb_array_elements(v_succeeded) AS e),
            'failed_rows', v_failed));
    RETURN v_response;
END;
$$;
