-- Reserve (live and dry_run) and decide.

-- The parsed, validated parts of a reserve or decide request.
CREATE TYPE cycles.reserve_request AS (
    idempotency_key text,
    subject         jsonb,
    action          jsonb,
    unit            text,
    estimate        bigint,
    scope_path      text,
    affected_scopes text[]
);

-- Validates the fields shared by reserve and decide and derives the scopes.
-- Errors: INVALID_REQUEST, FORBIDDEN (subject.tenant of another tenant).
CREATE FUNCTION cycles._parse_reserve_request(p_request jsonb, p_tenant_id text) RETURNS cycles.reserve_request
LANGUAGE plpgsql
AS $$
DECLARE
    v_parsed cycles.reserve_request;
    v_amount record;
    v_scopes record;
BEGIN
    v_parsed.idempotency_key := cycles._require_idempotency_key(p_request);
    v_parsed.subject := p_request -> 'subject';
    v_parsed.action := cycles._require_action(p_request -> 'action');
    v_amount := cycles._request_amount(p_request -> 'estimate', 'estimate');
    v_parsed.unit := v_amount.o_unit;
    v_parsed.estimate := v_amount.o_amount;
    PERFORM cycles._request_object(p_request, 'metadata');
    v_scopes := cycles._derive_scopes(v_parsed.subject, p_tenant_id);
    v_parsed.scope_path := v_scopes.o_scope_path;
    v_parsed.affected_scopes := v_scopes.o_affected_scopes;
    RETURN v_parsed;
END;
$$;

-- Read-only evaluation for dry_run and decide: the reason a reservation would
-- be denied (NULL: allowed) and the unlocked budget rows it looked at.
-- Tenant status first (CLOSED -> TENANT_CLOSED, SUSPENDED -> TENANT_SUSPENDED),
-- then the budgets (none in any unit -> BUDGET_NOT_FOUND), then the per-scope
-- checks of cycles._reserve_denial.
-- Errors: UNIT_MISMATCH (budgets exist only in other units).
CREATE FUNCTION cycles._evaluate_reserve(
    p_tenant cycles.tenants,
    p_parsed cycles.reserve_request,
    OUT o_reason text,
    OUT o_row    cycles.budgets,
    OUT o_rows   cycles.budgets[]
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_denial record;
BEGIN
    IF p_tenant.status = 'CLOSED' THEN
        o_reason := 'TENANT_CLOSED';
        RETURN;
    ELSIF p_tenant.status = 'SUSPENDED' THEN
        o_reason := 'TENANT_SUSPENDED';
        RETURN;
    END IF;
    o_rows := cycles._read_budgets(p_parsed.affected_scopes, p_parsed.unit);
    IF o_rows IS NULL THEN
        IF cycles._any_budget(p_parsed.affected_scopes) THEN
            PERFORM cycles._fail_no_budget(p_parsed.affected_scopes, p_parsed.unit, p_parsed.scope_path);
        END IF;
        o_reason := 'BUDGET_NOT_FOUND';
        RETURN;
    END IF;
    v_denial := cycles._reserve_denial(o_rows, p_parsed.estimate);
    o_reason := v_denial.o_reason;
    o_row := v_denial.o_row;
END;
$$;

-- The refusal of a live reserve whose budget rows (locked, or as a batch
-- left them) cannot take its estimate: BUDGET_NOT_FOUND / UNIT_MISMATCH when
-- there are none, else the 409 of the first failing per-scope check of
-- cycles._reserve_denial. Returns p_rows when they can take it (hot paths
-- assign it: see cycles._require_scope_in_filter).
CREATE FUNCTION cycles._require_reservable(p_rows cycles.budgets[], p_parsed cycles.reserve_request)
RETURNS cycles.budgets[]
LANGUAGE plpgsql
AS $$
DECLARE
    v_denial record;
BEGIN
    IF p_rows IS NULL THEN
        PERFORM cycles._fail_no_budget(p_parsed.affected_scopes, p_parsed.unit, p_parsed.scope_path);
    END IF;
    v_denial := cycles._reserve_denial(p_rows, p_parsed.estimate);
    IF v_denial.o_reason IS NOT NULL THEN
        PERFORM cycles._fail_denial(v_denial.o_reason, v_denial.o_row, p_parsed.estimate);
    END IF;
    RETURN p_rows;
END;
$$;

-- A DENY of dry_run or decide is recorded as a reservation.denied event.
CREATE FUNCTION cycles._emit_denied(
    p_tenant_id text,
    p_parsed    cycles.reserve_request,
    p_reason    text,
    p_row       cycles.budgets,
    p_actor     jsonb,
    p_ctx       jsonb
) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM cycles._emit_event(
            p_tenant_id, 'reservation.denied', 'cycles-server', p_actor,
            jsonb_build_object(
                'scope', coalesce(p_row.scope, p_parsed.scope_path),
                'unit', p_parsed.unit,
                'reason_code', p_reason,
                'requested_amount', p_parsed.estimate,
                'remaining', p_row.remaining,
                'action', p_parsed.action,
                'subject', p_parsed.subject),
            coalesce(p_row.scope, p_parsed.scope_path),
            p_ctx ->> 'request_id', p_ctx ->> 'trace_id');
END;
$$;

-- cycles.reserve: POST /v1/reservations.
--
-- Live: takes estimate from every derived scope that has a budget in the
-- estimate's unit, atomically, and records an ACTIVE reservation. dry_run:
-- the same evaluation with no change at all; a denial is a 200 DENY with a
-- reason_code and a reservation.denied event.
--
-- Locks: an advisory lock on (tenant, 'reserve', idempotency key) so that
-- concurrent same-key requests serialise; then the budget rows of the derived
-- scopes in the request unit, FOR UPDATE in scope byte order (live only).
--
-- Policies: the matching policy (cycles._match_policy on the scope path) of
-- an allowed request supplies caps (decision ALLOW_WITH_CAPS), the commit
-- overage policy (request > policy > deepest budget > tenant) and TTL
-- governance: ttl_ms defaults to the policy's default_ttl_ms, else the
-- tenant's, and is capped at the policy's max_ttl_ms, else the tenant's;
-- max_extensions is the policy's, else the tenant's.
--
-- Errors, in precedence order: UNAUTHORIZED; FORBIDDEN (permission
-- reservations:create); INVALID_REQUEST; FORBIDDEN (subject.tenant);
-- FORBIDDEN (scope outside the key's scope_filter);
-- IDEMPOTENCY_MISMATCH; [live] TENANT_CLOSED; FORBIDDEN (tenant suspended);
-- UNIT_MISMATCH / NOT_FOUND (no budget in the unit); per scope from the top:
-- BUDGET_FROZEN, BUDGET_CLOSED, OVERDRAFT_LIMIT_EXCEEDED, DEBT_OUTSTANDING,
-- BUDGET_EXCEEDED.
--
-- Invariants: budgets_remaining_identity on every row; one RESERVE ledger row
-- per charged budget with exactly the deltas applied; a same-key replay
-- returns the stored response and changes nothing.
CREATE FUNCTION cycles.reserve(p_api_key text, p_request jsonb, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_principal   record;
    v_tenant      cycles.tenants;
    v_parsed      cycles.reserve_request;
    v_dry_run     boolean;
    v_match       cycles.policies;
    v_caps        jsonb;
    v_ttl_req     bigint;
    v_ttl_ms      bigint;
    v_grace_ms    bigint;
    v_policy      text;
    v_hash        bytea;
    v_response    jsonb;
    v_before      cycles.budgets[];
    v_after       cycles.budgets[];
    v_denial      record;
    v_actor       jsonb;
    v_now_ms      bigint;
    v_expires_ms  bigint;
    v_id          text;
BEGIN
    v_principal := cycles._runtime_principal(p_api_key, 'reservations:create');
    v_tenant := v_principal.o_tenant;
    v_parsed := cycles._parse_reserve_request(p_request, v_tenant.tenant_id);
    v_parsed.scope_path := cycles._require_scope_in_filter(v_principal.o_scope_filter, v_parsed.scope_path);
    IF p_request ? 'dry_run' AND jsonb_typeof(p_request -> 'dry_run') NOT IN ('boolean', 'null') THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'dry_run must be a boolean');
    END IF;
    v_dry_run := coalesce((p_request ->> 'dry_run')::boolean, false);
    v_ttl_req := cycles._json_int(p_request, 'ttl_ms', 1000, 86400000, NULL);
    v_grace_ms := cycles._json_int(p_request, 'grace_period_ms', 0, 60000, 5000);
    v_policy := cycles._require_overage_policy(p_request ->> 'overage_policy');
    v_actor := cycles._runtime_actor(p_ctx, v_principal.o_key_id);

    v_hash := cycles._request_hash(p_request);
    v_response := cycles._idempotent_replay(v_tenant.tenant_id, 'reserve', v_parsed.idempotency_key, v_hash, true);
    IF v_response IS NOT NULL THEN
        RETURN v_response;
    END IF;

    IF v_dry_run THEN
        v_denial := cycles._evaluate_reserve(v_tenant, v_parsed);
        IF v_denial.o_reason IS NULL THEN
            v_caps := cycles._policy_caps(cycles._match_policy(v_tenant.tenant_id, v_parsed.scope_path));
        END IF;
        v_response := jsonb_build_object(
            'decision', CASE WHEN v_denial.o_reason IS NOT NULL THEN 'DENY'
                             WHEN v_caps IS NOT NULL THEN 'ALLOW_WITH_CAPS' ELSE 'ALLOW' END,
            'affected_scopes', to_jsonb(v_parsed.affected_scopes),
            'scope_path', v_parsed.scope_path);
        IF v_denial.o_reason IS NULL THEN
            v_response := v_response || jsonb_build_object(
                'reserved', cycles._amount_json(v_parsed.unit, v_parsed.estimate))
                || CASE WHEN v_caps IS NOT NULL THEN jsonb_build_object('caps', v_caps) ELSE '{}'::jsonb END;
        ELSE
            v_response := v_response || jsonb_build_object('reason_code', v_denial.o_reason);
            PERFORM cycles._emit_denied(v_tenant.tenant_id, v_parsed, v_denial.o_reason, v_denial.o_row,
                                        v_actor, p_ctx);
        END IF;
        IF v_denial.o_rows IS NOT NULL THEN
            v_response := v_response || jsonb_build_object('balances', cycles._balances_json(v_denial.o_rows));
        END IF;
        PERFORM cycles._idempotent_store(v_tenant.tenant_id, 'reserve', v_parsed.idempotency_key, v_hash,
                                         v_response);
        RETURN v_response;
    END IF;

    v_tenant := cycles._require_tenant_open(v_tenant, true);
    -- Everything that does not depend on the budget rows comes before their
    -- locks: a shared budget's row is held from here to the commit.
    v_match := cycles._match_policy(v_tenant.tenant_id, v_parsed.scope_path);
    v_caps := cycles._policy_caps(v_match);
    v_ttl_ms := least(
        coalesce(v_ttl_req, (v_match.reservation_ttl_override ->> 'default_ttl_ms')::bigint,
                 v_tenant.default_reservation_ttl_ms),
        coalesce((v_match.reservation_ttl_override ->> 'max_ttl_ms')::bigint, v_tenant.max_reservation_ttl_ms));
    v_before := cycles._lock_budgets(v_parsed.affected_scopes, v_parsed.unit);
    v_before := cycles._require_reservable(v_before, v_parsed);
    v_after := cycles._hold_reserved(v_before, v_parsed.estimate);

    -- Overage policy: the request's, else the matching policy's, else the
    -- deepest budget's, else the tenant's.
    v_policy := coalesce(
        v_policy,
        v_match.commit_overage_policy,
        cycles._deepest_overage_policy(v_before),
        v_tenant.default_commit_overage_policy,
        'ALLOW_IF_AVAILABLE');

    v_now_ms := cycles._now_ms();
    v_expires_ms := v_now_ms + v_ttl_ms;
    v_id := cycles._new_id('rsv_', 32);
    INSERT INTO cycles.reservations (
        reservation_id, tenant_id, api_key_id, idempotency_key, subject, action, unit, estimate,
        scope_path, affected_scopes, budgeted_scopes, overage_policy, status, created_at_ms,
        expires_at_ms, grace_period_ms, ttl_ms, extension_count, max_extensions, metadata,
        request_id, trace_id)
    VALUES (
        v_id, v_tenant.tenant_id, v_principal.o_key_id, v_parsed.idempotency_key, v_parsed.subject,
        v_parsed.action, v_parsed.unit, v_parsed.estimate, v_parsed.scope_path, v_parsed.affected_scopes,
        ARRAY(SELECT r.scope FROM unnest(v_after) AS r ORDER BY r.scope COLLATE "C"), v_policy, 'ACTIVE',
        v_now_ms, v_expires_ms, v_grace_ms, v_ttl_ms, 0,
        coalesce((v_match.reservation_ttl_override ->> 'max_extensions')::integer, v_tenant.max_reservation_extensions),
        cycles._request_object(p_request, 'metadata'), p_ctx ->> 'request_id', p_ctx ->> 'trace_id');

    PERFORM cycles._record_changes(v_before, v_after, 'RESERVE', v_actor, p_ctx,
        p_reservation_id => v_id, p_action => v_parsed.action, p_subject => v_parsed.subject,
        p_idempotency_key => v_parsed.idempotency_key);

    v_response := jsonb_build_object(
        'decision', CASE WHEN v_caps IS NOT NULL THEN 'ALLOW_WITH_CAPS' ELSE 'ALLOW' END,
        'reservation_id', v_id,
        'affected_scopes', to_jsonb(v_parsed.affected_scopes),
        'expires_at_ms', v_expires_ms,
        'remaining_ttl_ms', greatest(0, v_expires_ms - cycles._now_ms()),
        'scope_path', v_parsed.scope_path,
        'reserved', cycles._amount_json(v_parsed.unit, v_parsed.estimate),
        'balances', cycles._balances_json(v_after))
        || CASE WHEN v_caps IS NOT NULL THEN jsonb_build_object('caps', v_caps) ELSE '{}'::jsonb END;
    PERFORM cycles._idempotent_store(v_tenant.tenant_id, 'reserve', v_parsed.idempotency_key, v_hash,
                                     v_response, v_id, v_expires_ms + v_grace_ms);
    RETURN v_response;
END;
$$;

-- cycles.decide: POST /v1/decide.
--
-- Evaluates a would-be reservation and answers ALLOW or DENY with a
-- reason_code; never changes a balance. Every budget or tenant condition is a
-- 200 DENY (BUDGET_NOT_FOUND, TENANT_CLOSED, TENANT_SUSPENDED, and the reserve
-- checks); a DENY writes a reservation.denied event. The answer is stored
-- under the key (namespace 'decide') and replayed verbatim.
--
-- Locks: an advisory lock on (tenant, 'decide', idempotency key); no row locks.
--
-- An ALLOW under a matching policy with caps is ALLOW_WITH_CAPS with them.
--
-- Errors, in precedence order: UNAUTHORIZED; FORBIDDEN (permission
-- reservations:create); INVALID_REQUEST; FORBIDDEN (subject.tenant);
-- FORBIDDEN (scope outside the key's scope_filter); IDEMPOTENCY_MISMATCH;
-- UNIT_MISMATCH.
CREATE FUNCTION cycles.decide(p_api_key text, p_request jsonb, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_principal record;
    v_tenant    cycles.tenants;
    v_parsed    cycles.reserve_request;
    v_hash      bytea;
    v_response  jsonb;
    v_denial    record;
    v_caps      jsonb;
BEGIN
    v_principal := cycles._runtime_principal(p_api_key, 'reservations:create');
    v_tenant := v_principal.o_tenant;
    v_parsed := cycles._parse_reserve_request(p_request, v_tenant.tenant_id);
    v_parsed.scope_path := cycles._require_scope_in_filter(v_principal.o_scope_filter, v_parsed.scope_path);

    v_hash := cycles._request_hash(p_request);
    v_response := cycles._idempotent_replay(v_tenant.tenant_id, 'decide', v_parsed.idempotency_key, v_hash, true);
    IF v_response IS NOT NULL THEN
        RETURN v_response;
    END IF;

    v_denial := cycles._evaluate_reserve(v_tenant, v_parsed);
    IF v_denial.o_reason IS NULL THEN
        v_caps := cycles._policy_caps(cycles._match_policy(v_tenant.tenant_id, v_parsed.scope_path));
        v_response := jsonb_build_object(
            'decision', CASE WHEN v_caps IS NOT NULL THEN 'ALLOW_WITH_CAPS' ELSE 'ALLOW' END,
            'affected_scopes', to_jsonb(v_parsed.affected_scopes))
            || CASE WHEN v_caps IS NOT NULL THEN jsonb_build_object('caps', v_caps) ELSE '{}'::jsonb END;
    ELSE
        v_response := jsonb_build_object(
            'decision', 'DENY', 'reason_code', v_denial.o_reason,
            'affected_scopes', to_jsonb(v_parsed.affected_scopes));
        PERFORM cycles._emit_denied(v_tenant.tenant_id, v_parsed, v_denial.o_reason, v_denial.o_row,
                                    cycles._runtime_actor(p_ctx, v_principal.o_key_id), p_ctx);
    END IF;
    PERFORM cycles._idempotent_store(v_tenant.tenant_id, 'decide', v_parsed.idempotency_key, v_hash, v_response);
    RETURN v_response;
END;
$$;
