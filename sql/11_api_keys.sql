-- API keys: create, list, revoke.
--
-- A key binds a secret to one tenant and a set of permissions. The secret is
-- returned once, by create; only its SHA-256 and its first 14 characters
-- (key_prefix, for humans and logs) are stored. Rotation is create-then-revoke.

-- The spec's Permission enum (normative), in its order.
CREATE FUNCTION cycles._permissions() RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN (
        SELECT ARRAY[
            'reservations:create', 'reservations:commit', 'reservations:release', 'reservations:extend',
            'reservations:list', 'balances:read', 'budgets:read', 'budgets:write', 'policies:read',
            'policies:write', 'webhooks:read', 'webhooks:write', 'events:read',
            'admin:read', 'admin:write',
            'admin:tenants:read', 'admin:tenants:write', 'admin:budgets:read', 'admin:budgets:write',
            'admin:policies:read', 'admin:policies:write', 'admin:apikeys:read', 'admin:apikeys:write',
            'admin:webhooks:read', 'admin:webhooks:write', 'admin:events:read', 'admin:audit:read']
    );
END;
$$;

-- What a tenant key gets when the caller names no permissions (the spec's
-- ten; webhook and event permissions must always be granted explicitly).
CREATE FUNCTION cycles._default_permissions() RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN (
        SELECT ARRAY[
            'reservations:create', 'reservations:commit', 'reservations:release', 'reservations:extend',
            'reservations:list', 'balances:read', 'budgets:read', 'budgets:write', 'policies:read',
            'policies:write']
    );
END;
$$;

-- The spec's ApiKey object, nulls omitted; never the hash. An ACTIVE key past
-- its expiry is shown as EXPIRED (the stored status only records revocation).
CREATE FUNCTION cycles._api_key_json(p_key cycles.api_keys) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (
        SELECT jsonb_strip_nulls(jsonb_build_object(
            'key_id', p_key.key_id,
            'tenant_id', p_key.tenant_id,
            'key_prefix', p_key.key_prefix,
            'name', p_key.name,
            'description', p_key.description,
            'permissions', to_jsonb(p_key.permissions),
            'scope_filter', to_jsonb(p_key.scope_filter),
            'status', CASE WHEN p_key.status = 'ACTIVE' AND p_key.expires_at <= clock_timestamp()
                           THEN 'EXPIRED' ELSE p_key.status END,
            'created_at', cycles._iso8601(p_key.created_at),
            'last_used_at', cycles._iso8601(p_key.last_used_at),
            'expires_at', cycles._iso8601(p_key.expires_at),
            'revoked_at', cycles._iso8601(p_key.revoked_at),
            'revoked_reason', p_key.revoked_reason,
            'metadata', p_key.metadata))
    );
END;
$$;

-- cycles.create_api_key --------------------------------------------------------
-- Issues a key for a tenant and returns {key_id, key_secret, key_prefix,
-- tenant_id, permissions, created_at, expires_at}: the only time the secret
-- is ever shown. Permissions default to the spec's ten tenant permissions;
-- each must be in the Permission enum (duplicates are dropped). The expiry
-- defaults to now + 90 days and must lie in the future.
-- Options (p_options): description (<= 1024 chars), scope_filter (array of
-- strings), metadata (object).
-- Locks: the tenant row FOR SHARE (a concurrent close waits, or this call
-- sees the tenant CLOSED).
-- Errors, in precedence order:
--   INVALID_REQUEST   bad name, unknown permission, empty permissions, expiry
--                     not in the future, unknown or malformed option
--   TENANT_NOT_FOUND  no such tenant
--   TENANT_CLOSED     the tenant is closed
-- Invariants: emits api_key.created; key_prefix is unique (a colliding
-- secret is drawn again).
CREATE FUNCTION cycles.create_api_key(
    p_tenant_id   text,
    p_name        text,
    p_permissions text[] DEFAULT NULL,
    p_expires_at  timestamptz DEFAULT NULL,
    p_options     jsonb DEFAULT '{}',
    p_ctx         jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_options      jsonb;
    v_permissions  text[];
    v_unknown      text[];
    v_expires_at   timestamptz := coalesce(p_expires_at, clock_timestamp() + interval '90 days');
    v_scope_filter text[] := '{}';
    v_metadata     jsonb;
    v_secret       text;
    v_key          cycles.api_keys;
    v_attempt      integer := 0;
BEGIN
    IF p_name IS NULL OR char_length(p_name) NOT BETWEEN 1 AND 256 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'name must be 1 to 256 characters long');
    END IF;
    IF p_permissions IS NULL THEN
        v_permissions := cycles._default_permissions();
    ELSE
        SELECT array_agg(DISTINCT p) FILTER (WHERE p IS NULL OR p <> ALL (cycles._permissions()))
        INTO v_unknown
        FROM unnest(p_permissions) AS p;
        IF v_unknown IS NOT NULL THEN
            PERFORM cycles._fail('INVALID_REQUEST',
                format('unknown permission(s): %s', array_to_string(v_unknown, ', ', 'null')),
                jsonb_build_object('unknown_permissions', to_jsonb(v_unknown)));
        END IF;
        -- Keep the caller's order, drop repeats.
        SELECT coalesce(array_agg(p ORDER BY first_position), '{}') INTO v_permissions
        FROM (SELECT p, min(o) AS first_position FROM unnest(p_permissions) WITH ORDINALITY AS u(p, o) GROUP BY p) AS d;
        IF cardinality(v_permissions) = 0 THEN
            PERFORM cycles._fail('INVALID_REQUEST', 'permissions must not be empty');
        END IF;
    END IF;
    IF v_expires_at <= clock_timestamp() THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('expires_at %s is not in the future', cycles._iso8601(v_expires_at)));
    END IF;
    v_options := cycles._require_known_options(p_options, ARRAY['description', 'scope_filter', 'metadata'],
                                               'api key option');
    IF v_options ? 'scope_filter' AND v_options -> 'scope_filter' <> 'null'::jsonb THEN
        IF jsonb_typeof(v_options -> 'scope_filter') <> 'array'
           OR EXISTS (SELECT FROM jsonb_array_elements(v_options -> 'scope_filter') AS e
                      WHERE jsonb_typeof(e) <> 'string' OR char_length(e #>> '{}') NOT BETWEEN 1 AND 1024)
           OR jsonb_array_length(v_options -> 'scope_filter') > 100 THEN
            PERFORM cycles._fail('INVALID_REQUEST', 'scope_filter must be an array of at most 100 non-empty strings');
        END IF;
        SELECT coalesce(array_agg(e ORDER BY o), '{}') INTO v_scope_filter
        FROM jsonb_array_elements_text(v_options -> 'scope_filter') WITH ORDINALITY AS u(e, o);
    END IF;
    v_metadata := coalesce(nullif(v_options -> 'metadata', 'null'::jsonb), '{}'::jsonb);
    IF jsonb_typeof(v_metadata) <> 'object' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'metadata must be a JSON object');
    END IF;

    PERFORM cycles._lock_tenant_for_child_change(p_tenant_id);

    LOOP
        v_attempt := v_attempt + 1;
        v_secret := cycles._new_secret();
        BEGIN
            INSERT INTO cycles.api_keys AS k (
                key_id, tenant_id, key_prefix, key_hash, name, description, permissions, scope_filter,
                metadata, expires_at)
            VALUES (
                cycles._new_id('key_', 16), p_tenant_id, left(v_secret, 14), cycles._hash_secret(v_secret),
                p_name, cycles._text_option(v_options, 'description', 1024), v_permissions, v_scope_filter,
                v_metadata, v_expires_at)
            RETURNING k.* INTO v_key;
            EXIT;
        EXCEPTION WHEN unique_violation THEN
            -- A prefix (or id) collision: draw again, a bounded number of times.
            IF v_attempt >= 10 THEN
                RAISE;
            END IF;
        END;
    END LOOP;

    PERFORM cycles._emit_event(
        p_tenant_id => p_tenant_id, p_event_type => 'api_key.created', p_source => 'cycles-admin',
        p_actor => cycles._actor(p_ctx),
        p_data => jsonb_build_object(
            'key_id', v_key.key_id, 'key_name', v_key.name, 'new_status', 'ACTIVE',
            'permissions', to_jsonb(v_key.permissions)),
        p_request_id => p_ctx ->> 'request_id', p_trace_id => p_ctx ->> 'trace_id');

    RETURN jsonb_build_object(
        'key_id', v_key.key_id,
        'key_secret', v_secret,
        'key_prefix', v_key.key_prefix,
        'tenant_id', v_key.tenant_id,
        'permissions', to_jsonb(v_key.permissions),
        'created_at', cycles._iso8601(v_key.created_at),
        'expires_at', cycles._iso8601(v_key.expires_at));
END;
$$;

-- cycles.list_api_keys ---------------------------------------------------------
-- A page of a tenant's keys, oldest first: {keys, has_more, next_cursor}
-- (never a hash or a secret). p_status filters on the shown status (ACTIVE,
-- REVOKED, EXPIRED). The cursor is the key_id of the last row of the previous
-- page. Reads only; allowed for a closed tenant.
-- Errors: INVALID_REQUEST (unknown status, limit outside 1..100, unknown
-- cursor), TENANT_NOT_FOUND.
CREATE FUNCTION cycles.list_api_keys(
    p_tenant_id text,
    p_status    text DEFAULT NULL,
    p_limit     integer DEFAULT 50,
    p_cursor    text DEFAULT NULL,
    p_ctx       jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_limit integer := cycles._page_limit(p_limit);
    v_after cycles.api_keys;
    v_rows  cycles.api_keys[];
BEGIN
    IF p_status IS NOT NULL AND p_status NOT IN ('ACTIVE', 'REVOKED', 'EXPIRED') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown key status %L: expected ACTIVE, REVOKED or EXPIRED', p_status));
    END IF;
    IF NOT EXISTS (SELECT FROM cycles.tenants AS t WHERE t.tenant_id = p_tenant_id) THEN
        PERFORM cycles._fail('TENANT_NOT_FOUND', format('tenant %L not found', p_tenant_id),
            jsonb_build_object('tenant_id', p_tenant_id));
    END IF;
    IF p_cursor IS NOT NULL THEN
        SELECT k.* INTO v_after FROM cycles.api_keys AS k WHERE k.key_id = p_cursor AND k.tenant_id = p_tenant_id;
        IF v_after.key_id IS NULL THEN
            PERFORM cycles._fail('INVALID_REQUEST', format('unknown cursor %L', p_cursor));
        END IF;
    END IF;

    SELECT coalesce(array_agg(page ORDER BY page.created_at, page.key_id), '{}') INTO v_rows
    FROM (
        SELECT k.*
        FROM cycles.api_keys AS k
        WHERE k.tenant_id = p_tenant_id
          AND (p_status IS NULL OR cycles._api_key_json(k) ->> 'status' = p_status)
          AND (v_after.key_id IS NULL OR (k.created_at, k.key_id) > (v_after.created_at, v_after.key_id))
        ORDER BY k.created_at, k.key_id
        LIMIT v_limit + 1
    ) AS page;

    RETURN jsonb_strip_nulls(jsonb_build_object(
        'keys', coalesce((SELECT jsonb_agg(cycles._api_key_json(v_rows[i]) ORDER BY i)
                          FROM generate_series(1, least(cardinality(v_rows), v_limit)) AS i), '[]'::jsonb),
        'has_more', cardinality(v_rows) > v_limit,
        'next_cursor', CASE WHEN cardinality(v_rows) > v_limit THEN (v_rows[v_limit]).key_id END));
END;
$$;

-- cycles.revoke_api_key --------------------------------------------------------
-- ACTIVE -> REVOKED, permanently; the row is kept for audit. Reservations made
-- with the key may still be committed or released. Returns the ApiKey object.
-- Locks: the key row FOR UPDATE.
-- Errors, in precedence order:
--   INVALID_REQUEST  reason longer than 512 characters
--   NOT_FOUND        no such key
--   INVALID_TRANSITION the key is already revoked (409: the spec's "already
--                    revoked"; KEY_REVOKED is the authentication failure, 401)
-- Invariants: emits api_key.revoked.
CREATE FUNCTION cycles.revoke_api_key(
    p_key_id text,
    p_reason text DEFAULT NULL,
    p_ctx    jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_key      cycles.api_keys;
    v_previous text;
BEGIN
    IF char_length(p_reason) > 512 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'reason must be at most 512 characters');
    END IF;
    SELECT k.* INTO v_key FROM cycles.api_keys AS k WHERE k.key_id = p_key_id FOR UPDATE;
    IF v_key.key_id IS NULL THEN
        PERFORM cycles._fail('NOT_FOUND', format('API key %L not found', p_key_id),
            jsonb_build_object('key_id', p_key_id));
    END IF;
    IF v_key.status = 'REVOKED' THEN
        PERFORM cycles._fail('INVALID_TRANSITION', format('API key %L is already revoked', p_key_id),
            jsonb_build_object('key_id', p_key_id, 'status', v_key.status));
    END IF;
    v_previous := cycles._api_key_json(v_key) ->> 'status';
    UPDATE cycles.api_keys AS k
    SET status = 'REVOKED', revoked_at = clock_timestamp(), revoked_reason = p_reason
    WHERE k.key_id = p_key_id
    RETURNING k.* INTO v_key;
    PERFORM cycles._emit_event(
        p_tenant_id => v_key.tenant_id, p_event_type => 'api_key.revoked', p_source => 'cycles-admin',
        p_actor => cycles._actor(p_ctx),
        p_data => jsonb_build_object(
            'key_id', v_key.key_id, 'key_name', v_key.name, 'previous_status', v_previous,
            'new_status', 'REVOKED', 'permissions', to_jsonb(v_key.permissions)),
        p_request_id => p_ctx ->> 'request_id', p_trace_id => p_ctx ->> 'trace_id');
    RETURN cycles._api_key_json(v_key);
END;
$$;
