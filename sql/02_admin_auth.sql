-- Admin-plane principal and audit log: who is calling an admin function, what
-- they may do, and the append-only record of every admin request.
--
-- Every admin function starts with cycles._admin_principal(p_ctx, ...). A
-- REST request made with the server's admin key (checked by the HTTP layer,
-- which alone knows that secret) and a psql caller both arrive without an
-- api_key in p_ctx and act as the platform admin. A request made with a
-- tenant key carries the key's secret in p_ctx ->> 'api_key': the key is
-- authenticated here, its permissions are checked here, and the tenant it may
-- act for is returned, so no authorization decision is taken outside SQL.
-- The secret never leaves this function: the context it returns (and that
-- ledger rows, events and audit rows record) holds only the key_id.

-- The audit log -----------------------------------------------------------
-- One row per admin request (success or failure) and per admin-on-behalf-of
-- runtime action. tenant_id is the tenant acted upon or authenticated as, or
-- a sentinel: '__admin__' (admin-key or psql call not scoped to one tenant),
-- '__unauth__' (failed before authentication). Append-only like the ledger.

CREATE TABLE cycles.audit_logs (
    seq           bigint      GENERATED ALWAYS AS IDENTITY,
    log_id        text        NOT NULL,
    tenant_id     text        NOT NULL,
    key_id        text,
    actor_type    text        NOT NULL,
    user_agent    text,
    source_ip     text,
    operation     text        NOT NULL,
    resource_type text,
    resource_id   text,
    request_id    text,
    trace_id      text,
    status        integer     NOT NULL,
    error_code    text,
    subject       jsonb,
    action        jsonb,
    amount        jsonb,
    metadata      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT audit_logs_pkey PRIMARY KEY (seq),
    CONSTRAINT audit_logs_log_id_key UNIQUE (log_id),
    CONSTRAINT audit_logs_tenant_id_format CHECK (
        tenant_id IN ('__admin__', '__unauth__') OR tenant_id ~ '^[a-z0-9-]{3,64}$'),
    CONSTRAINT audit_logs_actor_type_valid CHECK (
        actor_type IN ('admin', 'api_key', 'admin_on_behalf_of', 'system')),
    CONSTRAINT audit_logs_status_range CHECK (status BETWEEN 100 AND 599),
    CONSTRAINT audit_logs_error_iff_failed CHECK ((status >= 400) = (error_code IS NOT NULL)),
    CONSTRAINT audit_logs_operation_length CHECK (char_length(operation) BETWEEN 1 AND 256),
    CONSTRAINT audit_logs_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);

CREATE INDEX audit_logs_tenant_time_idx ON cycles.audit_logs (tenant_id, created_at, seq);
CREATE INDEX audit_logs_time_idx ON cycles.audit_logs (created_at, seq);
CREATE INDEX audit_logs_request_idx ON cycles.audit_logs (request_id) WHERE request_id IS NOT NULL;

CREATE FUNCTION cycles._audit_is_append_only() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'cycles.audit_logs is append-only: % is not allowed', tg_op
        USING ERRCODE = 'CY0LA';
END;
$$;

CREATE TRIGGER audit_logs_append_only
    BEFORE UPDATE OR DELETE ON cycles.audit_logs
    FOR EACH ROW EXECUTE FUNCTION cycles._audit_is_append_only();

CREATE TRIGGER audit_logs_no_truncate
    BEFORE TRUNCATE ON cycles.audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION cycles._audit_is_append_only();

-- cycles._audit -----------------------------------------------------------
-- Appends one audit row for a request. p_ctx is the context returned by
-- cycles._admin_principal (never a raw secret); p_tenant_id is the tenant
-- acted upon (NULL: the key's tenant, or '__admin__'). The one place that
-- writes cycles.audit_logs.
CREATE FUNCTION cycles._audit(
    p_ctx           jsonb,
    p_operation     text,
    p_resource_type text,
    p_resource_id   text,
    p_status        integer DEFAULT 200,
    p_tenant_id     text DEFAULT NULL,
    p_error_code    text DEFAULT NULL,
    p_metadata      jsonb DEFAULT NULL,
    p_subject       jsonb DEFAULT NULL,
    p_action        jsonb DEFAULT NULL,
    p_amount        jsonb DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := coalesce(p_ctx, '{}'::jsonb);
    v_log_id text := cycles._new_id('audit_', 24);
BEGIN
    INSERT INTO cycles.audit_logs (
        log_id, tenant_id, key_id, actor_type, user_agent, source_ip, operation, resource_type,
        resource_id, request_id, trace_id, status, error_code, subject, action, amount, metadata)
    VALUES (
        v_log_id,
        coalesce(CASE WHEN p_tenant_id ~ '^[a-z0-9-]{3,64}$' OR p_tenant_id IN ('__admin__', '__unauth__')
                      THEN p_tenant_id END,
                 v_ctx ->> 'principal_tenant_id', '__admin__'),
        v_ctx ->> 'key_id',
        coalesce(v_ctx ->> 'actor_type', 'admin'),
        left(v_ctx ->> 'user_agent', 512),
        left(v_ctx ->> 'source_ip', 64),
        left(p_operation, 256),
        p_resource_type,
        left(p_resource_id, 1024),
        v_ctx ->> 'request_id',
        v_ctx ->> 'trace_id',
        p_status,
        p_error_code,
        p_subject,
        p_action,
        p_amount,
        jsonb_strip_nulls(coalesce(p_metadata, '{}'::jsonb)
            || jsonb_build_object('actor_type', coalesce(v_ctx ->> 'actor_type', 'admin'),
                                  'db_user', CASE WHEN v_ctx ->> 'request_id' IS NULL THEN session_user::text END)));
    RETURN v_log_id;
END;
$$;

-- cycles._admin_principal ---------------------------------------------------
-- Authenticates and authorizes the caller of an admin function and returns
-- the request context to use from then on:
--   {request_id, trace_id, actor_type, key_id, source_ip, user_agent,
--    principal_tenant_id}
-- principal_tenant_id is absent for the platform admin (may act on any
-- tenant) and is the key's tenant for a tenant key (may act on that tenant
-- only; see cycles._admin_scope_tenant).
-- Without p_ctx ->> 'api_key' the caller is the admin: a psql session (actor
-- admin), or the HTTP layer after checking X-Admin-API-Key (actor admin, or
-- admin_on_behalf_of as it says). p_permissions lists the permissions any
-- one of which lets a tenant key call the function (wildcards per
-- cycles._has_permission); NULL or empty means the admin key only.
-- Errors, in precedence order:
--   UNAUTHORIZED             unknown, revoked or expired key
--   INSUFFICIENT_PERMISSIONS the key has none of p_permissions (or the
--                            function is for the admin key only)
CREATE FUNCTION cycles._admin_principal(p_ctx jsonb, p_permissions text[] DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := coalesce(p_ctx, '{}'::jsonb);
    v_auth   record;
    v_result jsonb;
BEGIN
    v_result := jsonb_strip_nulls(jsonb_build_object(
        'request_id', v_ctx ->> 'request_id',
        'trace_id', v_ctx ->> 'trace_id',
        'source_ip', v_ctx ->> 'source_ip',
        'user_agent', v_ctx ->> 'user_agent'));
    IF NOT v_ctx ? 'api_key' THEN
        RETURN v_result || jsonb_build_object(
            'actor_type', CASE WHEN v_ctx ->> 'actor_type' = 'admin_on_behalf_of'
                               THEN 'admin_on_behalf_of' ELSE 'admin' END);
    END IF;
    SELECT * INTO v_auth FROM cycles._authenticate(v_ctx ->> 'api_key');
    IF p_permissions IS NULL OR NOT EXISTS (
        SELECT FROM unnest(p_permissions) AS p WHERE cycles._has_permission((v_auth.o_key).permissions, p)) THEN
        PERFORM cycles._fail('INSUFFICIENT_PERMISSIONS',
            CASE WHEN coalesce(cardinality(p_permissions), 0) = 0
                 THEN 'this operation requires the admin key (X-Admin-API-Key)'
                 ELSE format('API key lacks the permission %s', array_to_string(p_permissions, ' or ')) END,
            jsonb_build_object('required_permissions', to_jsonb(coalesce(p_permissions, '{}'::text[]))));
    END IF;
    RETURN v_result || jsonb_build_object(
        'actor_type', 'api_key',
        'key_id', (v_auth.o_key).key_id,
        'principal_tenant_id', (v_auth.o_key).tenant_id,
        'scope_filter', to_jsonb((v_auth.o_key).scope_filter));
END;
$$;

-- The tenant an admin call acts on, checked against the principal:
-- the admin may name any tenant (p_tenant_id, which may be NULL for "all");
-- a tenant key acts on its own tenant: naming no tenant means its own, naming
-- another is refused with p_error (FORBIDDEN for a named target, NOT_FOUND
-- where the existence of another tenant's object must not be revealed).
CREATE FUNCTION cycles._admin_scope_tenant(
    p_ctx jsonb, p_tenant_id text, p_error text DEFAULT 'FORBIDDEN'
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_own text := p_ctx ->> 'principal_tenant_id';
BEGIN
    IF v_own IS NULL THEN
        RETURN p_tenant_id;
    END IF;
    IF p_tenant_id IS NOT NULL AND p_tenant_id <> v_own THEN
        PERFORM cycles._fail(p_error,
            CASE p_error WHEN 'FORBIDDEN' THEN 'API key may only act on its own tenant'
                         WHEN 'TENANT_NOT_FOUND' THEN format('tenant %L not found', p_tenant_id)
                         ELSE 'not found' END,
            CASE WHEN p_error = 'TENANT_NOT_FOUND' THEN jsonb_build_object('tenant_id', p_tenant_id) END);
    END IF;
    RETURN v_own;
END;
$$;

-- Whether a scope lies within a key's scope_filter (an empty filter allows
-- everything). A filter entry is a level:value segment ("workspace:eng",
-- "agent:*") that must appear in the scope, or a full scope the scope must
-- equal or descend from.
CREATE FUNCTION cycles._scope_filter_allows(p_filter jsonb, p_scope text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN p_filter IS NULL OR jsonb_typeof(p_filter) <> 'array' OR jsonb_array_length(p_filter) = 0
        OR EXISTS (
            SELECT FROM jsonb_array_elements_text(p_filter) AS f(entry)
            WHERE lower(f.entry) = p_scope
               OR left(p_scope, char_length(f.entry) + 1) = lower(f.entry) || '/'
               OR lower(f.entry) = ANY (string_to_array(p_scope, '/'))
               OR (f.entry LIKE '%:*' AND EXISTS (
                    SELECT FROM unnest(string_to_array(p_scope, '/')) AS s(seg)
                    WHERE split_part(s.seg, ':', 1) = lower(split_part(f.entry, ':', 1)))));
END;
$$;

-- For a tenant key: FORBIDDEN unless the canonical scope belongs to its
-- tenant and lies within its scope_filter. The admin may touch any scope.
CREATE FUNCTION cycles._admin_require_scope(p_ctx jsonb, p_scope text) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_ctx ->> 'principal_tenant_id' IS NULL THEN
        RETURN;
    END IF;
    IF cycles._scope_tenant(p_scope) <> p_ctx ->> 'principal_tenant_id'
       OR NOT cycles._scope_filter_allows(p_ctx -> 'scope_filter', p_scope) THEN
        PERFORM cycles._fail('FORBIDDEN', format('API key may not act on scope %L', p_scope),
            jsonb_build_object('scope', p_scope));
    END IF;
END;
$$;

-- The audit row of a runtime call the admin made on a tenant's behalf (a
-- NULL API key: release, list and get of reservations); nothing for a
-- tenant key's own runtime calls. Called by those functions just before they
-- return, in their transaction.
CREATE FUNCTION cycles._audit_on_behalf(
    p_api_key text, p_ctx jsonb, p_operation text, p_resource_id text, p_tenant_id text
) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_api_key IS NULL THEN
        PERFORM cycles._audit(
            coalesce(p_ctx, '{}'::jsonb) || jsonb_build_object('actor_type', 'admin_on_behalf_of'),
            p_operation, 'reservation', p_resource_id, 200, coalesce(p_tenant_id, '__admin__'));
    END IF;
END;
$$;
