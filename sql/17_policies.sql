-- Policies: operator rules matched against a reservation's scope path.
--
-- A policy belongs to one tenant and applies only to that tenant's
-- reservations. The highest-priority ACTIVE policy whose scope_pattern matches
-- the scope path of a reserve, dry_run or decide (and that is inside its
-- effective_from/effective_until window) supplies:
--   caps                      -> decision ALLOW_WITH_CAPS with those caps
--   commit_overage_policy     -> between the request's and the budget's
--   reservation_ttl_override  -> default_ttl_ms, max_ttl_ms, max_extensions
--                                between the request's and the tenant's
-- rate_limits are stored and returned but not enforced.
--
-- Scope patterns -------------------------------------------------------------
-- A pattern is '/'-separated segments, matched against the whole canonical
-- scope path (lower-cased, levels in the order tenant, workspace, app,
-- workflow, agent, toolset):
--   level:value   that exact segment (value as in a scope, case-insensitive)
--   level:*       one segment of that level, any value
--   *             one or more whole segments, any levels
-- Named levels must appear in hierarchy order; a tenant segment may only be
-- first. A pattern that does not start with a tenant segment or '*' floats:
-- it is read as if prefixed by '*/', so it matches at any depth below the
-- tenant but must still reach the end of the path. Hence:
--   tenant:acme              exactly the tenant scope
--   tenant:acme/*            every scope strictly below the tenant
--   tenant:acme/workspace:eng/*   every scope strictly below that workspace
--   agent:*                  every scope whose last segment is an agent
--   */agent:summarizer       the same as agent:summarizer
--   *                        every scope
-- Ties in priority go to the older policy (then the smaller policy_id), so
-- adding a policy never changes which of two equal-priority policies applies.

-- The anchored regular expression of a scope pattern (also its validation).
-- Errors: INVALID_REQUEST.
CREATE FUNCTION cycles._scope_pattern_regex(p_pattern text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_segment  text;
    v_level    text;
    v_value    text;
    v_position integer;
    v_last     integer := 0;
    v_parts    text[] := '{}';
    v_floating boolean;
BEGIN
    IF p_pattern IS NULL OR p_pattern = '' OR char_length(p_pattern) > 1024 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'scope_pattern must be 1 to 1024 characters');
    END IF;
    FOREACH v_segment IN ARRAY string_to_array(lower(p_pattern), '/') LOOP
        IF v_segment = '*' THEN
            v_parts := v_parts || '[^/]+(?:/[^/]+)*'::text;
            CONTINUE;
        END IF;
        v_level := split_part(v_segment, ':', 1);
        v_value := substr(v_segment, char_length(v_level) + 2);
        v_position := array_position(cycles._scope_levels(), v_level);
        IF position(':' IN v_segment) = 0 OR v_position IS NULL THEN
            PERFORM cycles._fail('INVALID_REQUEST', format(
                'malformed scope_pattern %L: segment %L is not *, level:value or level:* with a level among '
                'tenant, workspace, app, workflow, agent, toolset', p_pattern, v_segment));
        END IF;
        IF v_position <= v_last OR (v_position = 1 AND cardinality(v_parts) > 0) THEN
            PERFORM cycles._fail('INVALID_REQUEST', format(
                'malformed scope_pattern %L: levels must appear once each, in the order '
                'tenant, workspace, app, workflow, agent, toolset, with tenant first', p_pattern));
        END IF;
        IF v_value = '*' THEN
            v_parts := v_parts || (v_level || ':[^/]+');
        ELSIF v_value ~ '^[a-z0-9_.-]{1,128}$' THEN
            v_parts := v_parts || (v_level || ':' || replace(v_value, '.', '\.'));
        ELSE
            PERFORM cycles._fail('INVALID_REQUEST', format(
                'malformed scope_pattern %L: value %L must be * or match ^[a-z0-9_.-]{1,128}$',
                p_pattern, v_value));
        END IF;
        v_last := v_position;
    END LOOP;
    v_floating := split_part(lower(p_pattern), '/', 1) <> '*' AND split_part(lower(p_pattern), ':', 1) <> 'tenant';
    RETURN '^' || CASE WHEN v_floating THEN '(?:[^/]+/)+' ELSE '' END || array_to_string(v_parts, '/') || '$';
END;
$$;

-- The tenant a pattern is anchored at (its leading tenant:<id> segment), or
-- NULL for a pattern that starts with '*' or floats.
CREATE FUNCTION cycles._scope_pattern_tenant(p_pattern text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN CASE WHEN split_part(lower(p_pattern), '/', 1) LIKE 'tenant:%'
                THEN substr(split_part(lower(p_pattern), '/', 1), 8) END;
END;
$$;

-- The table ------------------------------------------------------------------

CREATE TABLE cycles.policies (
    policy_id                text        NOT NULL,
    tenant_id                text        NOT NULL,
    name                     text        NOT NULL,
    description              text,
    scope_pattern            text        NOT NULL,
    scope_regex              text        GENERATED ALWAYS AS (cycles._scope_pattern_regex(scope_pattern)) STORED,
    priority                 integer     NOT NULL DEFAULT 0,
    caps                     jsonb,
    commit_overage_policy    text,
    reservation_ttl_override jsonb,
    rate_limits              jsonb,
    status                   text        NOT NULL DEFAULT 'ACTIVE',
    effective_from           timestamptz,
    effective_until          timestamptz,
    created_at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT policies_pkey PRIMARY KEY (tenant_id, policy_id),
    CONSTRAINT policies_tenant_fkey FOREIGN KEY (tenant_id) REFERENCES cycles.tenants (tenant_id),
    CONSTRAINT policies_tenant_name_key UNIQUE (tenant_id, name),
    CONSTRAINT policies_name_length CHECK (char_length(name) BETWEEN 1 AND 256),
    CONSTRAINT policies_description_length CHECK (char_length(description) <= 1024),
    CONSTRAINT policies_scope_pattern_lower CHECK (scope_pattern = lower(scope_pattern)),
    CONSTRAINT policies_priority_nonnegative CHECK (priority >= 0),
    CONSTRAINT policies_caps_object CHECK (jsonb_typeof(caps) = 'object'),
    CONSTRAINT policies_overage_policy_valid CHECK (
        commit_overage_policy IN ('REJECT', 'ALLOW_IF_AVAILABLE', 'ALLOW_WITH_OVERDRAFT')),
    CONSTRAINT policies_ttl_override_object CHECK (jsonb_typeof(reservation_ttl_override) = 'object'),
    CONSTRAINT policies_rate_limits_object CHECK (jsonb_typeof(rate_limits) = 'object'),
    CONSTRAINT policies_status_valid CHECK (status IN ('ACTIVE', 'DISABLED')),
    CONSTRAINT policies_effective_window CHECK (effective_until > effective_from)
);

-- The reserve path's one lookup: a tenant's active policies, best first.
CREATE INDEX policies_tenant_active_idx ON cycles.policies (tenant_id, priority DESC, created_at, policy_id)
    WHERE status = 'ACTIVE';
CREATE INDEX policies_tenant_created_idx ON cycles.policies (tenant_id, created_at, policy_id);
-- The admin API names a policy by id alone.
CREATE INDEX policies_id_idx ON cycles.policies (policy_id);

-- Validation of the JSON parts -------------------------------------------------

-- Caps exactly as the spec's Caps object: max_tokens, max_steps_remaining,
-- cooldown_ms (integers >= 0), tool_allowlist, tool_denylist (strings of at
-- most 256 characters). Nulls are dropped; NULL in, NULL out.
-- Errors: INVALID_REQUEST.
CREATE FUNCTION cycles._require_caps(p_caps jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_caps jsonb;
    v_list text;
BEGIN
    IF p_caps IS NULL OR p_caps = 'null'::jsonb THEN
        RETURN NULL;
    END IF;
    v_caps := jsonb_strip_nulls(cycles._require_known_options(p_caps,
        ARRAY['max_tokens', 'max_steps_remaining', 'tool_allowlist', 'tool_denylist', 'cooldown_ms'], 'caps field'));
    PERFORM cycles._json_int(v_caps, 'max_tokens', 0, 9223372036854775807, NULL, 'caps.max_tokens');
    PERFORM cycles._json_int(v_caps, 'max_steps_remaining', 0, 9223372036854775807, NULL, 'caps.max_steps_remaining');
    PERFORM cycles._json_int(v_caps, 'cooldown_ms', 0, 9223372036854775807, NULL, 'caps.cooldown_ms');
    FOREACH v_list IN ARRAY ARRAY['tool_allowlist', 'tool_denylist'] LOOP
        IF v_caps ? v_list AND (jsonb_typeof(v_caps -> v_list) <> 'array' OR EXISTS (
                SELECT FROM jsonb_array_elements(v_caps -> v_list) AS e(item)
                WHERE jsonb_typeof(e.item) <> 'string' OR char_length(e.item #>> '{}') > 256)) THEN
            PERFORM cycles._fail('INVALID_REQUEST',
                format('caps.%s must be an array of strings of at most 256 characters', v_list));
        END IF;
    END LOOP;
    RETURN v_caps;
END;
$$;

-- reservation_ttl_override {default_ttl_ms, max_ttl_ms (1000..86400000),
-- max_extensions (0..10000)}; nulls dropped. Errors: INVALID_REQUEST.
CREATE FUNCTION cycles._require_ttl_override(p_override jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_override jsonb;
BEGIN
    IF p_override IS NULL OR p_override = 'null'::jsonb THEN
        RETURN NULL;
    END IF;
    v_override := jsonb_strip_nulls(cycles._require_known_options(p_override,
        ARRAY['default_ttl_ms', 'max_ttl_ms', 'max_extensions'], 'reservation_ttl_override field'));
    PERFORM cycles._json_int(v_override, 'default_ttl_ms', 1000, 86400000, NULL, 'reservation_ttl_override.default_ttl_ms');
    PERFORM cycles._json_int(v_override, 'max_ttl_ms', 1000, 86400000, NULL, 'reservation_ttl_override.max_ttl_ms');
    PERFORM cycles._json_int(v_override, 'max_extensions', 0, 10000, NULL, 'reservation_ttl_override.max_extensions');
    RETURN v_override;
END;
$$;

-- rate_limits {max_reservations_per_minute, max_commits_per_minute} (>= 1);
-- nulls dropped. Errors: INVALID_REQUEST.
CREATE FUNCTION cycles._require_rate_limits(p_limits jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_limits jsonb;
BEGIN
    IF p_limits IS NULL OR p_limits = 'null'::jsonb THEN
        RETURN NULL;
    END IF;
    v_limits := jsonb_strip_nulls(cycles._require_known_options(p_limits,
        ARRAY['max_reservations_per_minute', 'max_commits_per_minute'], 'rate_limits field'));
    PERFORM cycles._json_int(v_limits, 'max_reservations_per_minute', 1, 2147483647, NULL, 'rate_limits.max_reservations_per_minute');
    PERFORM cycles._json_int(v_limits, 'max_commits_per_minute', 1, 2147483647, NULL, 'rate_limits.max_commits_per_minute');
    RETURN v_limits;
END;
$$;

-- A date-time member of a patch: NULL when absent or null.
-- Errors: INVALID_REQUEST.
CREATE FUNCTION cycles._policy_timestamp(p_patch jsonb, p_field text) RETURNS timestamptz
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_value jsonb := p_patch -> p_field;
    v_ts    timestamptz;
BEGIN
    IF v_value IS NULL OR v_value = 'null'::jsonb THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v_value) = 'string'
       AND v_value #>> '{}' ~ '^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}(:?\d{2})?)$' THEN
        BEGIN
            v_ts := (v_value #>> '{}')::timestamptz;
        EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
            v_ts := NULL;
        END;
    END IF;
    IF v_ts IS NULL THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('%s must be an ISO-8601 date-time with a time zone, got %s', p_field, v_value));
    END IF;
    RETURN v_ts;
END;
$$;

-- JSON, events, matching ---------------------------------------------------------

-- The spec's Policy object, nulls omitted (the owning tenant is not part of it).
CREATE FUNCTION cycles._policy_json(p_policy cycles.policies) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'policy_id', p_policy.policy_id,
        'name', p_policy.name,
        'description', p_policy.description,
        'scope_pattern', p_policy.scope_pattern,
        'priority', p_policy.priority,
        'caps', p_policy.caps,
        'commit_overage_policy', p_policy.commit_overage_policy,
        'reservation_ttl_override', p_policy.reservation_ttl_override,
        'rate_limits', p_policy.rate_limits,
        'status', p_policy.status,
        'effective_from', cycles._iso8601(p_policy.effective_from),
        'effective_until', cycles._iso8601(p_policy.effective_until),
        'created_at', cycles._iso8601(p_policy.created_at),
        'updated_at', cycles._iso8601(p_policy.updated_at)));
END;
$$;

-- policy.created / policy.updated with EventDataPolicy.
CREATE FUNCTION cycles._policy_event(
    p_policy cycles.policies, p_event_type text, p_changed_fields text[], p_ctx jsonb
) RETURNS text
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN cycles._emit_event(
        p_tenant_id => p_policy.tenant_id,
        p_event_type => p_event_type,
        p_source => 'cycles-admin',
        p_actor => cycles._actor(p_ctx),
        p_data => jsonb_build_object(
            'policy_id', p_policy.policy_id,
            'name', p_policy.name,
            'scope_pattern', p_policy.scope_pattern,
            'changed_fields', to_jsonb(p_changed_fields)),
        p_request_id => p_ctx ->> 'request_id',
        p_trace_id => p_ctx ->> 'trace_id');
END;
$$;

-- The policy that governs a reservation at p_scope_path of p_tenant_id now:
-- the highest-priority ACTIVE policy in its effective window whose pattern
-- matches; a row of NULLs when none does. One index scan of the tenant's
-- active policies.
CREATE FUNCTION cycles._match_policy(p_tenant_id text, p_scope_path text) RETURNS cycles.policies
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_policy cycles.policies;
    v_now    timestamptz := clock_timestamp();
BEGIN
    SELECT p.* INTO v_policy
    FROM cycles.policies AS p
    WHERE p.tenant_id = p_tenant_id
      AND p.status = 'ACTIVE'
      AND (p.effective_from IS NULL OR p.effective_from <= v_now)
      AND (p.effective_until IS NULL OR p.effective_until > v_now)
      AND p_scope_path ~ p.scope_regex
    ORDER BY p.priority DESC, p.created_at, p.policy_id
    LIMIT 1;
    RETURN v_policy;
END;
$$;

-- The caps a matched policy imposes: its non-empty caps object, else NULL
-- (no policy, or a policy without caps, means a plain ALLOW).
CREATE FUNCTION cycles._policy_caps(p_policy cycles.policies) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN CASE WHEN p_policy.caps IS NOT NULL AND p_policy.caps <> '{}'::jsonb THEN p_policy.caps END;
END;
$$;

-- A policy for a change, locked FOR UPDATE, as the caller may see it: a
-- tenant key sees only its own tenant's policies (another tenant's is
-- NOT_FOUND, so ids cannot be probed). Errors: NOT_FOUND.
CREATE FUNCTION cycles._lock_policy(p_policy_id text, p_ctx jsonb, p_for_update boolean) RETURNS cycles.policies
LANGUAGE plpgsql
AS $$
DECLARE
    v_policy cycles.policies;
BEGIN
    IF p_for_update THEN
        SELECT p.* INTO v_policy FROM cycles.policies AS p WHERE p.policy_id = p_policy_id FOR UPDATE;
    ELSE
        SELECT p.* INTO v_policy FROM cycles.policies AS p WHERE p.policy_id = p_policy_id;
    END IF;
    IF v_policy.policy_id IS NULL
       OR v_policy.tenant_id IS DISTINCT FROM coalesce(p_ctx ->> 'principal_tenant_id', v_policy.tenant_id) THEN
        PERFORM cycles._fail('NOT_FOUND', format('policy %L not found', p_policy_id),
            jsonb_build_object('policy_id', p_policy_id));
    END IF;
    RETURN v_policy;
END;
$$;

-- A scope-filtered tenant key may only write policies whose pattern is
-- anchored at its tenant and whose fixed part (the segments before the first
-- wildcard) is a scope its filter allows; a floating pattern could reach
-- scopes outside the filter. Errors: FORBIDDEN.
CREATE FUNCTION cycles._require_pattern_in_filter(p_ctx jsonb, p_pattern text) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_fixed text[] := '{}';
    v_segment text;
BEGIN
    IF p_ctx ->> 'principal_tenant_id' IS NULL OR coalesce(jsonb_array_length(p_ctx -> 'scope_filter'), 0) = 0 THEN
        RETURN;
    END IF;
    FOREACH v_segment IN ARRAY string_to_array(p_pattern, '/') LOOP
        EXIT WHEN v_segment = '*' OR v_segment LIKE '%:*';
        v_fixed := v_fixed || v_segment;
    END LOOP;
    IF cycles._scope_pattern_tenant(p_pattern) IS NULL
       OR NOT cycles._scope_filter_allows(p_ctx -> 'scope_filter', array_to_string(v_fixed, '/')) THEN
        PERFORM cycles._fail('FORBIDDEN',
            format('API key''s scope_filter does not cover scope_pattern %L', p_pattern),
            jsonb_build_object('scope_pattern', p_pattern));
    END IF;
END;
$$;

-- cycles.create_policy ---------------------------------------------------------
-- Creates an ACTIVE policy for a tenant and returns the Policy object.
-- From psql: SELECT cycles.create_policy('acme', 'eng caps', 'tenant:acme/*',
--   p_caps => '{"max_tokens": 4096}');
-- A tenant key (p_ctx ->> 'api_key', needs policies:write or
-- admin:policies:write) creates for its own tenant: p_tenant_id NULL or its
-- own. A pattern anchored at a tenant must name the policy's tenant.
-- Locks: the tenant row FOR SHARE (a concurrent close waits, or this call
--   sees the tenant CLOSED).
-- Errors, in precedence order:
--   UNAUTHORIZED, INSUFFICIENT_PERMISSIONS (tenant key)
--   INVALID_REQUEST    no tenant (admin), bad name, pattern, priority, caps,
--                      overage policy, TTL override, rate limits or window
--   FORBIDDEN          a tenant key naming another tenant, or a pattern
--                      outside its scope_filter
--   TENANT_NOT_FOUND, TENANT_CLOSED
--   DUPLICATE_RESOURCE the tenant already has a policy with this name
-- Invariants: emits policy.created; writes one audit row (createPolicy).
CREATE FUNCTION cycles.create_policy(
    p_tenant_id                text,
    p_name                     text,
    p_scope_pattern            text,
    p_priority                 integer DEFAULT 0,
    p_caps                     jsonb DEFAULT NULL,
    p_commit_overage_policy    text DEFAULT NULL,
    p_reservation_ttl_override jsonb DEFAULT NULL,
    p_rate_limits              jsonb DEFAULT NULL,
    p_effective_from           timestamptz DEFAULT NULL,
    p_effective_until          timestamptz DEFAULT NULL,
    p_description              text DEFAULT NULL,
    p_ctx                      jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx       jsonb := cycles._admin_principal(p_ctx, ARRAY['policies:write', 'admin:policies:write']);
    v_tenant_id text;
    v_pattern   text := lower(p_scope_pattern);
    v_policy    cycles.policies;
BEGIN
    v_tenant_id := cycles._admin_scope_tenant(v_ctx, p_tenant_id);
    IF v_tenant_id IS NULL THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'tenant_id is required');
    END IF;
    IF p_name IS NULL OR char_length(p_name) NOT BETWEEN 1 AND 256 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'name must be 1 to 256 characters long');
    END IF;
    IF char_length(p_description) > 1024 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'description must be at most 1024 characters');
    END IF;
    PERFORM cycles._scope_pattern_regex(v_pattern);
    IF cycles._scope_pattern_tenant(v_pattern) <> v_tenant_id THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('scope_pattern %L names another tenant than the policy''s tenant %s', p_scope_pattern, v_tenant_id));
    END IF;
    IF p_priority IS NULL OR p_priority < 0 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'priority must be an integer >= 0');
    END IF;
    IF p_effective_until <= p_effective_from THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'effective_until must be later than effective_from');
    END IF;
    PERFORM cycles._require_pattern_in_filter(v_ctx, v_pattern);
    PERFORM cycles._lock_tenant_for_child_change(v_tenant_id);

    BEGIN
        INSERT INTO cycles.policies (
            policy_id, tenant_id, name, description, scope_pattern, priority, caps, commit_overage_policy,
            reservation_ttl_override, rate_limits, effective_from, effective_until)
        VALUES (
            cycles._new_id('pol_', 24), v_tenant_id, p_name, p_description, v_pattern, p_priority,
            cycles._require_caps(p_caps), cycles._require_overage_policy(p_commit_overage_policy),
            cycles._require_ttl_override(p_reservation_ttl_override), cycles._require_rate_limits(p_rate_limits),
            p_effective_from, p_effective_until)
        RETURNING * INTO v_policy;
    EXCEPTION WHEN unique_violation THEN
        PERFORM cycles._fail('DUPLICATE_RESOURCE',
            format('tenant %s already has a policy named %L', v_tenant_id, p_name),
            jsonb_build_object('tenant_id', v_tenant_id, 'name', p_name));
    END;
    PERFORM cycles._policy_event(v_policy, 'policy.created', '{}', v_ctx);
    PERFORM cycles._audit(v_ctx, 'createPolicy', 'policy', v_policy.policy_id, 201, v_tenant_id);
    RETURN cycles._policy_json(v_policy);
END;
$$;

-- cycles.get_policy --------------------------------------------------------------
-- One policy. A tenant key (policies:read or admin:policies:read) sees only
-- its own tenant's. Errors: UNAUTHORIZED, INSUFFICIENT_PERMISSIONS, NOT_FOUND.
-- Writes one audit row (getPolicy).
CREATE FUNCTION cycles.get_policy(p_policy_id text, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, ARRAY['policies:read', 'admin:policies:read']);
    v_policy cycles.policies := cycles._lock_policy(p_policy_id, v_ctx, false);
BEGIN
    PERFORM cycles._audit(v_ctx, 'getPolicy', 'policy', p_policy_id, 200, v_policy.tenant_id);
    RETURN cycles._policy_json(v_policy);
END;
$$;

-- cycles.list_policies -----------------------------------------------------------
-- A page of policies, newest first: {policies, has_more, next_cursor}. The
-- cursor is the policy_id of the last row of the previous page. p_tenant_id
-- NULL lists every tenant's (the admin only; a tenant key always lists its
-- own). p_scope_pattern filters on the exact (lower-cased) pattern.
-- Errors: UNAUTHORIZED, INSUFFICIENT_PERMISSIONS; FORBIDDEN (a tenant key
-- naming another tenant); INVALID_REQUEST (status, limit, cursor).
-- Writes one audit row (listPolicies).
CREATE FUNCTION cycles.list_policies(
    p_tenant_id     text DEFAULT NULL,
    p_scope_pattern text DEFAULT NULL,
    p_status        text DEFAULT NULL,
    p_limit         integer DEFAULT 50,
    p_cursor        text DEFAULT NULL,
    p_ctx           jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx       jsonb := cycles._admin_principal(p_ctx, ARRAY['policies:read', 'admin:policies:read']);
    v_tenant_id text := cycles._admin_scope_tenant(v_ctx, p_tenant_id);
    v_limit     integer := cycles._page_limit(p_limit);
    v_after     cycles.policies;
    v_rows      cycles.policies[];
BEGIN
    IF p_status IS NOT NULL AND p_status NOT IN ('ACTIVE', 'DISABLED') THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('unknown policy status %L: expected ACTIVE or DISABLED', p_status));
    END IF;
    IF p_cursor IS NOT NULL THEN
        SELECT p.* INTO v_after FROM cycles.policies AS p
        WHERE p.policy_id = p_cursor AND (v_tenant_id IS NULL OR p.tenant_id = v_tenant_id);
        IF v_after.policy_id IS NULL THEN
            PERFORM cycles._fail('INVALID_REQUEST', format('unknown cursor %L', p_cursor));
        END IF;
    END IF;
    SELECT coalesce(array_agg(page ORDER BY page.created_at DESC, page.policy_id DESC), '{}') INTO v_rows
    FROM (
        SELECT p.*
        FROM cycles.policies AS p
        WHERE (v_tenant_id IS NULL OR p.tenant_id = v_tenant_id)
          AND (p_scope_pattern IS NULL OR p.scope_pattern = lower(p_scope_pattern))
          AND (p_status IS NULL OR p.status = p_status)
          AND (v_after.policy_id IS NULL OR (p.created_at, p.policy_id) < (v_after.created_at, v_after.policy_id))
        ORDER BY p.created_at DESC, p.policy_id DESC
        LIMIT v_limit + 1
    ) AS page;
    PERFORM cycles._audit(v_ctx, 'listPolicies', 'policy', NULL, 200, v_tenant_id);
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'policies', coalesce((SELECT jsonb_agg(cycles._policy_json(v_rows[i]) ORDER BY i)
                             FROM generate_series(1, least(cardinality(v_rows), v_limit)) AS i), '[]'::jsonb),
        'has_more', cardinality(v_rows) > v_limit,
        'next_cursor', CASE WHEN cardinality(v_rows) > v_limit THEN (v_rows[v_limit]).policy_id END));
END;
$$;

-- cycles.update_policy -------------------------------------------------------------
-- Applies a patch {name, description, priority, caps, commit_overage_policy,
-- reservation_ttl_override, rate_limits, effective_from, effective_until,
-- status} and returns the Policy. A null value clears an optional field
-- (description, caps, commit_overage_policy, reservation_ttl_override,
-- rate_limits, effective_from, effective_until). The scope pattern is fixed:
-- create another policy for another pattern.
-- Locks: the policy row FOR UPDATE, then the tenant row FOR SHARE.
-- Errors, in precedence order:
--   UNAUTHORIZED, INSUFFICIENT_PERMISSIONS (tenant key)
--   INVALID_REQUEST    patch not an object, unknown field, bad value
--   NOT_FOUND          no such policy (or another tenant's, for a tenant key)
--   FORBIDDEN          the pattern is outside the key's scope_filter
--   TENANT_CLOSED
--   DUPLICATE_RESOURCE the new name is taken in the tenant
-- Invariants: emits policy.updated with the changed fields (none changed: no
-- event, nothing written but the audit row); one audit row (updatePolicy).
CREATE FUNCTION cycles.update_policy(p_policy_id text, p_patch jsonb, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx     jsonb := cycles._admin_principal(p_ctx, ARRAY['policies:write', 'admin:policies:write']);
    v_patch   jsonb := cycles._require_known_options(p_patch, ARRAY['name', 'description', 'priority', 'caps',
                           'commit_overage_policy', 'reservation_ttl_override', 'rate_limits', 'effective_from',
                           'effective_until', 'status'], 'policy field');
    v_old     cycles.policies;
    v_new     cycles.policies;
    v_changed text[];
BEGIN
    IF v_patch ? 'name' AND (jsonb_typeof(v_patch -> 'name') IS DISTINCT FROM 'string'
                             OR char_length(v_patch ->> 'name') NOT BETWEEN 1 AND 256) THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'name must be a string of 1 to 256 characters');
    END IF;
    IF v_patch ? 'status' AND v_patch ->> 'status' IS DISTINCT FROM 'ACTIVE'
                          AND v_patch ->> 'status' IS DISTINCT FROM 'DISABLED' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'status must be ACTIVE or DISABLED');
    END IF;
    IF v_patch ? 'priority' AND (v_patch -> 'priority' = 'null'::jsonb
                                 OR cycles._json_int(v_patch, 'priority', 0, 2147483647, NULL, 'policy.priority') IS NULL) THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'priority must be an integer >= 0');
    END IF;
    IF v_patch ? 'description' AND v_patch -> 'description' <> 'null'::jsonb
       AND (jsonb_typeof(v_patch -> 'description') <> 'string' OR char_length(v_patch ->> 'description') > 1024) THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'description must be a string of at most 1024 characters');
    END IF;
    IF v_patch ? 'commit_overage_policy' AND v_patch -> 'commit_overage_policy' <> 'null'::jsonb
       AND jsonb_typeof(v_patch -> 'commit_overage_policy') <> 'string' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'commit_overage_policy must be a string');
    END IF;

    v_old := cycles._lock_policy(p_policy_id, v_ctx, true);
    v_new := v_old;
    IF v_patch ? 'name' THEN v_new.name := v_patch ->> 'name'; END IF;
    IF v_patch ? 'description' THEN v_new.description := v_patch ->> 'description'; END IF;
    IF v_patch ? 'priority' THEN v_new.priority := (v_patch ->> 'priority')::integer; END IF;
    IF v_patch ? 'caps' THEN v_new.caps := cycles._require_caps(v_patch -> 'caps'); END IF;
    IF v_patch ? 'commit_overage_policy' THEN
        v_new.commit_overage_policy := cycles._require_overage_policy(v_patch ->> 'commit_overage_policy');
    END IF;
    IF v_patch ? 'reservation_ttl_override' THEN
        v_new.reservation_ttl_override := cycles._require_ttl_override(v_patch -> 'reservation_ttl_override');
    END IF;
    IF v_patch ? 'rate_limits' THEN v_new.rate_limits := cycles._require_rate_limits(v_patch -> 'rate_limits'); END IF;
    IF v_patch ? 'effective_from' THEN v_new.effective_from := cycles._policy_timestamp(v_patch, 'effective_from'); END IF;
    IF v_patch ? 'effective_until' THEN
        v_new.effective_until := cycles._policy_timestamp(v_patch, 'effective_until');
    END IF;
    IF v_patch ? 'status' THEN v_new.status := v_patch ->> 'status'; END IF;
    IF v_new.effective_until <= v_new.effective_from THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'effective_until must be later than effective_from');
    END IF;
    PERFORM cycles._require_pattern_in_filter(v_ctx, v_old.scope_pattern);
    PERFORM cycles._lock_tenant_for_child_change(v_old.tenant_id);

    SELECT coalesce(array_agg(f.field ORDER BY f.field), '{}') INTO v_changed
    FROM (VALUES
        ('name', v_old.name IS DISTINCT FROM v_new.name),
        ('description', v_old.description IS DISTINCT FROM v_new.description),
        ('priority', v_old.priority IS DISTINCT FROM v_new.priority),
        ('caps', v_old.caps IS DISTINCT FROM v_new.caps),
        ('commit_overage_policy', v_old.commit_overage_policy IS DISTINCT FROM v_new.commit_overage_policy),
        ('reservation_ttl_override', v_old.reservation_ttl_override IS DISTINCT FROM v_new.reservation_ttl_override),
        ('rate_limits', v_old.rate_limits IS DISTINCT FROM v_new.rate_limits),
        ('effective_from', v_old.effective_from IS DISTINCT FROM v_new.effective_from),
        ('effective_until', v_old.effective_until IS DISTINCT FROM v_new.effective_until),
        ('status', v_old.status IS DISTINCT FROM v_new.status)) AS f(field, changed)
    WHERE f.changed;

    IF cardinality(v_changed) > 0 THEN
        BEGIN
            UPDATE cycles.policies AS p SET
                name = v_new.name,
                description = v_new.description,
                priority = v_new.priority,
                caps = v_new.caps,
                commit_overage_policy = v_new.commit_overage_policy,
                reservation_ttl_override = v_new.reservation_ttl_override,
                rate_limits = v_new.rate_limits,
                effective_from = v_new.effective_from,
                effective_until = v_new.effective_until,
                status = v_new.status,
                updated_at = clock_timestamp()
            WHERE p.policy_id = p_policy_id
            RETURNING * INTO v_new;
        EXCEPTION WHEN unique_violation THEN
            PERFORM cycles._fail('DUPLICATE_RESOURCE',
                format('tenant %s already has a policy named %L', v_old.tenant_id, v_new.name),
                jsonb_build_object('tenant_id', v_old.tenant_id, 'name', v_new.name));
        END;
        PERFORM cycles._policy_event(v_new, 'policy.updated', v_changed, v_ctx);
    END IF;
    PERFORM cycles._audit(v_ctx, 'updatePolicy', 'policy', p_policy_id, 200, v_old.tenant_id,
        p_metadata => jsonb_build_object('changed_fields', to_jsonb(v_changed)));
    RETURN cycles._policy_json(v_new);
END;
$$;

-- cycles.disable_policy --------------------------------------------------------------
-- Sets a policy DISABLED (it no longer matches anything); a disabled policy
-- stays DISABLED and nothing is written but the audit row. The same as
-- update_policy(p_policy_id, '{"status": "DISABLED"}').
CREATE FUNCTION cycles.disable_policy(p_policy_id text, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN cycles.update_policy(p_policy_id, '{"status": "DISABLED"}'::jsonb, p_ctx);
END;
$$;
