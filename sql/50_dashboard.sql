-- The operator dashboard (/dashboard): its sessions and its overview figures.
--
-- A dashboard login is kept server-side: the browser holds only a random
-- token in an HttpOnly cookie, and this table holds the SHA-256 of that token,
-- so a copy of the table cannot be replayed as a cookie. A tenant-key login
-- also needs the key's secret on every call (the admin functions
-- authenticate it themselves); the server stores it encrypted (AES-GCM) with
-- a key derived from the cookie token, so neither the table nor the cookie alone
-- reveals it. An admin-key login stores no secret: the server holds the admin
-- key. Sessions live in the database so that every server worker sees them.

CREATE TABLE cycles.dashboard_sessions (
    session_hash   bytea       NOT NULL,
    principal_kind text        NOT NULL,
    tenant_id      text,
    key_id         text,
    sealed_key     bytea,
    csrf_token     text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at     timestamptz NOT NULL,
    CONSTRAINT dashboard_sessions_pkey PRIMARY KEY (session_hash),
    CONSTRAINT dashboard_sessions_tenant_fkey FOREIGN KEY (tenant_id) REFERENCES cycles.tenants (tenant_id),
    CONSTRAINT dashboard_sessions_hash_length CHECK (octet_length(session_hash) = 32),
    CONSTRAINT dashboard_sessions_kind_valid CHECK (principal_kind IN ('admin', 'tenant')),
    CONSTRAINT dashboard_sessions_principal_consistent CHECK (
        CASE principal_kind
            WHEN 'admin' THEN tenant_id IS NULL AND key_id IS NULL AND sealed_key IS NULL
            ELSE tenant_id IS NOT NULL AND key_id IS NOT NULL AND sealed_key IS NOT NULL
        END),
    CONSTRAINT dashboard_sessions_csrf_length CHECK (char_length(csrf_token) BETWEEN 32 AND 128),
    CONSTRAINT dashboard_sessions_expiry_after_creation CHECK (expires_at > created_at)
);

CREATE INDEX dashboard_sessions_expires_idx ON cycles.dashboard_sessions (expires_at);

-- cycles.dashboard_open_session: a dashboard login.
--
-- Authenticates the principal exactly as an admin call does (p_ctx carries
-- the tenant key's secret, or actor admin when the server has verified the
-- admin key), requires admin:read of a tenant key, stores the session and
-- audits the login as dashboardLogin. Expired sessions are removed on the way
-- (logins are rare, so this keeps the table small without a sweeper).
-- Locks: the new row only. Errors: UNAUTHORIZED, KEY_REVOKED,
-- TENANT_SUSPENDED, TENANT_CLOSED, INSUFFICIENT_PERMISSIONS, INVALID_REQUEST
-- (bad hash, secret, token or lifetime).
CREATE FUNCTION cycles.dashboard_open_session(
    p_session_hash bytea,
    p_sealed_key   bytea,
    p_csrf_token   text,
    p_ttl_seconds  integer,
    p_ctx          jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx     jsonb := cycles._admin_principal(p_ctx, ARRAY['admin:read']);
    v_tenant  text := v_ctx ->> 'principal_tenant_id';
    v_key_id  text := CASE WHEN v_ctx ? 'principal_tenant_id' THEN v_ctx ->> 'key_id' END;
    v_expires timestamptz;
BEGIN
    IF p_session_hash IS NULL OR octet_length(p_session_hash) <> 32 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'session hash must be 32 bytes');
    END IF;
    IF (v_tenant IS NULL) <> (p_sealed_key IS NULL) THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'a sealed key is stored for tenant-key sessions only');
    END IF;
    IF p_csrf_token IS NULL OR char_length(p_csrf_token) NOT BETWEEN 32 AND 128 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'csrf token must be 32 to 128 characters');
    END IF;
    IF p_ttl_seconds IS NULL OR p_ttl_seconds NOT BETWEEN 60 AND 86400 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'session lifetime must be 60 to 86400 seconds');
    END IF;
    v_expires := clock_timestamp() + make_interval(secs => p_ttl_seconds);
    DELETE FROM cycles.dashboard_sessions AS s WHERE s.expires_at <= clock_timestamp();
    INSERT INTO cycles.dashboard_sessions (
        session_hash, principal_kind, tenant_id, key_id, sealed_key, csrf_token, expires_at)
    VALUES (
        p_session_hash, CASE WHEN v_tenant IS NULL THEN 'admin' ELSE 'tenant' END, v_tenant, v_key_id,
        p_sealed_key, p_csrf_token, v_expires);
    PERFORM cycles._audit(v_ctx, 'dashboardLogin', 'dashboard_session', NULL, 200, v_tenant);
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'principal', CASE WHEN v_tenant IS NULL THEN 'admin' ELSE 'tenant' END,
        'tenant_id', v_tenant, 'key_id', v_key_id, 'expires_at', cycles._iso8601(v_expires)));
END;
$$;

-- cycles.dashboard_session: the live session of a cookie token's hash, or
-- NULL when there is none or it has expired. Read on every dashboard request,
-- so not audited (the calls it leads to are). Reads only. Errors: none.
CREATE FUNCTION cycles.dashboard_session(p_session_hash bytea) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_row cycles.dashboard_sessions;
BEGIN
    SELECT s.* INTO v_row FROM cycles.dashboard_sessions AS s
    WHERE s.session_hash = p_session_hash AND s.expires_at > clock_timestamp();
    IF v_row.session_hash IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'principal', v_row.principal_kind, 'tenant_id', v_row.tenant_id, 'key_id', v_row.key_id,
        'sealed_key', encode(v_row.sealed_key, 'base64'), 'csrf_token', v_row.csrf_token,
        'expires_at', cycles._iso8601(v_row.expires_at)));
END;
$$;

-- cycles.dashboard_close_session: logout. Deletes the session (a no-op when
-- it is already gone) and audits dashboardLogout as the session's principal,
-- taken from the row rather than re-authenticated, so that a tenant key
-- revoked since the login can still log out. Locks: the session row.
-- Errors: none.
CREATE FUNCTION cycles.dashboard_close_session(p_session_hash bytea, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_row cycles.dashboard_sessions;
    v_ctx jsonb := coalesce(p_ctx, '{}'::jsonb) - 'api_key';
BEGIN
    DELETE FROM cycles.dashboard_sessions AS s WHERE s.session_hash = p_session_hash RETURNING s.* INTO v_row;
    IF v_row.session_hash IS NULL THEN
        RETURN jsonb_build_object('closed', false);
    END IF;
    v_ctx := v_ctx || jsonb_strip_nulls(jsonb_build_object(
        'actor_type', CASE v_row.principal_kind WHEN 'admin' THEN 'admin' ELSE 'api_key' END,
        'key_id', v_row.key_id));
    PERFORM cycles._audit(v_ctx, 'dashboardLogout', 'dashboard_session', NULL, 200, v_row.tenant_id);
    RETURN jsonb_build_object('closed', true);
END;
$$;

-- cycles.dashboard_overview: the figures of the dashboard's first page.
--
-- For the admin: every tenant; for a tenant key (admin:read): its own tenant,
-- within its scope_filter. Counts of tenants, budgets (by status), active
-- reservations; today's charged amount (UTC day, per unit, counted once per
-- operation from the ledger's lead rows); the budgets over their limit or in
-- debt (worst first, at most 20); reservation.denied and reservation.expired
-- events of the last hour; webhook subscriptions failing (consecutive
-- failures) or disabled. Audited as dashboardOverview.
-- Reads only. Errors: UNAUTHORIZED, KEY_REVOKED, TENANT_SUSPENDED,
-- TENANT_CLOSED, INSUFFICIENT_PERMISSIONS.
CREATE FUNCTION cycles.dashboard_overview(p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, ARRAY['admin:read']);
    v_tenant text := v_ctx ->> 'principal_tenant_id';
    v_filter jsonb := v_ctx -> 'scope_filter';
    v_day    timestamptz := date_trunc('day', clock_timestamp() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    v_result jsonb;
BEGIN
    SELECT jsonb_build_object(
        'tenants', (SELECT count(*) FROM cycles.tenants AS t
                    WHERE v_tenant IS NULL OR t.tenant_id = v_tenant),
        'budgets', (SELECT jsonb_build_object(
                        'total', count(*),
                        'active', count(*) FILTER (WHERE b.status = 'ACTIVE'),
                        'frozen', count(*) FILTER (WHERE b.status = 'FROZEN'),
                        'over_limit', count(*) FILTER (WHERE b.is_over_limit),
                        'in_debt', count(*) FILTER (WHERE b.debt > 0))
                    FROM cycles.budgets AS b
                    WHERE (v_tenant IS NULL OR b.tenant_id = v_tenant)
                      AND cycles._scope_filter_allows(v_filter, b.scope)),
        'active_reservations', (SELECT count(*) FROM cycles.reservations AS r
                                WHERE r.status = 'ACTIVE'
                                  AND (v_tenant IS NULL OR r.tenant_id = v_tenant)
                                  AND cycles._scope_filter_allows(v_filter, r.scope_path)),
        'charged_today', (SELECT coalesce(jsonb_agg(jsonb_build_object('unit', d.unit, 'amount', d.amount)
                                                    ORDER BY d.unit), '[]'::jsonb)
                          FROM (SELECT l.unit, sum(l.spent_delta + l.debt_delta) AS amount
                                FROM cycles.ledger_entries AS l
                                WHERE l.operation_lead AND l.operation IN ('COMMIT', 'EVENT')
                                  AND l.created_at >= v_day
                                  AND (v_tenant IS NULL OR l.tenant_id = v_tenant)
                                  AND cycles._scope_filter_allows(v_filter, l.scope)
                                GROUP BY l.unit) AS d),
        'attention', (SELECT coalesce(jsonb_agg(cycles._budget_json(w) ORDER BY w.debt DESC, w.scope COLLATE "C"),
                                      '[]'::jsonb)
                      FROM (SELECT b.* FROM cycles.budgets AS b
                            WHERE (b.is_over_limit OR b.debt > 0)
                              AND (v_tenant IS NULL OR b.tenant_id = v_tenant)
                              AND cycles._scope_filter_allows(v_filter, b.scope)
                            ORDER BY b.debt DESC, b.scope COLLATE "C"
                            LIMIT 20) AS w),
        'last_hour', (SELECT jsonb_build_object(
                          'denials', count(*) FILTER (WHERE e.event_type = 'reservation.denied'),
                          'expiries', count(*) FILTER (WHERE e.event_type = 'reservation.expired'))
                      FROM cycles.events AS e
                      WHERE e.event_type IN ('reservation.denied', 'reservation.expired')
                        AND e.created_at >= clock_timestamp() - interval '1 hour'
                        AND (v_tenant IS NULL OR e.tenant_id = v_tenant)
                        AND cycles._scope_filter_allows(v_filter, coalesce(e.scope, 'tenant:' || e.tenant_id))),
        'failing_webhooks', (SELECT count(*) FROM cycles.webhook_subscriptions AS w
                             WHERE (w.consecutive_failures > 0 OR w.status = 'DISABLED')
                               AND (v_tenant IS NULL OR w.tenant_id = v_tenant)),
        'as_of', cycles._iso8601(clock_timestamp()))
    INTO v_result;
    PERFORM cycles._audit(v_ctx, 'dashboardOverview', NULL, NULL, 200, v_tenant);
    RETURN v_result;
END;
$$;

-- cycles.dashboard_budget_spend: one budget and what it was charged over
-- time, for the dashboard's chart.
--
-- p_buckets consecutive UTC hours, days or months (p_bucket), the last one
-- the current; per bucket the spent and debt booked on this budget by COMMIT
-- and EVENT ledger rows (charged = spent + debt), zero where nothing was
-- booked. For the admin any budget; for a tenant key (admin:read) only a
-- budget of its tenant within its scope_filter (BUDGET_NOT_FOUND otherwise,
-- so another tenant's budgets are not revealed). Audited as
-- dashboardBudgetSpend. Reads only (the ledger by its budget/time key).
-- Errors: UNAUTHORIZED, KEY_REVOKED, TENANT_SUSPENDED, TENANT_CLOSED,
-- INSUFFICIENT_PERMISSIONS, INVALID_REQUEST (bucket, count, scope, unit),
-- BUDGET_NOT_FOUND.
CREATE FUNCTION cycles.dashboard_budget_spend(
    p_scope   text,
    p_unit    text,
    p_bucket  text DEFAULT 'day',
    p_buckets integer DEFAULT 30,
    p_ctx     jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, ARRAY['admin:read']);
    v_tenant text := v_ctx ->> 'principal_tenant_id';
    v_scope  text;
    v_budget cycles.budgets;
    v_step   interval;
    v_last   timestamp;
    v_series jsonb;
BEGIN
    IF p_bucket IS NULL OR p_bucket NOT IN ('hour', 'day', 'month') THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'bucket must be hour, day or month');
    END IF;
    IF p_buckets IS NULL OR p_buckets NOT BETWEEN 1 AND 366 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'buckets must be 1 to 366');
    END IF;
    PERFORM cycles._require_unit(p_unit);
    v_scope := cycles._canonical_scope(p_scope);
    SELECT b.* INTO v_budget FROM cycles.budgets AS b WHERE b.tenant_id = cycles._scope_tenant(v_scope) AND b.scope = v_scope
      AND b.unit = p_unit;
    IF v_budget.budget_id IS NULL
       OR (v_tenant IS NOT NULL AND (v_budget.tenant_id <> v_tenant
                                     OR NOT cycles._scope_filter_allows(v_ctx -> 'scope_filter', v_budget.scope))) THEN
        PERFORM cycles._fail('BUDGET_NOT_FOUND', format('budget %s %s not found', v_scope, p_unit),
            jsonb_build_object('scope', v_scope, 'unit', p_unit));
    END IF;
    -- Buckets are computed on UTC wall-clock timestamps (type timestamp), so
    -- month lengths do not depend on the session's time zone.
    v_step := ('1 ' || p_bucket)::interval;
    v_last := date_trunc(p_bucket, clock_timestamp() AT TIME ZONE 'UTC');
    SELECT jsonb_agg(jsonb_build_object(
               'start', cycles._iso8601(s.t AT TIME ZONE 'UTC'),
               'spent', coalesce(x.spent, 0), 'debt', coalesce(x.debt, 0),
               'charged', coalesce(x.spent, 0) + coalesce(x.debt, 0)) ORDER BY s.t)
    INTO v_series
    FROM generate_series(v_last - v_step * (p_buckets - 1), v_last, v_step) AS s(t)
    LEFT JOIN LATERAL (
        SELECT sum(l.spent_delta) AS spent, sum(l.debt_delta) AS debt
        FROM cycles.ledger_entries AS l
        WHERE l.tenant_id = v_budget.tenant_id AND l.budget_id = v_budget.budget_id
          AND l.created_at >= s.t AT TIME ZONE 'UTC' AND l.created_at < (s.t + v_step) AT TIME ZONE 'UTC'
          AND l.operation IN ('COMMIT', 'EVENT')
    ) AS x ON true;
    PERFORM cycles._audit(v_ctx, 'dashboardBudgetSpend', 'budget', v_budget.budget_id::text, 200,
                          v_budget.tenant_id);
    RETURN jsonb_build_object('budget', cycles._budget_json(v_budget), 'bucket', p_bucket,
                              'series', coalesce(v_series, '[]'::jsonb));
END;
$$;
