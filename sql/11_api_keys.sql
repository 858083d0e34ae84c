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
    RETURN ARRAY[
        'reservations:create', 'reservations:commit', 'reservations:release', 'reservations:extend',
        'reservations:list', 'balances:read', 'budgets:read', 'budgets:write', 'policies:read',
        'policies:write', 'webhooks:read', 'webhooks:write', 'events:read',
        'admin:read', 'admin:write',
        'admin:tenants:read', 'admin:tenants:write', 'admin:budgets:read', 'admin:budgets:write',
        'admin:policies:read', 'admin:policies:write', 'admin:apikeys:read', 'admin:apikeys:write',
        'admin:webhooks:read', 'admin:webhooks:write', 'admin:events:read', 'admin:audit:read'];
END;
$$;

-- What a tenant key gets when the caller names no permissions (the spec's
-- ten; webhook and event permissions must always be granted explicitly).
CREATE FUNCTION cycles._default_permissions() RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN ARRAY[
        'reservations:create', 'reservations:commit', 'reservations:release', 'reservations:extend',
        'reservations:list', 'balances:read', 'budgets:read', 'budgets:write', 'policies:read',
        'policies:write'];
END;
$$;

-- The spec's ApiKey object, nulls omitted; never the hash. An ACTIVE key past
-- its expiry is shown as EXPIRED (the stored status only records revocation).
CREATE FUNCTION cycles._api_key_json(p_key cycles.api_keys) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN jsonb_strip_nulls(jsonb_build_object(
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
        'metadata', p_key.metadata));
END;
$$;

-- A permission list as given (NULL: the defaults), checked against the
-- Permission enum, repeats dropped, order kept. INVALID_REQUEST for an
-- unknown permission or an empty list.
CREATE FUNCTION cycles._require_permissions(p_permissions text[]) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_unknown     text[];
    v_permissions text[];
BEGIN
    IF p_permissions IS NULL THEN
        RETURN cycles._default_permissions();
    END IF;
    SELECT array_agg(DISTINCT p) FILTER (WHERE p IS NULL OR p <> ALL (cycles._permissions()))
    INTO v_unknown
    FROM unnest(p_permissions) AS p;
    IF v_unknown IS NOT NULL THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown permission(s): %s', array_to_string(v_unknown, ', ', 'null')),
            jsonb_build_object('unknown_permissions', to_jsonb(v_unknown)));
    END IF;
    SELECT coalesce(array_agg(p ORDER BY first_position), '{}') INTO v_permissions
    FROM (SELECT p, min(o) AS first_position FROM unnest(p_permissions) WITH ORDINALITY AS u(p, o) GROUP BY p) AS d;
    IF cardinality(v_permissions) = 0 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'permissions must not be empty');
    END IF;
    RETURN v_permissions;
END;
$$;

-- A scope_filter JSON value as text[] ('{}' for absent or null).
-- INVALID_REQUEST unless an array of at most 100 strings of 1..1024 chars.
CREATE FUNCTION cycles._require_scope_filter(p_filter jsonb) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_filter text[];
BEGIN
    IF p_filter IS NULL OR p_filter = 'null'::jsonb THEN
        RETURN '{}';
    END IF;
    IF jsonb_typeof(p_filter) <> 'array'
       OR EXISTS (SELECT FROM jsonb_array_elements(p_filter) AS e
                  WHERE jsonb_typeof(e) <> 'string' OR char_length(e #>> '{}') NOT BETWEEN 1 AND 1024)
       OR jsonb_array_length(p_filter) > 100 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'scope_filter must be an array of at most 100 non-empty strings');
    END IF;
    SELECT coalesce(array_agg(e ORDER BY o), '{}') INTO v_filter
    FROM jsonb_array_elements_text(p_filter) WITH ORDINALITY AS u(e, o);
    RETURN v_filter;
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
-- Authorization: the admin only (INSUFFICIENT_PERMISSIONS before anything).
-- Invariants: emits api_key.created; key_prefix is unique (a colliding
-- secret is drawn again); one audit row (createApiKey).
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
    v_ctx          jsonb := cycles._admin_principal(p_ctx, NULL);
    v_options      jsonb;
    v_permissions  text[];
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
    v_permissions := cycles._require_permissions(p_permissions);
    IF v_expires_at <= clock_timestamp() THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('expires_at %s is not in the future', cycles._iso8601(v_expires_at)));
    END IF;
    v_options := cycles._require_known_options(p_options, ARRAY['description', 'scope_filter', 'metadata'],
                                               'api key option');
    v_scope_filter := cycles._require_scope_filter(v_options -> 'scope_filter');
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
        p_actor => cycles._actor(v_ctx),
        p_data => jsonb_build_object(
            'key_id', v_key.key_id, 'key_name', v_key.name, 'new_status', 'ACTIVE',
            'permissions', to_jsonb(v_key.permissions)),
        p_request_id => v_ctx ->> 'request_id', p_trace_id => v_ctx ->> 'trace_id');
    PERFORM cycles._audit(v_ctx, 'createApiKey', 'api_key', v_key.key_id, 201, p_tenant_id);

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
-- A page of keys, oldest first: {keys, has_more, next_cursor} (never a hash
-- or a secret). p_tenant_id NULL lists every tenant's keys. p_status filters
-- on the shown status (ACTIVE, REVOKED, EXPIRED); p_search is a
-- case-insensitive substring of key_id or name (empty means absent). The
-- cursor is the key_id of the last row of the previous page. Reads only;
-- allowed for a closed tenant.
-- Authorization: the admin only. One audit row (listApiKeys).
-- Errors: INSUFFICIENT_PERMISSIONS; INVALID_REQUEST (unknown status, limit
-- outside 1..100, search longer than 128, unknown cursor); TENANT_NOT_FOUND.
CREATE FUNCTION cycles.list_api_keys(
    p_tenant_id text DEFAULT NULL,
    p_status    text DEFAULT NULL,
    p_limit     integer DEFAULT 50,
    p_cursor    text DEFAULT NULL,
    p_search    text DEFAULT NULL,
    p_ctx       jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, NULL);
    v_limit  integer := cycles._page_limit(p_limit);
    v_search text := lower(nullif(p_search, ''));
    v_after  cycles.api_keys;
    v_rows   cycles.api_keys[];
BEGIN
    IF p_status IS NOT NULL AND p_status NOT IN ('ACTIVE', 'REVOKED', 'EXPIRED') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown key status %L: expected ACTIVE, REVOKED or EXPIRED', p_status));
    END IF;
    IF char_length(v_search) > 128 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'search must be at most 128 characters');
    END IF;
    IF p_tenant_id IS NOT NULL AND NOT EXISTS (SELECT FROM cycles.tenants AS t WHERE t.tenant_id = p_tenant_id) THEN
        PERFORM cycles._fail('TENANT_NOT_FOUND', format('tenant %L not found', p_tenant_id),
            jsonb_build_object('tenant_id', p_tenant_id));
    END IF;
    IF p_cursor IS NOT NULL THEN
        SELECT k.* INTO v_after FROM cycles.api_keys AS k
        WHERE k.key_id = p_cursor AND (p_tenant_id IS NULL OR k.tenant_id = p_tenant_id);
        IF v_after.key_id IS NULL THEN
            PERFORM cycles._fail('INVALID_REQUEST', format('unknown cursor %L', p_cursor));
        END IF;
    END IF;

    SELECT coalesce(array_agg(page ORDER BY page.created_at, page.key_id), '{}') INTO v_rows
    FROM (
        SELECT k.*
        FROM cycles.api_keys AS k
        WHERE (p_tenant_id IS NULL OR k.tenant_id = p_tenant_id)
          AND (p_status IS NULL OR cycles._api_key_json(k) ->> 'status' = p_status)
          AND (v_search IS NULL OR strpos(lower(k.key_id), v_search) > 0 OR strpos(lower(k.name), v_search) > 0)
          AND (v_after.key_id IS NULL OR (k.created_at, k.key_id) > (v_after.created_at, v_after.key_id))
        ORDER BY k.created_at, k.key_id
        LIMIT v_limit + 1
    ) AS page;

    PERFORM cycles._audit(v_ctx, 'listApiKeys', 'api_key', NULL, 200, p_tenant_id);
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'keys', coalesce((SELECT jsonb_agg(cycles._api_key_json(v_rows[i]) ORDER BY i)
                          FROM generate_series(1, least(cardinality(v_rows), v_limit)) AS i), '[]'::jsonb),
        'has_more', cardinality(v_rows) > v_limit,
        'next_cursor', CASE WHEN cardinality(v_rows) > v_limit THEN (v_rows[v_limit]).key_id END));
END;
$$;

-- cycles.get_api_key -----------------------------------------------------------
-- The ApiKey object (never the hash). Reads only.
-- Authorization: the admin only. One audit row (getApiKey).
-- Errors: INSUFFICIENT_PERMISSIONS, NOT_FOUND.
CREATE FUNCTION cycles.get_api_key(p_key_id text, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx jsonb := cycles._admin_principal(p_ctx, NULL);
    v_key cycles.api_keys;
BEGIN
    SELECT k.* INTO v_key FROM cycles.api_keys AS k WHERE k.key_id = p_key_id;
    IF v_key.key_id IS NULL THEN
        PERFORM cycles._fail('NOT_FOUND', format('API key %L not found', p_key_id),
            jsonb_build_object('key_id', p_key_id));
    END IF;
    PERFORM cycles._audit(v_ctx, 'getApiKey', 'api_key', p_key_id, 200, v_key.tenant_id);
    RETURN cycles._api_key_json(v_key);
END;
$$;

-- cycles.update_api_key --------------------------------------------------------
-- PATCH /v1/admin/api-keys/{key_id}: p_patch may hold name (1..256),
-- description (<= 1024, null clears), permissions (replaces the set; checked
-- against the Permission enum), scope_filter (replaces; null clears) and
-- metadata (object). tenant_id, key_prefix, expires_at and status are
-- immutable. Returns the ApiKey.
-- Authorization: the admin only.
-- Locks: the owning tenant FOR SHARE (a close waits), then the key FOR UPDATE.
-- Errors, in precedence order:
--   INSUFFICIENT_PERMISSIONS  a tenant key
--   INVALID_REQUEST           unknown or malformed field, empty patch
--   NOT_FOUND                 no such key
--   TENANT_CLOSED             the key's tenant is closed
--   INVALID_TRANSITION        the key is revoked or expired (409)
-- Invariants: emits api_key.permissions_changed when permissions or
-- scope_filter changed; one audit row (updateApiKey).
CREATE FUNCTION cycles.update_api_key(p_key_id text, p_patch jsonb, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx         jsonb := cycles._admin_principal(p_ctx, NULL);
    v_patch       jsonb;
    v_permissions text[];
    v_filter      text[];
    v_tenant_id   text;
    v_before      cycles.api_keys;
    v_after       cycles.api_keys;
BEGIN
    v_patch := cycles._require_known_options(p_patch,
        ARRAY['name', 'description', 'permissions', 'scope_filter', 'metadata'], 'API key field');
    IF v_patch = '{}'::jsonb THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'the patch names no field to change');
    END IF;
    IF v_patch ? 'name' AND (jsonb_typeof(v_patch -> 'name') IS DISTINCT FROM 'string'
                             OR char_length(v_patch ->> 'name') NOT BETWEEN 1 AND 256) THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'name must be 1 to 256 characters long');
    END IF;
    PERFORM cycles._text_option(v_patch, 'description', 1024);
    IF v_patch ? 'permissions' THEN
        IF jsonb_typeof(v_patch -> 'permissions') IS DISTINCT FROM 'array'
           OR EXISTS (SELECT FROM jsonb_array_elements(v_patch -> 'permissions') AS e
                      WHERE jsonb_typeof(e) <> 'string') THEN
            PERFORM cycles._fail('INVALID_REQUEST', 'permissions must be an array of permission names');
        END IF;
        v_permissions := cycles._require_permissions(
            ARRAY(SELECT jsonb_array_elements_text(v_patch -> 'permissions')));
    END IF;
    v_filter := cycles._require_scope_filter(v_patch -> 'scope_filter');
    IF v_patch ? 'metadata' AND jsonb_typeof(v_patch -> 'metadata') IS DISTINCT FROM 'object' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'metadata must be a JSON object');
    END IF;

    SELECT k.tenant_id INTO v_tenant_id FROM cycles.api_keys AS k WHERE k.key_id = p_key_id;
    IF v_tenant_id IS NULL THEN
        PERFORM cycles._fail('NOT_FOUND', format('API key %L not found', p_key_id),
            jsonb_build_object('key_id', p_key_id));
    END IF;
    PERFORM cycles._lock_tenant_for_child_change(v_tenant_id);
    SELECT k.* INTO v_before FROM cycles.api_keys AS k WHERE k.key_id = p_key_id FOR UPDATE;
    IF cycles._api_key_json(v_before) ->> 'status' <> 'ACTIVE' THEN
        PERFORM cycles._fail('INVALID_TRANSITION',
            format('API key %L is %s and cannot be modified', p_key_id, cycles._api_key_json(v_before) ->> 'status'),
            jsonb_build_object('key_id', p_key_id, 'status', cycles._api_key_json(v_before) ->> 'status'));
    END IF;

    UPDATE cycles.api_keys AS k SET
        name = coalesce(v_patch ->> 'name', k.name),
        description = CASE WHEN v_patch ? 'description' THEN v_patch ->> 'description' ELSE k.description END,
        permissions = coalesce(v_permissions, k.permissions),
        scope_filter = CASE WHEN v_patch ? 'scope_filter' THEN v_filter ELSE k.scope_filter END,
        metadata = coalesce(v_patch -> 'metadata', k.metadata)
    WHERE k.key_id = p_key_id
    RETURNING k.* INTO v_after;

    IF v_before.permissions IS DISTINCT FROM v_after.permissions
       OR v_before.scope_filter IS DISTINCT FROM v_after.scope_filter THEN
        PERFORM cycles._emit_event(
            p_tenant_id => v_after.tenant_id, p_event_type => 'api_key.permissions_changed',
            p_source => 'cycles-admin', p_actor => cycles._actor(v_ctx),
            p_data => jsonb_build_object(
                'key_id', v_after.key_id, 'key_name', v_after.name, 'previous_status', 'ACTIVE',
                'new_status', 'ACTIVE', 'permissions', to_jsonb(v_after.permissions)),
            p_request_id => v_ctx ->> 'request_id', p_trace_id => v_ctx ->> 'trace_id');
    END IF;
    PERFORM cycles._audit(v_ctx, 'updateApiKey', 'api_key', p_key_id, 200, v_after.tenant_id,
        p_metadata => jsonb_build_object('changed_fields', (SELECT jsonb_agg(k ORDER BY k)
                                                            FROM jsonb_object_keys(v_patch) AS k)));
    RETURN cycles._api_key_json(v_after);
END;
$$;

-- cycles.revoke_api_key --------------------------------------------------------
-- ACTIVE -> REVOKED, permanently; the row is kept for audit. Reservations made
-- with the key may still be committed or released. Returns the ApiKey object
-- (revoked_reason = p_reason).
-- Authorization: the admin only.
-- Locks: the key row FOR UPDATE.
-- Errors, in precedence order:
--   INSUFFICIENT_PERMISSIONS a tenant key
--   INVALID_REQUEST  reason longer than 512 characters
--   NOT_FOUND        no such key
--   INVALID_TRANSITION the key is already revoked (409: the spec's "already
--                    revoked"; KEY_REVOKED is the authentication failure, 401)
-- Invariants: emits api_key.revoked; one audit row (revokeApiKey).
CREATE FUNCTION cycles.revoke_api_key(
    p_key_id text,
    p_reason text DEFAULT NULL,
    p_ctx    jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx      jsonb := cycles._admin_principal(p_ctx, NULL);
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
        p_actor => cycles._actor(v_ctx),
        p_data => jsonb_build_object(
            'key_id', v_key.key_id, 'key_name', v_key.name, 'previous_status', v_previous,
            'new_status', 'REVOKED', 'permissions', to_jsonb(v_key.permissions)),
        p_request_id => v_ctx ->> 'request_id', p_trace_id => v_ctx ->> 'trace_id');
    PERFORM cycles._audit(v_ctx, 'revokeApiKey', 'api_key', p_key_id, 200, v_key.tenant_id,
        p_metadata => jsonb_build_object('reason', p_reason));
    RETURN cycles._api_key_json(v_key);
END;
$$;
