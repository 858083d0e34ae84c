-- Read-only runtime queries: balances, reservations, key introspection.

-- Query parameters -----------------------------------------------------------
-- Query strings arrive as a JSON object of the parameters sent; a blank
-- value means the parameter was not set.

CREATE FUNCTION cycles._query_text(p_query jsonb, p_field text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN nullif(btrim(p_query ->> p_field), '');
END;
$$;

-- limit: 1..200, default 50. Errors: INVALID_REQUEST.
CREATE FUNCTION cycles._query_limit(p_query jsonb) RETURNS integer
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_text text := cycles._query_text(p_query, 'limit');
BEGIN
    IF v_text IS NULL THEN
        RETURN 50;
    END IF;
    IF v_text !~ '^[0-9]{1,4}$' OR v_text::integer NOT BETWEEN 1 AND 200 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'limit must be an integer between 1 and 200');
    END IF;
    RETURN v_text::integer;
END;
$$;

-- An ISO-8601 date-time bound as epoch milliseconds (NULL when unset).
-- Errors: INVALID_REQUEST.
CREATE FUNCTION cycles._query_time_ms(p_query jsonb, p_field text) RETURNS bigint
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_text text := cycles._query_text(p_query, p_field);
    v_ts   timestamptz;
BEGIN
    IF v_text IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_text ~ '^\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?([Zz]|[+-]\d{2}(:?\d{2})?)?$' THEN
        BEGIN
            v_ts := v_text::timestamptz;
        EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
            v_ts := NULL;
        END;
    END IF;
    IF v_ts IS NULL THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('%s must be an ISO-8601 date-time, got %L', p_field, v_text));
    END IF;
    RETURN floor(extract(epoch FROM v_ts) * 1000)::bigint;
END;
$$;

-- Opaque page cursors: url-safe base64 of a small JSON object that carries
-- the last row's sort key and a hash of the filters it was made under.
CREATE FUNCTION cycles._cursor_encode(p_payload jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN rtrim(translate(replace(encode(convert_to(p_payload::text, 'UTF8'), 'base64'), E'\n', ''),
                           '+/', '-_'), '=');
END;
$$;

-- The cursor's payload, checked against the filters of this request.
-- Errors: INVALID_REQUEST (malformed, or made under other filters).
CREATE FUNCTION cycles._cursor_decode(p_cursor text, p_filter_hash text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_text    text := translate(p_cursor, '-_', '+/');
    v_payload jsonb;
BEGIN
    BEGIN
        v_text := v_text || repeat('=', (4 - char_length(v_text) % 4) % 4);
        v_payload := convert_from(decode(v_text, 'base64'), 'UTF8')::jsonb;
    EXCEPTION WHEN OTHERS THEN
        v_payload := NULL;
    END;
    IF v_payload IS NULL OR jsonb_typeof(v_payload) <> 'object'
            OR jsonb_typeof(v_payload -> 'k') IS DISTINCT FROM 'string'
            OR jsonb_typeof(v_payload -> 'id') IS DISTINCT FROM 'string' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'malformed cursor');
    END IF;
    IF v_payload ->> 'f' IS DISTINCT FROM p_filter_hash THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'cursor was issued for different filters');
    END IF;
    RETURN v_payload;
END;
$$;

-- The caller's tenant for a read: the key's tenant, with the tenant query
-- parameter as validation only (FORBIDDEN when it names another tenant); or,
-- for an admin caller (NULL key), the required tenant parameter. Also the
-- key's scope_filter (empty for the admin): a filtered key reads only the
-- scopes its filter allows, as it may only act on those.
-- Errors: UNAUTHORIZED, FORBIDDEN, INVALID_REQUEST.
CREATE FUNCTION cycles._query_tenant(
    p_api_key text, p_permission text, p_query jsonb, p_ctx jsonb,
    OUT o_tenant_id text, OUT o_scope_filter jsonb
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_filter text := lower(cycles._query_text(p_query, 'tenant'));
BEGIN
    o_scope_filter := '[]'::jsonb;
    IF p_api_key IS NULL THEN
        PERFORM cycles._require_admin_context(p_ctx, ARRAY['admin', 'admin_on_behalf_of']);
        IF v_filter IS NULL THEN
            PERFORM cycles._fail('INVALID_REQUEST',
                'tenant query parameter is required when using admin key authentication');
        END IF;
        o_tenant_id := v_filter;
        RETURN;
    END IF;
    SELECT (p.o_tenant).tenant_id, to_jsonb(p.o_scope_filter) INTO o_tenant_id, o_scope_filter
    FROM cycles._runtime_principal(p_api_key, p_permission) AS p;
    IF v_filter IS NOT NULL AND v_filter <> o_tenant_id THEN
        PERFORM cycles._fail('FORBIDDEN', 'tenant parameter does not match the API key''s tenant',
            jsonb_build_object('tenant', v_filter));
    END IF;
END;
$$;

-- Subject filters below the tenant, as lower-cased level:value segments.
-- Errors: INVALID_REQUEST.
CREATE FUNCTION cycles._query_segments(p_query jsonb) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_level    text;
    v_value    text;
    v_segments text[] := '{}';
BEGIN
    FOREACH v_level IN ARRAY (cycles._scope_levels())[2:] LOOP
        v_value := lower(cycles._query_text(p_query, v_level));
        CONTINUE WHEN v_value IS NULL;
        IF v_value !~ '^[a-z0-9_.-]{1,128}$' THEN
            PERFORM cycles._fail('INVALID_REQUEST', format('%s must match ^[a-zA-Z0-9_.-]{1,128}$', v_level));
        END IF;
        v_segments := v_segments || (v_level || ':' || v_value);
    END LOOP;
    RETURN v_segments;
END;
$$;

-- cycles.balances: GET /v1/balances.
--
-- The balances of the caller's tenant's budgets whose scope contains every
-- subject segment given (workspace..toolset), optionally under scope_prefix
-- and in one unit, in (scope byte order, unit) order, paged by an opaque
-- cursor. include_children is accepted and ignored: matching is by segment,
-- so descendants are always included.
--
-- Locks: none.
--
-- Errors: UNAUTHORIZED; FORBIDDEN (permission balances:read, or another
-- tenant named); INVALID_REQUEST (no subject filter, bad value, limit,
-- cursor).
CREATE FUNCTION cycles.balances(p_api_key text, p_query jsonb, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_query    jsonb := coalesce(p_query, '{}'::jsonb);
    v_tenant   text;
    v_segments text[];
    v_prefix   text := cycles._query_text(v_query, 'scope_prefix');
    v_unit     text := cycles._query_text(v_query, 'unit');
    v_limit    integer;
    v_hash     text;
    v_cursor   jsonb;
    v_rows     cycles.budgets[];
    v_more     boolean;
    v_last     cycles.budgets;
    v_response jsonb;
    v_allowed  jsonb;
BEGIN
    SELECT q.o_tenant_id, q.o_scope_filter INTO v_tenant, v_allowed
    FROM cycles._query_tenant(p_api_key, 'balances:read', v_query, p_ctx) AS q;
    v_segments := cycles._query_segments(v_query);
    IF cycles._query_text(v_query, 'tenant') IS NULL AND cardinality(v_segments) = 0 AND v_prefix IS NULL THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            'at least one of tenant, workspace, app, workflow, agent, toolset is required');
    END IF;
    IF v_prefix IS NOT NULL THEN
        v_prefix := cycles._canonical_scope(v_prefix);
        IF cycles._scope_tenant(v_prefix) <> v_tenant THEN
            PERFORM cycles._fail('FORBIDDEN', 'scope_prefix names another tenant',
                jsonb_build_object('scope_prefix', v_prefix));
        END IF;
    END IF;
    IF v_unit IS NOT NULL THEN
        PERFORM cycles._require_unit(v_unit);
    END IF;
    v_limit := cycles._query_limit(v_query);
    v_hash := left(md5(jsonb_build_array(v_tenant, v_segments, v_prefix, v_unit)::text), 16);
    IF cycles._query_text(v_query, 'cursor') IS NOT NULL THEN
        v_cursor := cycles._cursor_decode(cycles._query_text(v_query, 'cursor'), v_hash);
    END IF;

    v_rows := ARRAY(
        SELECT b
        FROM cycles.budgets AS b
        WHERE b.tenant_id = v_tenant
          AND string_to_array(b.scope, '/') @> (('tenant:' || v_tenant) || v_segments)
          AND (v_prefix IS NULL OR b.scope = v_prefix
               OR left(b.scope, char_length(v_prefix) + 1) = v_prefix || '/')
          AND (v_unit IS NULL OR b.unit = v_unit)
          AND (jsonb_array_length(v_allowed) = 0 OR cycles._scope_filter_allows(v_allowed, b.scope))
          AND (v_cursor IS NULL
               OR (b.scope COLLATE "C", b.unit) > ((v_cursor ->> 'k') COLLATE "C", v_cursor ->> 'id'))
        ORDER BY b.scope COLLATE "C", b.unit
        LIMIT v_limit + 1);
    v_more := cardinality(v_rows) > v_limit;
    IF v_more THEN
        v_rows := v_rows[1:v_limit];
        v_last := v_rows[v_limit];
    END IF;
    v_response := jsonb_build_object('balances', cycles._balances_json(v_rows), 'has_more', v_more);
    IF v_more THEN
        v_response := v_response || jsonb_build_object('next_cursor', cycles._cursor_encode(
            jsonb_build_object('k', v_last.scope, 'id', v_last.unit, 'f', v_hash)));
    END IF;
    RETURN v_response;
END;
$$;

-- The ReservationSummary / ReservationDetail object of a reservation.
-- committed only on COMMITTED rows, finalized_at_ms only on COMMITTED and
-- RELEASED rows; metadata and committed_metadata only when asked for.
CREATE FUNCTION cycles._reservation_json(
    p_row cycles.reservations, p_metadata boolean, p_committed_metadata boolean
) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'reservation_id', p_row.reservation_id,
        'status', p_row.status,
        'idempotency_key', p_row.idempotency_key,
        'subject', p_row.subject,
        'action', p_row.action,
        'reserved', cycles._amount_json(p_row.unit, p_row.estimate),
        'committed', CASE WHEN p_row.status = 'COMMITTED'
                          THEN cycles._amount_json(p_row.unit, p_row.committed) END,
        'created_at_ms', p_row.created_at_ms,
        'expires_at_ms', p_row.expires_at_ms,
        'finalized_at_ms', CASE WHEN p_row.status IN ('COMMITTED', 'RELEASED') THEN p_row.finalized_at_ms END,
        'scope_path', p_row.scope_path,
        'affected_scopes', to_jsonb(p_row.affected_scopes),
        'metadata', CASE WHEN p_metadata THEN p_row.metadata END,
        'committed_metadata', CASE WHEN p_committed_metadata THEN p_row.committed_metadata END));
END;
$$;

-- The list filters a reservation matches exactly: its tenant, status and
-- idempotency key and each subject level it names (lower-cased, as the
-- filters compare them), as name:value tokens. One GIN index on them serves
-- every combination of those filters; a btree per filter would cost every
-- reserve six more index entries. One SQL expression, so that PostgreSQL
-- inlines it: the index computes it for every reservation written, and
-- again whenever a reservation's status changes.
CREATE FUNCTION cycles._reservation_tokens(
    p_tenant_id       text,
    p_status          text,
    p_idempotency_key text,
    p_subject         jsonb
) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT array_remove(ARRAY[
        'tenant:' || p_tenant_id,
        'status:' || p_status,
        'idempotency_key:' || p_idempotency_key,
        CASE WHEN jsonb_typeof(p_subject -> 'workspace') = 'string'
             THEN 'workspace:' || lower(p_subject ->> 'workspace') END,
        CASE WHEN jsonb_typeof(p_subject -> 'app') = 'string' THEN 'app:' || lower(p_subject ->> 'app') END,
        CASE WHEN jsonb_typeof(p_subject -> 'workflow') = 'string'
             THEN 'workflow:' || lower(p_subject ->> 'workflow') END,
        CASE WHEN jsonb_typeof(p_subject -> 'agent') = 'string' THEN 'agent:' || lower(p_subject ->> 'agent') END,
        CASE WHEN jsonb_typeof(p_subject -> 'toolset') = 'string'
             THEN 'toolset:' || lower(p_subject ->> 'toolset') END],
        NULL)
$$;

CREATE INDEX reservations_filter_tokens_idx
    ON cycles.reservations USING gin (cycles._reservation_tokens(tenant_id, status, idempotency_key, subject));

-- cycles.list_reservations: GET /v1/reservations.
--
-- The caller's tenant's reservations (an admin caller, NULL key, names the
-- tenant), filtered by idempotency_key, status, subject fields and three
-- inclusive time windows (created, expires, finalized; rows without
-- finalized_at_ms never match a finalized window), sorted by sort_by /
-- sort_dir with reservation_id as tie-breaker, keyset-paged by an opaque
-- cursor bound to the filters. include adds metadata / committed_metadata.
--
-- Locks: none.
--
-- Errors: UNAUTHORIZED; FORBIDDEN (permission reservations:list, or another
-- tenant named); INVALID_REQUEST (missing admin tenant, bad status, date,
-- window, sort, limit or cursor).
CREATE FUNCTION cycles.list_reservations(p_api_key text, p_query jsonb, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_query      jsonb := coalesce(p_query, '{}'::jsonb);
    v_tenant     text;
    v_status     text := upper(cycles._query_text(v_query, 'status'));
    v_idem_key   text := cycles._query_text(v_query, 'idempotency_key');
    v_subject    text[] := '{}';
    v_tokens     text[] := '{}';
    v_level      text;
    v_times      bigint[];
    v_sort_by    text := coalesce(cycles._query_text(v_query, 'sort_by'), 'created_at_ms');
    v_sort_dir   text := lower(coalesce(cycles._query_text(v_query, 'sort_dir'), 'desc'));
    v_sort_expr  text;
    v_numeric    boolean;
    v_include    text[];
    v_limit      integer;
    v_hash       text;
    v_cursor     jsonb;
    v_rows       cycles.reservations[];
    v_more       boolean;
    v_last       cycles.reservations;
    v_response   jsonb;
    v_allowed    jsonb;
BEGIN
    SELECT q.o_tenant_id, q.o_scope_filter INTO v_tenant, v_allowed
    FROM cycles._query_tenant(p_api_key, 'reservations:list', v_query, p_ctx) AS q;
    IF v_status IS NOT NULL AND v_status NOT IN ('ACTIVE', 'COMMITTED', 'RELEASED', 'EXPIRED') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('status must be one of ACTIVE, COMMITTED, RELEASED, EXPIRED, got %L', v_status));
    END IF;
    FOREACH v_level IN ARRAY (cycles._scope_levels())[2:] LOOP
        v_subject := v_subject || lower(cycles._query_text(v_query, v_level));
        IF v_subject[cardinality(v_subject)] IS NOT NULL THEN
            v_tokens := v_tokens || (v_level || ':' || v_subject[cardinality(v_subject)]);
        END IF;
    END LOOP;
    IF v_status IS NOT NULL THEN
        v_tokens := v_tokens || ('status:' || v_status);
    END IF;
    IF v_idem_key IS NOT NULL THEN
        v_tokens := v_tokens || ('idempotency_key:' || v_idem_key);
    END IF;
    IF cardinality(v_tokens) > 0 THEN
        v_tokens := ('tenant:' || v_tenant) || v_tokens;
    END IF;
    v_times := ARRAY[
        cycles._query_time_ms(v_query, 'from'), cycles._query_time_ms(v_query, 'to'),
        cycles._query_time_ms(v_query, 'expires_from'), cycles._query_time_ms(v_query, 'expires_to'),
        cycles._query_time_ms(v_query, 'finalized_from'), cycles._query_time_ms(v_query, 'finalized_to')];
    IF v_times[1] > v_times[2] OR v_times[3] > v_times[4] OR v_times[5] > v_times[6] THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'a window''s lower bound is after its upper bound');
    END IF;
    v_sort_expr := CASE v_sort_by
        WHEN 'reservation_id' THEN 'r.reservation_id COLLATE "C"'
        WHEN 'tenant' THEN 'r.tenant_id COLLATE "C"'
        WHEN 'scope_path' THEN 'r.scope_path COLLATE "C"'
        WHEN 'status' THEN 'r.status COLLATE "C"'
        WHEN 'reserved' THEN 'r.estimate'
        WHEN 'created_at_ms' THEN 'r.created_at_ms'
        WHEN 'expires_at_ms' THEN 'r.expires_at_ms'
    END;
    IF v_sort_expr IS NULL THEN
        PERFORM cycles._fail('INVALID_REQUEST', format(
            'sort_by must be one of reservation_id, tenant, scope_path, status, reserved, created_at_ms, '
            'expires_at_ms, got %L', v_sort_by));
    END IF;
    IF v_sort_dir NOT IN ('asc', 'desc') THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('sort_dir must be asc or desc, got %L', v_sort_dir));
    END IF;
    v_numeric := v_sort_by IN ('reserved', 'created_at_ms', 'expires_at_ms');
    v_include := ARRAY(SELECT btrim(t) FROM unnest(string_to_array(coalesce(v_query ->> 'include', ''), ',')) AS t);
    v_limit := cycles._query_limit(v_query);
    v_hash := left(md5(jsonb_build_array(
        v_tenant, v_status, v_idem_key, v_subject, v_times, v_sort_by, v_sort_dir)::text), 16);
    IF cycles._query_text(v_query, 'cursor') IS NOT NULL THEN
        v_cursor := cycles._cursor_decode(cycles._query_text(v_query, 'cursor'), v_hash);
        IF v_numeric AND v_cursor ->> 'k' !~ '^-?[0-9]{1,19}$' THEN
            PERFORM cycles._fail('INVALID_REQUEST', 'malformed cursor');
        END IF;
    END IF;

    EXECUTE format($query$
        SELECT ARRAY(
            SELECT r
            FROM cycles.reservations AS r
            WHERE r.tenant_id = $1
              AND (cardinality($4) = 0
                   OR cycles._reservation_tokens(r.tenant_id, r.status, r.idempotency_key, r.subject) @> $4)
              AND ($5[1]::bigint IS NULL OR r.created_at_ms >= $5[1])
              AND ($5[2]::bigint IS NULL OR r.created_at_ms <= $5[2])
              AND ($5[3]::bigint IS NULL OR r.expires_at_ms >= $5[3])
              AND ($5[4]::bigint IS NULL OR r.expires_at_ms <= $5[4])
              AND ($5[5]::bigint IS NULL OR r.finalized_at_ms >= $5[5])
              AND ($5[6]::bigint IS NULL OR r.finalized_at_ms <= $5[6])
              AND ($6::text IS NULL OR (%1$s, r.reservation_id COLLATE "C") %3$s ($6::%4$s, $7 COLLATE "C"))
              AND (jsonb_array_length($9) = 0 OR cycles._scope_filter_allows($9, r.scope_path))
            ORDER BY %1$s %2$s, r.reservation_id COLLATE "C" %2$s
            LIMIT $8)
        $query$,
        v_sort_expr, v_sort_dir, CASE v_sort_dir WHEN 'asc' THEN '>' ELSE '<' END,
        CASE WHEN v_numeric THEN 'bigint' ELSE 'text' END)
    INTO v_rows
    USING v_tenant, v_status, v_idem_key, v_tokens, v_times, v_cursor ->> 'k', v_cursor ->> 'id', v_limit + 1,
          v_allowed;

    v_more := cardinality(v_rows) > v_limit;
    IF v_more THEN
        v_rows := v_rows[1:v_limit];
        v_last := v_rows[v_limit];
    END IF;
    v_response := jsonb_build_object(
        'reservations', coalesce((
            SELECT jsonb_agg(cycles._reservation_json(v_rows[i], 'metadata' = ANY (v_include),
                                                      'committed_metadata' = ANY (v_include)) ORDER BY i)
            FROM generate_subscripts(v_rows, 1) AS i), '[]'::jsonb),
        'has_more', v_more);
    IF v_more THEN
        v_response := v_response || jsonb_build_object('next_cursor', cycles._cursor_encode(jsonb_build_object(
            'k', CASE v_sort_by
                     WHEN 'reservation_id' THEN v_last.reservation_id
                     WHEN 'tenant' THEN v_last.tenant_id
                     WHEN 'scope_path' THEN v_last.scope_path
                     WHEN 'status' THEN v_last.status
                     WHEN 'reserved' THEN v_last.estimate::text
                     WHEN 'created_at_ms' THEN v_last.created_at_ms::text
                     WHEN 'expires_at_ms' THEN v_last.expires_at_ms::text
                 END,
            'id', v_last.reservation_id,
            'f', v_hash)));
    END IF;
    PERFORM cycles._audit_on_behalf(p_api_key, p_ctx, 'listReservations', NULL, v_tenant);
    RETURN v_response;
END;
$$;

-- cycles.get_reservation: GET /v1/reservations/{reservation_id}.
--
-- The ReservationDetail of one reservation. A NULL key is an admin caller
-- and may read any tenant's reservation.
--
-- Locks: none.
--
-- Errors, in precedence order: UNAUTHORIZED; FORBIDDEN (permission
-- reservations:list); NOT_FOUND; FORBIDDEN (another tenant's reservation, or
-- a scope outside the key's scope_filter);
-- RESERVATION_EXPIRED (status EXPIRED).
CREATE FUNCTION cycles.get_reservation(p_api_key text, p_reservation_id text, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_tenant_id    text;
    v_scope_filter text[];
    v_row          cycles.reservations;
BEGIN
    IF p_api_key IS NULL THEN
        PERFORM cycles._require_admin_context(p_ctx, ARRAY['admin', 'admin_on_behalf_of']);
    ELSE
        SELECT (p.o_tenant).tenant_id, p.o_scope_filter INTO v_tenant_id, v_scope_filter
        FROM cycles._runtime_principal(p_api_key, 'reservations:list') AS p;
    END IF;
    SELECT r.* INTO v_row FROM cycles.reservations AS r WHERE r.reservation_id = p_reservation_id;
    IF v_row.reservation_id IS NULL THEN
        PERFORM cycles._fail('NOT_FOUND', format('reservation %s not found', p_reservation_id),
            jsonb_build_object('reservation_id', p_reservation_id));
    END IF;
    IF v_tenant_id IS NOT NULL AND v_row.tenant_id <> v_tenant_id THEN
        PERFORM cycles._fail('FORBIDDEN', 'reservation belongs to another tenant',
            jsonb_build_object('reservation_id', p_reservation_id));
    END IF;
    PERFORM cycles._require_scope_in_filter(v_scope_filter, v_row.scope_path);
    IF v_row.status = 'EXPIRED' THEN
        PERFORM cycles._fail('RESERVATION_EXPIRED', format('reservation %s has expired', p_reservation_id),
            jsonb_build_object('reservation_id', p_reservation_id, 'expires_at_ms', v_row.expires_at_ms));
    END IF;
    PERFORM cycles._audit_on_behalf(p_api_key, p_ctx, 'getReservation', p_reservation_id, v_row.tenant_id);
    RETURN cycles._reservation_json(v_row, true, true);
END;
$$;

-- cycles.introspect: GET /v1/auth/introspect.
--
-- What a credential may do: its permissions and the dashboard capabilities
-- derived from them by the published table. A NULL key is the admin key
-- (verified by the caller): every capability, permissions ["*"]. Tenant keys
-- never get the admin-plane capabilities, whatever admin:* they carry.
--
-- Errors: UNAUTHORIZED.
CREATE FUNCTION cycles.introspect(p_api_key text) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_key   cycles.api_keys;
    v_perms text[];
BEGIN
    IF p_api_key IS NULL THEN
        RETURN jsonb_build_object(
            'authenticated', true, 'auth_type', 'admin', 'permissions', jsonb_build_array('*'),
            'capabilities', jsonb_build_object(
                'view_overview', true, 'view_budgets', true, 'view_events', true, 'view_webhooks', true,
                'view_audit', true, 'view_tenants', true, 'view_api_keys', true, 'view_policies', true,
                'view_reservations', true, 'manage_budgets', true, 'manage_policies', true,
                'manage_webhooks', true, 'manage_tenants', true, 'manage_api_keys', true,
                'manage_reservations', true));
    END IF;
    v_key := (cycles._authenticate(p_api_key)).o_key;
    v_perms := v_key.permissions;
    RETURN jsonb_build_object(
        'authenticated', true,
        'auth_type', 'tenant',
        'tenant_id', v_key.tenant_id,
        'key_id', v_key.key_id,
        'permissions', to_jsonb(v_perms),
        'capabilities', jsonb_build_object(
            'view_overview', false,
            'view_budgets', v_perms && ARRAY['budgets:read', 'admin:read', 'admin:budgets:read'],
            'view_events', v_perms && ARRAY['events:read', 'admin:read', 'admin:events:read'],
            'view_webhooks', v_perms && ARRAY['webhooks:read', 'admin:read', 'admin:webhooks:read'],
            'view_audit', false,
            'view_tenants', false,
            'view_api_keys', false,
            'view_policies', v_perms && ARRAY['policies:read', 'admin:read', 'admin:policies:read'],
            'view_reservations', v_perms && ARRAY['reservations:list', 'reservations:create',
                'reservations:commit', 'reservations:release', 'reservations:extend', 'admin:read'],
            'manage_budgets', v_perms && ARRAY['budgets:write', 'admin:write', 'admin:budgets:write'],
            'manage_policies', v_perms && ARRAY['policies:write', 'admin:write', 'admin:policies:write'],
            'manage_webhooks', v_perms && ARRAY['webhooks:write', 'admin:write', 'admin:webhooks:write'],
            'manage_tenants', false,
            'manage_api_keys', false,
            'manage_reservations', v_perms && ARRAY['reservations:create', 'reservations:commit',
                'reservations:release', 'reservations:extend', 'admin:write']))
        || CASE WHEN cardinality(v_key.scope_filter) > 0
                THEN jsonb_build_object('scope_filter', to_jsonb(v_key.scope_filter)) ELSE '{}'::jsonb END;
END;
$$;
