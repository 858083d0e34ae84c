-- Tenants: create, read, list, suspend, reactivate, close (with its cascade).
--
-- A tenant is the isolation boundary: every budget, key and reservation
-- belongs to one. Closing is terminal and, in the same transaction, drives
-- every owned object to its terminal state (the spec's "Mode A" cascade):
-- open reservations are released, budgets closed, keys revoked, and only then
-- is the tenant itself flipped to CLOSED. Either all of it commits or none.
--
-- Lock discipline shared by the admin functions:
--   tenant row  ->  reservation rows (ORDER BY reservation_id)  ->  budget rows (ORDER BY scope COLLATE "C", unit)
-- Changes to the tenant take FOR NO KEY UPDATE, which does not conflict with
-- the FOR KEY SHARE that foreign-key checks take when the runtime inserts
-- reservations, ledger rows and events: the hot path never waits on an admin
-- change of the tenant row. Admin changes to owned objects take FOR SHARE on
-- the tenant, so they serialise with a close but not with each other.

-- Shared private helpers of the admin plane ----------------------------------

-- ISO-8601 UTC timestamp with millisecond precision, as every admin response
-- and event payload renders it (independent of the session's TimeZone).
CREATE FUNCTION cycles._iso8601(p_ts timestamptz) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN to_char(p_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
END;
$$;

-- The page size of a list call: 1..100, default 50 (spec: limit).
CREATE FUNCTION cycles._page_limit(p_limit integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_limit IS NULL THEN
        RETURN 50;
    END IF;
    IF p_limit < 1 OR p_limit > 100 THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('limit must be between 1 and 100, got %s', p_limit));
    END IF;
    RETURN p_limit;
END;
$$;

-- Rejects option keys outside p_allowed: requests are additionalProperties:
-- false, so a misspelt option is an error rather than silently ignored.
CREATE FUNCTION cycles._require_known_options(p_options jsonb, p_allowed text[], p_what text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_unknown text[];
BEGIN
    IF p_options IS NULL THEN
        RETURN '{}'::jsonb;
    END IF;
    IF jsonb_typeof(p_options) <> 'object' THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('%s must be a JSON object', p_what));
    END IF;
    SELECT array_agg(k ORDER BY k) INTO v_unknown
    FROM jsonb_object_keys(p_options) AS k
    WHERE k <> ALL (p_allowed);
    IF v_unknown IS NOT NULL THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown %s: %s (allowed: %s)', p_what, array_to_string(v_unknown, ', '),
                   array_to_string(p_allowed, ', ')),
            jsonb_build_object('unknown', to_jsonb(v_unknown)));
    END IF;
    RETURN p_options;
END;
$$;

-- A string option, or NULL when absent or null.
CREATE FUNCTION cycles._text_option(p_options jsonb, p_key text, p_max_length integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_value jsonb := p_options -> p_key;
BEGIN
    IF v_value IS NULL OR v_value = 'null'::jsonb THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v_value) <> 'string' OR char_length(v_value #>> '{}') > p_max_length THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('%s must be a string of at most %s characters', p_key, p_max_length));
    END IF;
    RETURN v_value #>> '{}';
END;
$$;

-- Tenant metadata: string -> string, at most 32 entries (spec Tenant.metadata).
CREATE FUNCTION cycles._require_tenant_metadata(p_metadata jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_metadata IS NULL OR p_metadata = 'null'::jsonb THEN
        RETURN '{}'::jsonb;
    END IF;
    IF jsonb_typeof(p_metadata) <> 'object'
       OR (SELECT count(*) FROM jsonb_each(p_metadata)) > 32
       OR EXISTS (SELECT FROM jsonb_each(p_metadata) AS e WHERE jsonb_typeof(e.value) <> 'string') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            'metadata must be an object of at most 32 string values');
    END IF;
    RETURN p_metadata;
END;
$$;

-- The tenant an admin change of an owned object (budget, key) applies to,
-- locked FOR SHARE so that a concurrent close waits for the change (or the
-- change sees the tenant CLOSED). Errors: TENANT_NOT_FOUND, TENANT_CLOSED.
CREATE FUNCTION cycles._lock_tenant_for_child_change(p_tenant_id text) RETURNS cycles.tenants
LANGUAGE plpgsql
AS $$
DECLARE
    v_tenant cycles.tenants;
BEGIN
    SELECT t.* INTO v_tenant FROM cycles.tenants AS t WHERE t.tenant_id = p_tenant_id FOR SHARE;
    IF v_tenant.tenant_id IS NULL THEN
        PERFORM cycles._fail('TENANT_NOT_FOUND', format('tenant %L not found', p_tenant_id),
            jsonb_build_object('tenant_id', p_tenant_id));
    END IF;
    IF v_tenant.status = 'CLOSED' THEN
        PERFORM cycles._fail('TENANT_CLOSED', format('tenant %L is closed', p_tenant_id),
            jsonb_build_object('tenant_id', p_tenant_id));
    END IF;
    RETURN v_tenant;
END;
$$;

-- The spec's Tenant object, nulls omitted.
CREATE FUNCTION cycles._tenant_json(p_tenant cycles.tenants) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'tenant_id', p_tenant.tenant_id,
        'name', p_tenant.name,
        'status', p_tenant.status,
        'parent_tenant_id', p_tenant.parent_tenant_id,
        'default_commit_overage_policy', p_tenant.default_commit_overage_policy,
        'default_reservation_ttl_ms', p_tenant.default_reservation_ttl_ms,
        'max_reservation_ttl_ms', p_tenant.max_reservation_ttl_ms,
        'max_reservation_extensions', p_tenant.max_reservation_extensions,
        'metadata', p_tenant.metadata,
        'created_at', cycles._iso8601(p_tenant.created_at),
        'updated_at', cycles._iso8601(p_tenant.updated_at),
        'suspended_at', cycles._iso8601(p_tenant.suspended_at),
        'closed_at', cycles._iso8601(p_tenant.closed_at)));
END;
$$;

CREATE FUNCTION cycles._tenant_lifecycle_event(
    p_tenant cycles.tenants, p_event_type text, p_previous_status text, p_ctx jsonb,
    p_correlation_id text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN cycles._emit_event(
        p_tenant_id => p_tenant.tenant_id,
        p_event_type => p_event_type,
        p_source => 'cycles-admin',
        p_actor => cycles._actor(p_ctx),
        p_data => jsonb_build_object(
            'tenant_id', p_tenant.tenant_id,
            'previous_status', p_previous_status,
            'new_status', p_tenant.status,
            'changed_fields', CASE WHEN p_previous_status IS NULL THEN '[]'::jsonb ELSE '["status"]'::jsonb END),
        p_scope => 'tenant:' || p_tenant.tenant_id,
        p_request_id => p_ctx ->> 'request_id',
        p_trace_id => p_ctx ->> 'trace_id',
        p_correlation_id => p_correlation_id);
END;
$$;

-- cycles.create_tenant ---------------------------------------------------------
-- Registers a tenant. Idempotent on tenant_id: the same id with the same name
-- returns the existing tenant unchanged (options of the repeat are ignored,
-- as a retry must not reconfigure); the same id with another name is a
-- conflict.
-- Options (p_options): parent_tenant_id, default_commit_overage_policy,
--   default_reservation_ttl_ms, max_reservation_ttl_ms,
--   max_reservation_extensions, metadata.
-- Locks: inserts the tenant row (ON CONFLICT waits for a concurrent insert of
--   the same id); FOR KEY SHARE on the parent through the foreign key.
-- Errors, in precedence order:
--   INVALID_REQUEST    malformed id or name, unknown option, option out of range
--   DUPLICATE_RESOURCE the id exists with a different name
--   TENANT_NOT_FOUND   parent_tenant_id does not exist
-- Authorization: the admin only (cycles._admin_principal).
-- Invariants: emits tenant.created exactly once per tenant; one audit row
-- (createTenant) per successful call.
-- Returns the Tenant; when p_ctx ->> 'with_status' is true (the HTTP layer),
-- {"status": 201|200, "body": Tenant} so the caller can tell a new tenant
-- from an idempotent repeat.
CREATE FUNCTION cycles.create_tenant(
    p_tenant_id text,
    p_name      text,
    p_options   jsonb DEFAULT '{}',
    p_ctx       jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx      jsonb := cycles._admin_principal(p_ctx, NULL);
    v_options  jsonb;
    v_parent   text;
    v_tenant   cycles.tenants;
    v_status   integer := 201;
BEGIN
    IF p_tenant_id IS NULL OR p_tenant_id !~ '^[a-z0-9-]{3,64}$' THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('tenant_id %L must match ^[a-z0-9-]+$ and be 3 to 64 characters long', p_tenant_id));
    END IF;
    IF p_name IS NULL OR char_length(p_name) NOT BETWEEN 1 AND 256 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'name must be 1 to 256 characters long');
    END IF;
    v_options := cycles._require_known_options(p_options, ARRAY[
        'parent_tenant_id', 'default_commit_overage_policy', 'default_reservation_ttl_ms',
        'max_reservation_ttl_ms', 'max_reservation_extensions', 'metadata'], 'tenant option');
    v_parent := cycles._text_option(v_options, 'parent_tenant_id', 64);

    INSERT INTO cycles.tenants AS t (
        tenant_id, name, parent_tenant_id, default_commit_overage_policy,
        default_reservation_ttl_ms, max_reservation_ttl_ms, max_reservation_extensions, metadata)
    SELECT p_tenant_id, p_name, v_parent,
        coalesce(cycles._require_overage_policy(cycles._text_option(v_options, 'default_commit_overage_policy', 64)),
                 'ALLOW_IF_AVAILABLE'),
        cycles._json_int(v_options, 'default_reservation_ttl_ms', 1000, 86400000, 60000),
        cycles._json_int(v_options, 'max_reservation_ttl_ms', 1000, 86400000, 3600000),
        cycles._json_int(v_options, 'max_reservation_extensions', 0, 10000, 10),
        cycles._require_tenant_metadata(v_options -> 'metadata')
    WHERE v_parent IS NULL
       OR (v_parent <> p_tenant_id AND EXISTS (SELECT FROM cycles.tenants AS p WHERE p.tenant_id = v_parent))
    ON CONFLICT ON CONSTRAINT tenants_pkey DO NOTHING
    RETURNING t.* INTO v_tenant;

    IF v_tenant.tenant_id IS NULL THEN
        SELECT t.* INTO v_tenant FROM cycles.tenants AS t WHERE t.tenant_id = p_tenant_id;
        IF v_tenant.tenant_id IS NULL THEN
            PERFORM cycles._fail('TENANT_NOT_FOUND', format('parent tenant %L not found', v_parent),
                jsonb_build_object('parent_tenant_id', v_parent));
        END IF;
        IF v_tenant.name IS DISTINCT FROM p_name THEN
            PERFORM cycles._fail('DUPLICATE_RESOURCE',
                format('tenant %L already exists with a different name', p_tenant_id),
                jsonb_build_object('tenant_id', p_tenant_id));
        END IF;
        v_status := 200;
    ELSE
        PERFORM cycles._tenant_lifecycle_event(v_tenant, 'tenant.created', NULL, v_ctx);
    END IF;
    PERFORM cycles._audit(v_ctx, 'createTenant', 'tenant', p_tenant_id, v_status, p_tenant_id);
    IF (p_ctx ->> 'with_status')::boolean THEN
        RETURN jsonb_build_object('status', v_status, 'body', cycles._tenant_json(v_tenant));
    END IF;
    RETURN cycles._tenant_json(v_tenant);
END;
$$;

-- cycles.get_tenant ------------------------------------------------------------
-- The Tenant object. Reads only; allowed whatever the tenant's status.
-- Authorization: the admin only. Writes one audit row (getTenant).
-- Errors: INSUFFICIENT_PERMISSIONS, TENANT_NOT_FOUND.
CREATE FUNCTION cycles.get_tenant(p_tenant_id text, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, NULL);
    v_tenant cycles.tenants;
BEGIN
    SELECT t.* INTO v_tenant FROM cycles.tenants AS t WHERE t.tenant_id = p_tenant_id;
    IF v_tenant.tenant_id IS NULL THEN
        PERFORM cycles._fail('TENANT_NOT_FOUND', format('tenant %L not found', p_tenant_id),
            jsonb_build_object('tenant_id', p_tenant_id));
    END IF;
    PERFORM cycles._audit(v_ctx, 'getTenant', 'tenant', p_tenant_id, 200, p_tenant_id);
    RETURN cycles._tenant_json(v_tenant);
END;
$$;

-- cycles.list_tenants ----------------------------------------------------------
-- A page of tenants, newest first: {tenants, has_more, next_cursor}. The
-- cursor is the tenant_id of the last row of the previous page. p_search is a
-- case-insensitive substring of tenant_id or name (empty means absent).
-- Authorization: the admin only. Writes one audit row (listTenants).
-- Errors: INSUFFICIENT_PERMISSIONS; INVALID_REQUEST (unknown status, limit
-- outside 1..100, search longer than 128, unknown cursor).
CREATE FUNCTION cycles.list_tenants(
    p_status           text DEFAULT NULL,
    p_parent_tenant_id text DEFAULT NULL,
    p_search           text DEFAULT NULL,
    p_limit            integer DEFAULT 50,
    p_cursor           text DEFAULT NULL,
    p_ctx              jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, NULL);
    v_limit  integer := cycles._page_limit(p_limit);
    v_after  cycles.tenants;
    v_search text := lower(nullif(p_search, ''));
    v_rows   cycles.tenants[];
BEGIN
    IF p_status IS NOT NULL AND p_status NOT IN ('ACTIVE', 'SUSPENDED', 'CLOSED') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown tenant status %L: expected ACTIVE, SUSPENDED or CLOSED', p_status));
    END IF;
    IF char_length(v_search) > 128 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'search must be at most 128 characters');
    END IF;
    IF p_cursor IS NOT NULL THEN
        SELECT t.* INTO v_after FROM cycles.tenants AS t WHERE t.tenant_id = p_cursor;
        IF v_after.tenant_id IS NULL THEN
            PERFORM cycles._fail('INVALID_REQUEST', format('unknown cursor %L', p_cursor));
        END IF;
    END IF;

    SELECT coalesce(array_agg(page ORDER BY page.created_at DESC, page.tenant_id DESC), '{}') INTO v_rows
    FROM (
        SELECT t.*
        FROM cycles.tenants AS t
        WHERE (p_status IS NULL OR t.status = p_status)
          AND (p_parent_tenant_id IS NULL OR t.parent_tenant_id = p_parent_tenant_id)
          AND (v_search IS NULL OR strpos(t.tenant_id, v_search) > 0 OR strpos(lower(t.name), v_search) > 0)
          AND (v_after.tenant_id IS NULL OR (t.created_at, t.tenant_id) < (v_after.created_at, v_after.tenant_id))
        ORDER BY t.created_at DESC, t.tenant_id DESC
        LIMIT v_limit + 1
    ) AS page;

    PERFORM cycles._audit(v_ctx, 'listTenants', 'tenant', NULL, 200);
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'tenants', coalesce((SELECT jsonb_agg(cycles._tenant_json(v_rows[i]) ORDER BY i)
                             FROM generate_series(1, least(cardinality(v_rows), v_limit)) AS i), '[]'::jsonb),
        'has_more', cardinality(v_rows) > v_limit,
        'next_cursor', CASE WHEN cardinality(v_rows) > v_limit THEN (v_rows[v_limit]).tenant_id END));
END;
$$;

-- cycles._suspend_tenant -------------------------------------------------------
-- The transition behind cycles.suspend_tenant, update_tenant and the bulk
-- action (no authorization, no audit row: the public caller does both).
-- ACTIVE -> SUSPENDED: new reservations are refused; open ones may still be
-- committed or released. Suspending a SUSPENDED tenant is a no-op (no event).
-- Locks: the tenant row FOR NO KEY UPDATE.
-- Errors: TENANT_NOT_FOUND; INVALID_TRANSITION when the tenant is CLOSED.
-- Invariants: emits tenant.suspended on the transition.
CREATE FUNCTION cycles._suspend_tenant(p_tenant_id text, p_ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_tenant cycles.tenants;
BEGIN
    SELECT t.* INTO v_tenant FROM cycles.tenants AS t WHERE t.tenant_id = p_tenant_id FOR NO KEY UPDATE;
    IF v_tenant.tenant_id IS NULL THEN
        PERFORM cycles._fail('TENANT_NOT_FOUND', format('tenant %L not found', p_tenant_id),
            jsonb_build_object('tenant_id', p_tenant_id));
    END IF;
    IF v_tenant.status = 'CLOSED' THEN
        PERFORM cycles._fail('INVALID_TRANSITION', format('tenant %L is CLOSED, which is irreversible', p_tenant_id),
            jsonb_build_object('tenant_id', p_tenant_id, 'status', v_tenant.status));
    END IF;
    IF v_tenant.status = 'SUSPENDED' THEN
        RETURN cycles._tenant_json(v_tenant);
    END IF;
    UPDATE cycles.tenants AS t
    SET status = 'SUSPENDED', suspended_at = clock_timestamp(), updated_at = clock_timestamp()
    WHERE t.tenant_id = p_tenant_id
    RETURNING t.* INTO v_tenant;
    PERFORM cycles._tenant_lifecycle_event(v_tenant, 'tenant.suspended', 'ACTIVE', p_ctx,
        p_ctx ->> 'correlation_id');
    RETURN cycles._tenant_json(v_tenant);
END;
$$;

-- cycles._reactivate_tenant ----------------------------------------------------
-- The transition behind cycles.reactivate_tenant, update_tenant and the bulk
-- action (no authorization, no audit row). SUSPENDED -> ACTIVE. Reactivating an ACTIVE tenant is a no-op (no event).
-- Locks: the tenant row FOR NO KEY UPDATE.
-- Errors: TENANT_NOT_FOUND; INVALID_TRANSITION when the tenant is CLOSED.
-- Invariants: emits tenant.reactivated on the transition.
CREATE FUNCTION cycles._reactivate_tenant(p_tenant_id text, p_ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_tenant cycles.tenants;
BEGIN
    SELECT t.* INTO v_tenant FROM cycles.tenants AS t WHERE t.tenant_id = p_tenant_id FOR NO KEY UPDATE;
    IF v_tenant.tenant_id IS NULL THEN
        PERFORM cycles._fail('TENANT_NOT_FOUND', format('tenant %L not found', p_tenant_id),
            jsonb_build_object('tenant_id', p_tenant_id));
    END IF;
    IF v_tenant.status = 'CLOSED' THEN
        PERFORM cycles._fail('INVALID_TRANSITION', format('tenant %L is CLOSED, which is irreversible', p_tenant_id),
            jsonb_build_object('tenant_id', p_tenant_id, 'status', v_tenant.status));
    END IF;
    IF v_tenant.status = 'ACTIVE' THEN
        RETURN cycles._tenant_json(v_tenant);
    END IF;
    UPDATE cycles.tenants AS t
    SET status = 'ACTIVE', suspended_at = NULL, updated_at = clock_timestamp()
    WHERE t.tenant_id = p_tenant_id
    RETURNING t.* INTO v_tenant;
    PERFORM cycles._tenant_lifecycle_event(v_tenant, 'tenant.reactivated', 'SUSPENDED', p_ctx,
        p_ctx ->> 'correlation_id');
    RETURN cycles._tenant_json(v_tenant);
END;
$$;

-- cycles._close_tenant ---------------------------------------------------------
-- The close behind cycles.close_tenant, update_tenant and the bulk action (no
-- authorization, no audit row). ACTIVE|SUSPENDED -> CLOSED, irreversibly, with the whole cascade in this
-- transaction, in this order:
--   1. every ACTIVE reservation of the tenant -> RELEASED, release_reason
--      'tenant_closed': its estimate leaves `reserved` (and returns to
--      `remaining`) on each of its budgeted scopes, one RELEASE ledger row per
--      scope; no debt is created. Should a budget still hold reserved after
--      that (no reservation accounts for it), the rest is drained with one
--      RELEASE ledger row, so the closed budget holds nothing in flight;
--   2. every budget that is not CLOSED -> CLOSED (closed_at set), one CLOSE
--      ledger row with zero deltas;
--   3. every ACTIVE key -> REVOKED, revoked_reason 'tenant_closed';
--   3b. every ACTIVE|PAUSED webhook subscription -> DISABLED, its open
--      deliveries failed (cycles._disable_tenant_webhooks);
--   4. the tenant -> CLOSED.
-- Events: reservation.released_via_tenant_cascade (one per budget whose
-- reserved was > 0, with released_amount), budget.closed_via_tenant_cascade,
-- api_key.revoked_via_tenant_cascade, webhook.disabled_via_tenant_cascade,
-- then tenant.closed, all with
-- correlation_id 'tenant_close_cascade:<tenant_id>:<request_id>' (a request
-- id is generated when the caller gives none); a bulk close gives
-- tenant.closed the bulk correlation id (p_ctx ->> 'correlation_id').
-- Closing a CLOSED tenant is a no-op at the tenant level (no tenant.closed
-- event) that re-drives the cascade: anything still open is closed, so the
-- call converges whatever happened before.
-- Locks, in order: the tenant row FOR NO KEY UPDATE; the tenant's ACTIVE
-- reservations ORDER BY reservation_id (the order commit/release/expiry take
-- a reservation before its budgets); the tenant's budgets ORDER BY scope
-- COLLATE "C", unit; reservations that became visible while waiting for the
-- budgets; the tenant's ACTIVE keys.
-- Errors: TENANT_NOT_FOUND.
-- Invariants: every budget's counters change only together with a ledger row
-- carrying the same deltas; remaining = allocated - spent - reserved - debt.
CREATE FUNCTION cycles._close_tenant(p_tenant_id text, p_ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_tenant      cycles.tenants;
    v_previous    text;
    v_ctx         jsonb := coalesce(p_ctx, '{}'::jsonb);
    v_actor       jsonb := cycles._actor(p_ctx);
    v_request_id  text;
    v_correlation text;
    v_now_ms      bigint := cycles._now_ms();
    v_reservation cycles.reservations;
    v_budget      cycles.budgets;
    v_key         cycles.api_keys;
    v_drained     bigint;
    v_prior_reserved jsonb;
BEGIN
    SELECT t.* INTO v_tenant FROM cycles.tenants AS t WHERE t.tenant_id = p_tenant_id FOR NO KEY UPDATE;
    IF v_tenant.tenant_id IS NULL THEN
        PERFORM cycles._fail('TENANT_NOT_FOUND', format('tenant %L not found', p_tenant_id),
            jsonb_build_object('tenant_id', p_tenant_id));
    END IF;
    v_previous := v_tenant.status;
    v_request_id := coalesce(v_ctx ->> 'request_id', cycles._new_id('req_', 32));
    v_correlation := format('tenant_close_cascade:%s:%s', p_tenant_id, v_request_id);

    -- Lock order: reservations first, as commit/release/expiry do.
    PERFORM FROM cycles.reservations AS r
    WHERE r.tenant_id = p_tenant_id AND r.status = 'ACTIVE'
    ORDER BY r.reservation_id
    FOR UPDATE;

    -- Budgets, in the global lock order, remembering what each held before.
    SELECT coalesce(jsonb_object_agg(locked.budget_id::text, locked.reserved), '{}'::jsonb) INTO v_prior_reserved
    FROM (
        SELECT b.budget_id, b.reserved
        FROM cycles.budgets AS b
        WHERE b.tenant_id = p_tenant_id
        ORDER BY b.scope COLLATE "C", b.unit
        FOR UPDATE
    ) AS locked;

    -- 1. Release every open reservation (including any committed by a
    --    reserve that finished while this call waited for the budget locks).
    FOR v_reservation IN
        SELECT r.* FROM cycles.reservations AS r
        WHERE r.tenant_id = p_tenant_id AND r.status = 'ACTIVE'
        ORDER BY r.reservation_id
        FOR UPDATE
    LOOP
        IF v_reservation.estimate > 0 THEN
            FOR v_budget IN
                UPDATE cycles.budgets AS b
                SET reserved = b.reserved - v_reservation.estimate,
                    remaining = b.remaining + v_reservation.estimate,
                    updated_at = clock_timestamp()
                WHERE b.scope = ANY (v_reservation.budgeted_scopes) AND b.unit = v_reservation.unit
                  AND b.tenant_id = p_tenant_id
                RETURNING b.*
            LOOP
                PERFORM cycles._append_ledger(
                    p_budget_id => v_budget.budget_id, p_tenant_id => p_tenant_id,
                    p_scope => v_budget.scope, p_unit => v_budget.unit, p_operation => 'RELEASE',
                    p_actor => v_actor, p_reserved_delta => -v_reservation.estimate,
                    p_reservation_id => v_reservation.reservation_id, p_reason => 'tenant_closed',
                    p_request_id => v_request_id, p_trace_id => v_ctx ->> 'trace_id');
            END LOOP;
        END IF;
        UPDATE cycles.reservations AS r
        SET status = 'RELEASED', finalized_at_ms = greatest(v_now_ms, r.created_at_ms),
            released = r.estimate, release_reason = 'tenant_closed'
        WHERE r.tenant_id = p_tenant_id AND r.reservation_id = v_reservation.reservation_id;
    END LOOP;

    -- 2. Close every budget, draining whatever reserved is left.
    FOR v_budget IN
        SELECT b.* FROM cycles.budgets AS b
        WHERE b.tenant_id = p_tenant_id
        ORDER BY b.scope COLLATE "C", b.unit
    LOOP
        v_drained := v_budget.reserved;
        IF v_drained > 0 THEN
            UPDATE cycles.budgets AS b
            SET reserved = 0, remaining = b.remaining + v_drained, updated_at = clock_timestamp()
            WHERE b.tenant_id = v_budget.tenant_id AND b.budget_id = v_budget.budget_id;
            PERFORM cycles._append_ledger(
                p_budget_id => v_budget.budget_id, p_tenant_id => p_tenant_id,
                p_scope => v_budget.scope, p_unit => v_budget.unit, p_operation => 'RELEASE',
                p_actor => v_actor, p_reserved_delta => -v_drained, p_reason => 'tenant_closed',
                p_request_id => v_request_id, p_trace_id => v_ctx ->> 'trace_id');
        END IF;

        v_drained := (v_prior_reserved ->> v_budget.budget_id::text)::bigint;
        IF v_drained > 0 THEN
            PERFORM cycles._emit_event(
                p_tenant_id => p_tenant_id, p_event_type => 'reservation.released_via_tenant_cascade',
                p_source => 'cycles-admin', p_actor => v_actor,
                p_data => jsonb_build_object(
                    'ledger_id', v_budget.budget_id::text, 'scope', v_budget.scope, 'unit', v_budget.unit,
                    'prior_status', v_budget.status, 'released_amount', v_drained,
                    'cascade_reason', 'tenant_closed'),
                p_scope => v_budget.scope, p_request_id => v_request_id,
                p_trace_id => v_ctx ->> 'trace_id', p_correlation_id => v_correlation);
        END IF;

        IF v_budget.status <> 'CLOSED' THEN
            UPDATE cycles.budgets AS b
            SET status = 'CLOSED', closed_at = clock_timestamp(), updated_at = clock_timestamp()
            WHERE b.tenant_id = v_budget.tenant_id AND b.budget_id = v_budget.budget_id;
            PERFORM cycles._append_ledger(
                p_budget_id => v_budget.budget_id, p_tenant_id => p_tenant_id,
                p_scope => v_budget.scope, p_unit => v_budget.unit, p_operation => 'CLOSE',
                p_actor => v_actor, p_reason => 'tenant_closed',
                p_request_id => v_request_id, p_trace_id => v_ctx ->> 'trace_id');
            PERFORM cycles._emit_event(
                p_tenant_id => p_tenant_id, p_event_type => 'budget.closed_via_tenant_cascade',
                p_source => 'cycles-admin', p_actor => v_actor,
                p_data => jsonb_build_object(
                    'ledger_id', v_budget.budget_id::text, 'scope', v_budget.scope, 'unit', v_budget.unit,
                    'prior_status', v_budget.status, 'new_status', 'CLOSED',
                    'cascade_reason', 'tenant_closed'),
                p_scope => v_budget.scope, p_request_id => v_request_id,
                p_trace_id => v_ctx ->> 'trace_id', p_correlation_id => v_correlation);
        END IF;
    END LOOP;

    -- 3. Revoke every key.
    FOR v_key IN
        UPDATE cycles.api_keys AS k
        SET status = 'REVOKED', revoked_at = clock_timestamp(), revoked_reason = 'tenant_closed'
        WHERE k.key_id IN (
            SELECT a.key_id FROM cycles.api_keys AS a
            WHERE a.tenant_id = p_tenant_id AND a.status = 'ACTIVE'
            ORDER BY a.key_id
            FOR UPDATE)
        RETURNING k.*
    LOOP
        PERFORM cycles._emit_event(
            p_tenant_id => p_tenant_id, p_event_type => 'api_key.revoked_via_tenant_cascade',
            p_source => 'cycles-admin', p_actor => v_actor,
            p_data => jsonb_build_object(
                'key_id', v_key.key_id, 'name', v_key.name, 'prior_status', 'ACTIVE',
                'new_status', 'REVOKED', 'cascade_reason', 'tenant_closed'),
            p_request_id => v_request_id, p_trace_id => v_ctx ->> 'trace_id',
            p_correlation_id => v_correlation);
    END LOOP;

    -- 3b. Disable every webhook subscription (sql/30_webhooks.sql).
    PERFORM cycles._disable_tenant_webhooks(
        p_tenant_id, v_ctx || jsonb_build_object('request_id', v_request_id), v_correlation);

    -- 4. The tenant, last.
    IF v_previous <> 'CLOSED' THEN
        UPDATE cycles.tenants AS t
        SET status = 'CLOSED', closed_at = clock_timestamp(), updated_at = clock_timestamp()
        WHERE t.tenant_id = p_tenant_id
        RETURNING t.* INTO v_tenant;
        PERFORM cycles._tenant_lifecycle_event(
            v_tenant, 'tenant.closed', v_previous, v_ctx || jsonb_build_object('request_id', v_request_id),
            coalesce(v_ctx ->> 'correlation_id', v_correlation));
    END IF;
    RETURN cycles._tenant_json(v_tenant);
END;
$$;

-- cycles.suspend_tenant / cycles.reactivate_tenant / cycles.close_tenant ------
-- The lifecycle transitions for psql callers (REST expresses them as PATCH
-- status, cycles.update_tenant): see cycles._suspend_tenant,
-- cycles._reactivate_tenant and cycles._close_tenant for their semantics,
-- locks and errors. Authorization: the admin only
-- (INSUFFICIENT_PERMISSIONS first). One audit row per successful call.
CREATE FUNCTION cycles.suspend_tenant(p_tenant_id text, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, NULL);
    v_result jsonb;
BEGIN
    v_result := cycles._suspend_tenant(p_tenant_id, v_ctx);
    PERFORM cycles._audit(v_ctx, 'suspendTenant', 'tenant', p_tenant_id, 200, p_tenant_id);
    RETURN v_result;
END;
$$;

CREATE FUNCTION cycles.reactivate_tenant(p_tenant_id text, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, NULL);
    v_result jsonb;
BEGIN
    v_result := cycles._reactivate_tenant(p_tenant_id, v_ctx);
    PERFORM cycles._audit(v_ctx, 'reactivateTenant', 'tenant', p_tenant_id, 200, p_tenant_id);
    RETURN v_result;
END;
$$;

CREATE FUNCTION cycles.close_tenant(p_tenant_id text, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, NULL);
    v_result jsonb;
BEGIN
    v_result := cycles._close_tenant(p_tenant_id, v_ctx);
    PERFORM cycles._audit(v_ctx, 'closeTenant', 'tenant', p_tenant_id, 200, p_tenant_id);
    RETURN v_result;
END;
$$;

-- cycles.update_tenant -------------------------------------------------------
-- PATCH /v1/admin/tenants/{tenant_id}. p_patch may hold name (1..256),
-- metadata (<= 32 string values), default_commit_overage_policy,
-- default_reservation_ttl_ms and max_reservation_ttl_ms (1000..86400000),
-- max_reservation_extensions (>= 0) and status (ACTIVE, SUSPENDED, CLOSED).
-- Property changes are applied first (one tenant.settings_changed event when
-- a default_* field changed, else one tenant.updated, each listing
-- changed_fields; nothing when no value differs), then the status transition
-- (see cycles._suspend_tenant, _reactivate_tenant, _close_tenant: CLOSED
-- runs the whole cascade in this transaction). Returns the Tenant.
-- Authorization: the admin only.
-- Locks: the tenant row FOR NO KEY UPDATE (then whatever the transition
-- takes, in its documented order).
-- Errors, in precedence order:
--   INSUFFICIENT_PERMISSIONS  a tenant key
--   INVALID_REQUEST           unknown field, malformed value, empty patch
--   TENANT_NOT_FOUND          no such tenant
--   TENANT_CLOSED             a property change on a CLOSED tenant
--   INVALID_TRANSITION        status ACTIVE or SUSPENDED on a CLOSED tenant
-- Invariants: one audit row (updateTenant) per successful call.
CREATE FUNCTION cycles.update_tenant(p_tenant_id text, p_patch jsonb, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx      jsonb := cycles._admin_principal(p_ctx, NULL);
    v_patch    jsonb;
    v_status   text;
    v_before   cycles.tenants;
    v_after    cycles.tenants;
    v_changed  text[];
    v_settings boolean;
BEGIN
    v_patch := cycles._require_known_options(p_patch, ARRAY[
        'name', 'status', 'metadata', 'default_commit_overage_policy', 'default_reservation_ttl_ms',
        'max_reservation_ttl_ms', 'max_reservation_extensions'], 'tenant field');
    IF v_patch = '{}'::jsonb THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'the patch names no field to change');
    END IF;
    IF EXISTS (SELECT FROM jsonb_each(v_patch) AS e WHERE e.value = 'null'::jsonb) THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'tenant fields cannot be set to null');
    END IF;
    v_status := cycles._text_option(v_patch, 'status', 16);
    IF v_status IS NOT NULL AND v_status NOT IN ('ACTIVE', 'SUSPENDED', 'CLOSED') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown tenant status %L: expected ACTIVE, SUSPENDED or CLOSED', v_status));
    END IF;
    IF v_patch ? 'name' AND char_length(coalesce(cycles._text_option(v_patch, 'name', 256), '')) = 0 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'name must be 1 to 256 characters long');
    END IF;
    PERFORM cycles._require_overage_policy(cycles._text_option(v_patch, 'default_commit_overage_policy', 64));
    PERFORM cycles._json_int(v_patch, 'default_reservation_ttl_ms', 1000, 86400000, NULL);
    PERFORM cycles._json_int(v_patch, 'max_reservation_ttl_ms', 1000, 86400000, NULL);
    PERFORM cycles._json_int(v_patch, 'max_reservation_extensions', 0, 10000, NULL);
    IF v_patch ? 'metadata' THEN
        PERFORM cycles._require_tenant_metadata(v_patch -> 'metadata');
    END IF;

    SELECT t.* INTO v_before FROM cycles.tenants AS t WHERE t.tenant_id = p_tenant_id FOR NO KEY UPDATE;
    IF v_before.tenant_id IS NULL THEN
        PERFORM cycles._fail('TENANT_NOT_FOUND', format('tenant %L not found', p_tenant_id),
            jsonb_build_object('tenant_id', p_tenant_id));
    END IF;

    UPDATE cycles.tenants AS t SET
        name = coalesce(v_patch ->> 'name', t.name),
        metadata = coalesce(v_patch -> 'metadata', t.metadata),
        default_commit_overage_policy = coalesce(v_patch ->> 'default_commit_overage_policy',
                                                 t.default_commit_overage_policy),
        default_reservation_ttl_ms = coalesce(cycles._json_int(v_patch, 'default_reservation_ttl_ms', 1000, 86400000, NULL),
                                              t.default_reservation_ttl_ms),
        max_reservation_ttl_ms = coalesce(cycles._json_int(v_patch, 'max_reservation_ttl_ms', 1000, 86400000, NULL),
                                          t.max_reservation_ttl_ms),
        max_reservation_extensions = coalesce(cycles._json_int(v_patch, 'max_reservation_extensions', 0, 10000, NULL)::integer,
                                              t.max_reservation_extensions)
    WHERE t.tenant_id = p_tenant_id
    RETURNING t.* INTO v_after;

    SELECT array_agg(f ORDER BY f) INTO v_changed
    FROM unnest(ARRAY['name', 'metadata', 'default_commit_overage_policy', 'default_reservation_ttl_ms',
                      'max_reservation_ttl_ms', 'max_reservation_extensions']) AS f
    WHERE to_jsonb(v_before) -> f IS DISTINCT FROM to_jsonb(v_after) -> f;

    IF v_changed IS NOT NULL THEN
        IF v_before.status = 'CLOSED' THEN
            PERFORM cycles._fail('TENANT_CLOSED', format('tenant %L is closed', p_tenant_id),
                jsonb_build_object('tenant_id', p_tenant_id));
        END IF;
        UPDATE cycles.tenants AS t SET updated_at = clock_timestamp()
        WHERE t.tenant_id = p_tenant_id
        RETURNING t.* INTO v_after;
        v_settings := EXISTS (SELECT FROM unnest(v_changed) AS f WHERE f LIKE '%default%' OR f LIKE 'max_%');
        PERFORM cycles._emit_event(
            p_tenant_id => p_tenant_id,
            p_event_type => CASE WHEN v_settings THEN 'tenant.settings_changed' ELSE 'tenant.updated' END,
            p_source => 'cycles-admin', p_actor => cycles._actor(v_ctx),
            p_data => jsonb_build_object(
                'tenant_id', p_tenant_id, 'previous_status', v_before.status, 'new_status', v_after.status,
                'changed_fields', to_jsonb(v_changed)),
            p_scope => 'tenant:' || p_tenant_id, p_request_id => v_ctx ->> 'request_id',
            p_trace_id => v_ctx ->> 'trace_id');
    END IF;

    IF v_status = 'SUSPENDED' THEN
        PERFORM cycles._suspend_tenant(p_tenant_id, v_ctx);
    ELSIF v_status = 'ACTIVE' THEN
        PERFORM cycles._reactivate_tenant(p_tenant_id, v_ctx);
    ELSIF v_status = 'CLOSED' THEN
        PERFORM cycles._close_tenant(p_tenant_id, v_ctx);
    END IF;

    SELECT t.* INTO v_after FROM cycles.tenants AS t WHERE t.tenant_id = p_tenant_id;
    PERFORM cycles._audit(v_ctx, 'updateTenant', 'tenant', p_tenant_id, 200, p_tenant_id,
        p_metadata => jsonb_build_object('changed_fields', (SELECT jsonb_agg(k ORDER BY k)
                                                            FROM jsonb_object_keys(v_patch) AS k)));
    RETURN cycles._tenant_json(v_after);
END;
$$;
