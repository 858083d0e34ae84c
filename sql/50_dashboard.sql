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
-- reservations; the amount charged today and this month (UTC, per unit,
-- counted once per operation from the ledger's lead rows) and the top 10
-- agents (and, for the admin, tenants) of the month per unit, see
-- cycles._dashboard_spend; the budgets over their limit or in
-- debt (worst first, at most 20); reservation.denied and reservation.expired
-- events of the last hour; webhook subscriptions failing (consecutive
-- failures) or disabled. Audited as dashboardOverview.
-- Writes the spend summaries (cycles._dashboard_summarise_spend).
-- Errors: UNAUTHORIZED, KEY_REVOKED, TENANT_SUSPENDED, TENANT_CLOSED,
-- INSUFFICIENT_PERMISSIONS.
CREATE FUNCTION cycles.dashboard_overview(p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, ARRAY['admin:read']);
    v_tenant text := v_ctx ->> 'principal_tenant_id';
    v_filter jsonb := v_ctx -> 'scope_filter';
    -- No filter to apply: skips a function call per row (10,000 budgets).
    v_all      boolean := v_filter IS NULL OR jsonb_typeof(v_filter) <> 'array' OR jsonb_array_length(v_filter) = 0;
    -- A value, not clock_timestamp() in the query, so the (event_type,
    -- created_at) index bounds the scan.
    v_hour_ago timestamptz := clock_timestamp() - interval '1 hour';
    v_result   jsonb;
    v_spend    jsonb;
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
                      AND (v_all OR cycles._scope_filter_allows(v_filter, b.scope))),
        'active_reservations', (SELECT count(*) FROM cycles.reservations AS r
                                WHERE r.status = 'ACTIVE'
                                  AND (v_tenant IS NULL OR r.tenant_id = v_tenant)
                                  AND (v_all OR cycles._scope_filter_allows(v_filter, r.scope_path))),
        'attention', (SELECT coalesce(jsonb_agg(cycles._budget_json(w) ORDER BY w.debt DESC, w.scope COLLATE "C"),
                                      '[]'::jsonb)
                      FROM (SELECT b.* FROM cycles.budgets AS b
                            WHERE (b.is_over_limit OR b.debt > 0)
                              AND (v_tenant IS NULL OR b.tenant_id = v_tenant)
                              AND (v_all OR cycles._scope_filter_allows(v_filter, b.scope))
                            ORDER BY b.debt DESC, b.scope COLLATE "C"
                            LIMIT 20) AS w),
        'last_hour', (SELECT jsonb_build_object(
                          'denials', count(*) FILTER (WHERE e.event_type = 'reservation.denied'),
                          'expiries', count(*) FILTER (WHERE e.event_type = 'reservation.expired'))
                      FROM cycles.events AS e
                      WHERE e.event_type IN ('reservation.denied', 'reservation.expired')
                        AND e.created_at >= v_hour_ago
                        AND (v_tenant IS NULL OR e.tenant_id = v_tenant)
                        AND (v_all OR cycles._scope_filter_allows(v_filter, coalesce(e.scope, 'tenant:' || e.tenant_id)))),
        'failing_webhooks', (SELECT count(*) FROM cycles.webhook_subscriptions AS w
                             WHERE (w.consecutive_failures > 0 OR w.status = 'DISABLED')
                               AND (v_tenant IS NULL OR w.tenant_id = v_tenant)),
        'as_of', cycles._iso8601(clock_timestamp()))
    INTO v_result;
    v_spend := cycles._dashboard_spend(v_tenant, v_filter);
    v_result := v_result || jsonb_strip_nulls(jsonb_build_object(
        'charged_today', v_spend -> 'today', 'charged_month', v_spend -> 'month',
        'top_agents', v_spend -> 'top_agents', 'top_tenants', v_spend -> 'top_tenants',
        'summarised_to', v_spend -> 'summarised_to'));
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
    SELECT b.* INTO v_budget FROM cycles.budgets AS b WHERE b.scope = v_scope AND b.unit = p_unit;
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
        WHERE l.budget_id = v_budget.budget_id
          AND l.created_at >= s.t AT TIME ZONE 'UTC' AND l.created_at < (s.t + v_step) AT TIME ZONE 'UTC'
          AND l.operation IN ('COMMIT', 'EVENT')
    ) AS x ON true;
    PERFORM cycles._audit(v_ctx, 'dashboardBudgetSpend', 'budget', v_budget.budget_id::text, 200,
                          v_budget.tenant_id);
    RETURN jsonb_build_object('budget', cycles._budget_json(v_budget), 'bucket', p_bucket,
                              'series', coalesce(v_series, '[]'::jsonb));
END;
$$;

-- Spend summaries for the overview ---------------------------------------------
--
-- (The ledger is read tenant by tenant, a LATERAL subquery kept from being
-- flattened by OFFSET 0, so that each read is a range of the (tenant_id,
-- operation_lead, created_at) index rather than a scan of all of it.)
--
-- "Charged this month" and the top spenders would otherwise add up a month of
-- ledger rows on every overview (a million rows at the scale the dashboard
-- is measured at). Instead the ledger's lead COMMIT and EVENT rows (so an
-- operation counts once however many budgets it touched) are added up once,
-- hour by closed UTC hour, into two summaries:
--   cycles.dashboard_spend_hours   per hour, tenant and unit (today's figure;
--                                  kept two days);
--   cycles.dashboard_spend_months  per month, tenant, unit and level: one
--                                  'tenant' row (agent '') with the tenant's
--                                  total, and one 'agent' row per agent the
--                                  month's operations named (the top
--                                  spenders; kept two months).
-- The overview reads the summaries plus the ledger rows after the last
-- summarised hour. An hour is summarised two minutes after it ends, so that
-- the reserve, commit and event transactions that wrote its rows (single
-- short function calls) have committed.

CREATE TABLE cycles.dashboard_spend_hours (
    hour_start timestamptz NOT NULL,
    tenant_id  text        NOT NULL,
    unit       text        NOT NULL,
    charged    numeric     NOT NULL,
    charges    bigint      NOT NULL,
    CONSTRAINT dashboard_spend_hours_pkey PRIMARY KEY (hour_start, tenant_id, unit)
);

CREATE TABLE cycles.dashboard_spend_months (
    month_start timestamptz NOT NULL,
    level       text        NOT NULL,
    tenant_id   text        NOT NULL,
    unit        text        NOT NULL,
    agent       text        NOT NULL,
    charged     numeric     NOT NULL,
    charges     bigint      NOT NULL,
    CONSTRAINT dashboard_spend_months_pkey PRIMARY KEY (month_start, level, tenant_id, unit, agent)
);

-- The largest spenders of a month first, per level and unit (read 10 at a time).
CREATE INDEX dashboard_spend_months_top_idx
    ON cycles.dashboard_spend_months (month_start, level, unit, charged DESC);
CREATE INDEX dashboard_spend_months_tenant_top_idx
    ON cycles.dashboard_spend_months (tenant_id, month_start, level, unit, charged DESC);

-- How far the hours are summarised (one row, name 'spend').
CREATE TABLE cycles.dashboard_summary_state (
    name          text        NOT NULL,
    summarised_to timestamptz NOT NULL,
    CONSTRAINT dashboard_summary_state_pkey PRIMARY KEY (name)
);

-- cycles._dashboard_summarise_spend: brings the summaries towards the last
-- hour that ended at least two minutes ago, five minutes of ledger at a time,
-- for at most
-- about p_budget_ms of work (an overview must stay fast even when a month
-- of ledger rows waits to be summarised, e.g. after an upgrade: each call
-- then does its share), and returns the time up to which they are complete.
-- Hours without ledger rows are skipped at once. The first call starts at
-- the current month. Locks: the state row FOR UPDATE SKIP LOCKED (a
-- concurrent call that holds it is summarising: this one returns the
-- previous point instead of waiting). Reads the ledger per tenant by
-- (tenant_id, operation_lead, created_at). Errors: none.
CREATE FUNCTION cycles._dashboard_summarise_spend(p_budget_ms integer DEFAULT 300) RETURNS timestamptz
LANGUAGE plpgsql
SET jit = off
AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_target  timestamptz := date_trunc('hour', clock_timestamp() - interval '2 minutes', 'UTC');
    v_from    timestamptz;
    v_next    timestamptz;
    v_first   timestamptz;
BEGIN
    SELECT s.summarised_to INTO v_from FROM cycles.dashboard_summary_state AS s WHERE s.name = 'spend';
    IF v_from IS NULL THEN
        INSERT INTO cycles.dashboard_summary_state (name, summarised_to)
        VALUES ('spend', date_trunc('month', clock_timestamp(), 'UTC'))
        ON CONFLICT ON CONSTRAINT dashboard_summary_state_pkey DO NOTHING;
    ELSIF v_from >= v_target THEN
        RETURN v_from;
    END IF;
    SELECT s.summarised_to INTO v_from FROM cycles.dashboard_summary_state AS s
    WHERE s.name = 'spend' FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        SELECT s.summarised_to INTO v_from FROM cycles.dashboard_summary_state AS s WHERE s.name = 'spend';
        RETURN coalesce(v_from, date_trunc('month', clock_timestamp(), 'UTC'));
    END IF;
    WHILE v_from < v_target LOOP
        -- The next hour that has a ledger row to summarise, if any.
        SELECT min(f.created_at) INTO v_first
        FROM cycles.tenants AS t
        CROSS JOIN LATERAL (
            SELECT e.created_at FROM cycles.ledger_entries AS e
            WHERE e.tenant_id = t.tenant_id AND e.operation_lead
              AND e.created_at >= v_from AND e.created_at < v_target
            ORDER BY e.created_at LIMIT 1) AS f;
        IF v_first IS NULL THEN
            v_from := v_target;
            EXIT;
        END IF;
        v_from := greatest(v_from, date_trunc('hour', v_first, 'UTC'));
        -- Five minutes at a time (within one hour): a busy hour is summarised
        -- over several calls rather than in one long statement.
        v_next := least(v_target, v_from + interval '5 minutes', date_trunc('hour', v_from, 'UTC') + interval '1 hour');
        -- One statement: both summaries are written from the same reading of the ledger.
        WITH new_spend AS (
            SELECT t.tenant_id, l.unit, coalesce(l.subject_agent, '') AS agent,
                   sum(l.spent_delta + l.debt_delta) AS charged, count(*) AS charges
            FROM cycles.tenants AS t
            CROSS JOIN LATERAL (
                SELECT e.unit, e.subject_agent, e.spent_delta, e.debt_delta
                FROM cycles.ledger_entries AS e
                WHERE e.tenant_id = t.tenant_id AND e.operation_lead
                  AND e.created_at >= v_from AND e.created_at < v_next
                  AND e.operation IN ('COMMIT', 'EVENT')
                OFFSET 0) AS l
            GROUP BY 1, 2, 3
        ),
        hours AS (
            INSERT INTO cycles.dashboard_spend_hours AS h (hour_start, tenant_id, unit, charged, charges)
            SELECT date_trunc('hour', v_from, 'UTC'), n.tenant_id, n.unit, sum(n.charged), sum(n.charges)
            FROM new_spend AS n
            WHERE v_from >= date_trunc('day', v_target, 'UTC') - interval '1 day'
            GROUP BY 2, 3
            ON CONFLICT ON CONSTRAINT dashboard_spend_hours_pkey
            DO UPDATE SET charged = h.charged + excluded.charged, charges = h.charges + excluded.charges
            RETURNING 1
        )
        INSERT INTO cycles.dashboard_spend_months AS m (month_start, level, tenant_id, unit, agent, charged, charges)
        SELECT date_trunc('month', v_from, 'UTC'), v.level, n.tenant_id, n.unit, v.agent, sum(n.charged),
               sum(n.charges)
        FROM new_spend AS n
        CROSS JOIN LATERAL (VALUES ('tenant', ''), ('agent', n.agent)) AS v(level, agent)
        WHERE v.level = 'tenant' OR n.agent <> ''
        GROUP BY 2, 3, 4, 5
        ON CONFLICT ON CONSTRAINT dashboard_spend_months_pkey
        DO UPDATE SET charged = m.charged + excluded.charged, charges = m.charges + excluded.charges;
        v_from := v_next;
        EXIT WHEN clock_timestamp() - v_started > make_interval(secs => p_budget_ms / 1000.0);
    END LOOP;
    DELETE FROM cycles.dashboard_spend_hours AS h
    WHERE h.hour_start < date_trunc('day', v_target, 'UTC') - interval '1 day';
    DELETE FROM cycles.dashboard_spend_months AS m
    WHERE m.month_start < date_trunc('month', v_target, 'UTC') - interval '1 month';
    UPDATE cycles.dashboard_summary_state AS s SET summarised_to = v_from WHERE s.name = 'spend';
    RETURN v_from;
END;
$$;

-- cycles._dashboard_spend: the overview's spend figures for every tenant
-- (p_tenant NULL) or one, within a key's scope filter: {today: [{unit,
-- amount}], month: [{unit, amount}] (UTC), top_agents: [{unit, tenant_id,
-- agent, charged, charges}] (the month's 10 largest per unit; an agent is
-- per tenant), top_tenants: (the same per tenant; every-tenant view only)}.
-- Unfiltered callers read the summaries plus the ledger after them; the top
-- 10 are exact: an agent in the final 10 either spent after the summaries
-- (all of those are ranked) or is among the summaries' own 10 largest. For
-- a key with a scope filter the summaries (which carry no scope) cannot be
-- used: it gets today's figure only, from its tenant's ledger rows of the
-- day that the filter allows. While the summaries lag more than an hour
-- behind (a month of ledger rows to catch up on), only {summarised_to} is
-- returned: the figures appear once a few overviews have caught up.
-- Locks: see cycles._dashboard_summarise_spend.
-- Errors: none.
CREATE FUNCTION cycles._dashboard_spend(p_tenant text, p_filter jsonb) RETURNS jsonb
LANGUAGE plpgsql
-- The planner's row guesses for the ledger tail are large enough to start
-- JIT compilation, which costs seconds here and saves nothing.
SET jit = off
AS $$
DECLARE
    v_month    timestamptz := date_trunc('month', clock_timestamp(), 'UTC');
    v_day      timestamptz := date_trunc('day', clock_timestamp(), 'UTC');
    v_filtered boolean := p_tenant IS NOT NULL AND jsonb_typeof(p_filter) = 'array'
                          AND jsonb_array_length(p_filter) > 0;
    v_from     timestamptz := v_day;
    v_result   jsonb;
BEGIN
    IF NOT v_filtered THEN
        v_from := cycles._dashboard_summarise_spend();
        IF v_from < date_trunc('hour', clock_timestamp() - interval '2 minutes', 'UTC') - interval '1 hour' THEN
            -- Still catching up: the ledger after the summaries is too much to
            -- add up here; the figures appear once the summaries are current.
            RETURN jsonb_build_object('summarised_to', cycles._iso8601(v_from));
        END IF;
        v_from := greatest(v_from, v_month);
    END IF;
    WITH tail AS (
        -- The ledger after the summaries (today's for a filtered key).
        SELECT l.created_at AS at, t.tenant_id, l.unit, coalesce(l.subject_agent, '') AS agent,
               l.spent_delta + l.debt_delta AS charged
        FROM cycles.tenants AS t
        CROSS JOIN LATERAL (
            SELECT e.created_at, e.unit, e.subject_agent, e.spent_delta, e.debt_delta
            FROM cycles.ledger_entries AS e
            WHERE e.tenant_id = t.tenant_id AND e.operation_lead AND e.created_at >= v_from
              AND e.operation IN ('COMMIT', 'EVENT')
              AND (NOT v_filtered OR cycles._scope_filter_allows(p_filter, e.scope))
            OFFSET 0) AS l
        WHERE p_tenant IS NULL OR t.tenant_id = p_tenant
    ),
    summarised AS (
        -- The summaries' rows (none for a filtered key): tenant totals...
        SELECT m.tenant_id, m.unit, m.charged, m.charges FROM cycles.dashboard_spend_months AS m
        WHERE NOT v_filtered AND m.month_start = v_month AND m.level = 'tenant' AND v_from > v_month
          AND (p_tenant IS NULL OR m.tenant_id = p_tenant)
    ),
    units AS (
        SELECT DISTINCT u.unit FROM (SELECT s.unit FROM summarised AS s UNION SELECT t.unit FROM tail AS t) AS u
    ),
    tail_agents AS (
        SELECT t.tenant_id, t.unit, t.agent, sum(t.charged) AS charged, count(*) AS charges
        FROM tail AS t WHERE t.agent <> '' GROUP BY t.tenant_id, t.unit, t.agent
    ),
    agent_candidates AS (
        -- ...each unit's 10 largest agents, and every agent of the tail.
        SELECT top.tenant_id, top.unit, top.agent
        FROM units AS u
        CROSS JOIN LATERAL (
            SELECT m.tenant_id, m.unit, m.agent FROM cycles.dashboard_spend_months AS m
            WHERE NOT v_filtered AND v_from > v_month AND m.month_start = v_month AND m.level = 'agent'
              AND m.unit = u.unit AND (p_tenant IS NULL OR m.tenant_id = p_tenant)
            ORDER BY m.charged DESC LIMIT 10) AS top
        UNION
        SELECT a.tenant_id, a.unit, a.agent FROM tail_agents AS a
    ),
    agents AS (
        SELECT c.unit, c.tenant_id, c.agent,
               coalesce(m.charged, 0) + coalesce(x.charged, 0) AS charged,
               coalesce(m.charges, 0) + coalesce(x.charges, 0) AS charges
        FROM agent_candidates AS c
        LEFT JOIN tail_agents AS x ON x.tenant_id = c.tenant_id AND x.unit = c.unit AND x.agent = c.agent
        LEFT JOIN LATERAL (
            SELECT s.charged, s.charges FROM cycles.dashboard_spend_months AS s
            WHERE NOT v_filtered AND s.month_start = v_month AND s.level = 'agent'
              AND s.tenant_id = c.tenant_id AND s.unit = c.unit AND s.agent = c.agent
            OFFSET 0) AS m ON true
    ),
    ranked_agents AS (
        SELECT a.*, row_number() OVER (PARTITION BY a.unit ORDER BY a.charged DESC, a.tenant_id, a.agent) AS rank
        FROM agents AS a
    ),
    tenants AS (
        SELECT b.unit, b.tenant_id, sum(b.charged) AS charged, sum(b.charges) AS charges,
               row_number() OVER (PARTITION BY b.unit ORDER BY sum(b.charged) DESC, b.tenant_id) AS rank
        FROM (SELECT s.tenant_id, s.unit, s.charged, s.charges FROM summarised AS s
              UNION ALL
              SELECT t.tenant_id, t.unit, t.charged, 1 FROM tail AS t) AS b
        GROUP BY b.unit, b.tenant_id
    ),
    today AS (
        SELECT h.unit, h.charged FROM cycles.dashboard_spend_hours AS h
        WHERE NOT v_filtered AND h.hour_start >= v_day AND h.hour_start < v_from
          AND (p_tenant IS NULL OR h.tenant_id = p_tenant)
        UNION ALL
        SELECT t.unit, t.charged FROM tail AS t WHERE t.at >= v_day
    )
    SELECT jsonb_build_object(
        'month', (SELECT coalesce(jsonb_agg(jsonb_build_object('unit', m.unit, 'amount', m.amount) ORDER BY m.unit),
                                  '[]'::jsonb)
                  FROM (SELECT s.unit, sum(s.charged) AS amount FROM tenants AS s GROUP BY s.unit) AS m),
        'today', (SELECT coalesce(jsonb_agg(jsonb_build_object('unit', d.unit, 'amount', d.amount) ORDER BY d.unit),
                                  '[]'::jsonb)
                  FROM (SELECT y.unit, sum(y.charged) AS amount FROM today AS y GROUP BY y.unit) AS d),
        'top_agents', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                 'unit', a.unit, 'tenant_id', a.tenant_id, 'agent', a.agent, 'charged', a.charged,
                                 'charges', a.charges) ORDER BY a.unit, a.rank), '[]'::jsonb)
                       FROM ranked_agents AS a WHERE a.rank <= 10),
        'top_tenants', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                  'unit', s.unit, 'tenant_id', s.tenant_id, 'charged', s.charged,
                                  'charges', s.charges) ORDER BY s.unit, s.rank), '[]'::jsonb)
                        FROM tenants AS s WHERE p_tenant IS NULL AND s.rank <= 10))
    INTO v_result;
    IF v_filtered THEN
        RETURN jsonb_build_object('today', v_result -> 'today');
    END IF;
    RETURN v_result;
END;
$$;

-- cycles.dashboard_reservation_history: what the reservation detail page
-- shows besides cycles.get_reservation: the reservation as a list row shows
-- it (also when it has expired, which get_reservation answers with
-- RESERVATION_EXPIRED), the ledger rows it wrote (reserve, commit, release,
-- expiry: one per budget of its scope path, oldest first, at most 200), and
-- the events that name it (at most 50, oldest first, searched among its
-- tenant's events from its creation to a minute after it ended).
-- For the admin any reservation; for a tenant key (admin:read) only one of
-- its tenant within its scope_filter (NOT_FOUND otherwise, so another
-- tenant's ids are not revealed). Audited as dashboardReservationHistory.
-- Reads only (the ledger by reservation_id, the events by tenant and time).
-- Errors: UNAUTHORIZED, KEY_REVOKED, TENANT_SUSPENDED, TENANT_CLOSED,
-- INSUFFICIENT_PERMISSIONS, NOT_FOUND.
CREATE FUNCTION cycles.dashboard_reservation_history(p_reservation_id text, p_ctx jsonb DEFAULT '{}')
RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, ARRAY['admin:read']);
    v_tenant text := v_ctx ->> 'principal_tenant_id';
    v_row    cycles.reservations;
    v_ledger jsonb;
    v_events jsonb;
BEGIN
    SELECT r.* INTO v_row FROM cycles.reservations AS r WHERE r.reservation_id = p_reservation_id;
    IF v_row.reservation_id IS NULL
       OR (v_tenant IS NOT NULL AND (v_row.tenant_id <> v_tenant
                                     OR NOT cycles._scope_filter_allows(v_ctx -> 'scope_filter', v_row.scope_path))) THEN
        PERFORM cycles._fail('NOT_FOUND', format('reservation %s not found', p_reservation_id),
            jsonb_build_object('reservation_id', p_reservation_id));
    END IF;
    SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
               'entry_id', l.entry_id, 'created_at', cycles._iso8601(l.created_at), 'operation', l.operation,
               'scope', l.scope, 'unit', l.unit, 'spent_delta', l.spent_delta, 'reserved_delta', l.reserved_delta,
               'debt_delta', l.debt_delta, 'remaining_after',
               l.allocated_after - l.spent_after - l.reserved_after - l.debt_after,
               'actor_type', l.actor_type, 'request_id', l.request_id)) ORDER BY l.entry_id), '[]'::jsonb)
    INTO v_ledger
    FROM (SELECT e.* FROM cycles.ledger_entries AS e
          WHERE e.reservation_id = v_row.reservation_id
          ORDER BY e.entry_id LIMIT 200) AS l;
    SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
               'event_id', e.event_id, 'event_type', e.event_type, 'created_at', cycles._iso8601(e.created_at),
               'scope', e.scope, 'correlation_id', e.correlation_id, 'trace_id', e.trace_id))
               ORDER BY e.created_at, e.seq), '[]'::jsonb)
    INTO v_events
    FROM (SELECT x.* FROM cycles.events AS x
          WHERE x.tenant_id = v_row.tenant_id
            AND x.created_at >= to_timestamp(v_row.created_at_ms / 1000.0) - interval '1 second'
            AND x.created_at <= to_timestamp(coalesce(v_row.finalized_at_ms,
                                                      v_row.expires_at_ms + v_row.grace_period_ms) / 1000.0)
                                + interval '1 minute'
            AND x.data ->> 'reservation_id' = v_row.reservation_id
          ORDER BY x.created_at, x.seq LIMIT 50) AS e;
    PERFORM cycles._audit(v_ctx, 'dashboardReservationHistory', 'reservation', v_row.reservation_id, 200,
                          v_row.tenant_id);
    RETURN jsonb_build_object('reservation', cycles._reservation_json(v_row, true, true),
                              'ledger', v_ledger, 'events', v_events);
END;
$$;

-- cycles.dashboard_audit_action: the audit row of a successful dashboard
-- action whose function does not write one itself: sending a webhook test
-- delivery (testWebhookSubscription) and queuing a replay
-- (replayWebhookEvents); every other action is audited by its own function.
-- Called by the dashboard right after the action succeeded, as the same
-- principal (a tenant key is authenticated again and recorded with its key
-- id). Only those two operations are accepted, so this cannot be used to
-- write other entries. Returns the log_id.
-- Errors: UNAUTHORIZED, KEY_REVOKED, TENANT_SUSPENDED, TENANT_CLOSED,
-- INSUFFICIENT_PERMISSIONS, INVALID_REQUEST (another operation).
CREATE FUNCTION cycles.dashboard_audit_action(
    p_operation   text,
    p_resource_id text,
    p_tenant_id   text,
    p_metadata    jsonb DEFAULT NULL,
    p_ctx         jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx jsonb := cycles._admin_principal(p_ctx, ARRAY['admin:read']);
BEGIN
    IF p_operation IS NULL OR p_operation NOT IN ('testWebhookSubscription', 'replayWebhookEvents') THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('operation %L is audited by its own function', p_operation));
    END IF;
    RETURN jsonb_build_object('log_id', cycles._audit(
        v_ctx, p_operation, 'webhook', left(p_resource_id, 128), 200,
        coalesce(v_ctx ->> 'principal_tenant_id', p_tenant_id),
        p_metadata => CASE WHEN jsonb_typeof(p_metadata) = 'object' THEN p_metadata END));
END;
$$;
