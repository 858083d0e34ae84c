-- The audit log's public functions: list it, and record a failed request.
--
-- Successful admin calls write their audit row themselves, in the same
-- transaction as their change (cycles._audit, 02_admin_auth.sql). A call that
-- raised has rolled back, its audit row with it; the caller then records the
-- failure with cycles.record_audit_failure in a second, short transaction,
-- so every admin request leaves exactly one row.

-- The AuditLogEntry object, nulls omitted.
CREATE FUNCTION cycles._audit_json(p_row cycles.audit_logs) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'log_id', p_row.log_id,
        'timestamp', cycles._iso8601(p_row.created_at),
        'tenant_id', p_row.tenant_id,
        'key_id', p_row.key_id,
        'user_agent', p_row.user_agent,
        'source_ip', p_row.source_ip,
        'operation', p_row.operation,
        'resource_type', p_row.resource_type,
        'resource_id', p_row.resource_id,
        'request_id', p_row.request_id,
        'trace_id', p_row.trace_id,
        'status', p_row.status,
        'error_code', p_row.error_code,
        'subject', p_row.subject,
        'action', p_row.action,
        'amount', p_row.amount,
        'metadata', p_row.metadata));
END;
$$;

-- A filter value that is a list: a JSON array of strings, or a string of
-- comma-separated values; at most 25 values. NULL when absent.
CREATE FUNCTION cycles._audit_list_filter(p_filter jsonb, p_key text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_value  jsonb := p_filter -> p_key;
    v_values text[];
BEGIN
    IF v_value IS NULL OR v_value = 'null'::jsonb THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v_value) = 'string' THEN
        SELECT array_agg(btrim(v)) INTO v_values
        FROM unnest(string_to_array(v_value #>> '{}', ',')) AS v WHERE btrim(v) <> '';
    ELSIF jsonb_typeof(v_value) = 'array'
          AND NOT EXISTS (SELECT FROM jsonb_array_elements(v_value) AS e WHERE jsonb_typeof(e) <> 'string') THEN
        SELECT array_agg(v) INTO v_values FROM jsonb_array_elements_text(v_value) AS v;
    ELSE
        PERFORM cycles._fail('INVALID_REQUEST', format('%s must be a list of strings', p_key));
    END IF;
    IF cardinality(v_values) > 25 THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('%s accepts at most 25 values', p_key));
    END IF;
    RETURN v_values;
END;
$$;

-- A timestamp filter value, or NULL when absent; INVALID_REQUEST otherwise.
CREATE FUNCTION cycles._audit_time_filter(p_filter jsonb, p_key text) RETURNS timestamptz
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_text text := cycles._text_option(p_filter, p_key, 64);
BEGIN
    IF v_text IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_text !~ '^\d{4}-\d\d-\d\d' THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('%s must be an ISO-8601 date-time, got %L', p_key, v_text));
    END IF;
    BEGIN
        RETURN v_text::timestamptz;
    EXCEPTION WHEN data_exception THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('%s must be an ISO-8601 date-time, got %L', p_key, v_text));
    END;
    RETURN NULL;
END;
$$;

-- cycles.list_audit_logs -------------------------------------------------------
-- GET /v1/admin/audit/logs: a page of audit entries, newest first:
-- {logs, has_more, next_cursor}. p_filter (all optional, AND-combined):
--   tenant_id, key_id, resource_id, trace_id, request_id   exact match
--   operation, resource_type, error_code                   IN-lists
--   error_code_exclude                                     NOT IN-list (rows
--                                                          without an error
--                                                          code are kept)
--   status | status_min, status_max                        exact or range
--                                                          (100..599)
--   from, to                                               timestamp bounds
--                                                          (inclusive)
--   search    case-insensitive substring of resource_id, log_id,
--             error_code or operation (<= 128 chars; empty is absent)
-- IN-lists are JSON arrays or comma-separated strings, at most 25 values.
-- The cursor is the log_id of the last row of the previous page.
-- Authorization: the admin only. Writes one audit row of its own
-- (listAuditLogs) after reading the page.
-- Errors: INSUFFICIENT_PERMISSIONS; INVALID_REQUEST (unknown filter, bad
-- value, status with status_min/max, status_min > status_max, limit outside
-- 1..100, unknown cursor).
CREATE FUNCTION cycles.list_audit_logs(
    p_filter jsonb DEFAULT '{}',
    p_limit  integer DEFAULT 50,
    p_cursor text DEFAULT NULL,
    p_ctx    jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx        jsonb := cycles._admin_principal(p_ctx, NULL);
    v_filter     jsonb;
    v_limit      integer := cycles._page_limit(p_limit);
    v_operations text[];
    v_types      text[];
    v_errors     text[];
    v_excluded   text[];
    v_status     integer;
    v_status_min integer;
    v_status_max integer;
    v_from       timestamptz;
    v_to         timestamptz;
    v_search     text;
    v_after      cycles.audit_logs;
    v_rows       cycles.audit_logs[];
BEGIN
    v_filter := cycles._require_known_options(p_filter, ARRAY[
        'tenant_id', 'key_id', 'operation', 'status', 'status_min', 'status_max', 'resource_type',
        'resource_id', 'error_code', 'error_code_exclude', 'from', 'to', 'search', 'trace_id',
        'request_id'], 'audit filter');
    v_operations := cycles._audit_list_filter(v_filter, 'operation');
    v_types := cycles._audit_list_filter(v_filter, 'resource_type');
    v_errors := cycles._audit_list_filter(v_filter, 'error_code');
    v_excluded := cycles._audit_list_filter(v_filter, 'error_code_exclude');
    v_status := cycles._json_int(v_filter, 'status', 100, 599, NULL);
    v_status_min := cycles._json_int(v_filter, 'status_min', 100, 599, NULL);
    v_status_max := cycles._json_int(v_filter, 'status_max', 100, 599, NULL);
    IF v_status IS NOT NULL AND (v_status_min IS NOT NULL OR v_status_max IS NOT NULL) THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'status cannot be combined with status_min or status_max');
    END IF;
    IF v_status_min > v_status_max THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'status_min must not exceed status_max');
    END IF;
    v_from := cycles._audit_time_filter(v_filter, 'from');
    v_to := cycles._audit_time_filter(v_filter, 'to');
    v_search := lower(nullif(cycles._text_option(v_filter, 'search', 128), ''));
    PERFORM cycles._text_option(v_filter, 'tenant_id', 128), cycles._text_option(v_filter, 'key_id', 128),
            cycles._text_option(v_filter, 'resource_id', 1024), cycles._text_option(v_filter, 'trace_id', 64),
            cycles._text_option(v_filter, 'request_id', 256);
    IF p_cursor IS NOT NULL THEN
        SELECT a.* INTO v_after FROM cycles.audit_logs AS a WHERE a.log_id = p_cursor;
        IF v_after.log_id IS NULL THEN
            PERFORM cycles._fail('INVALID_REQUEST', format('unknown cursor %L', p_cursor));
        END IF;
    END IF;

    SELECT coalesce(array_agg(page ORDER BY page.created_at DESC, page.seq DESC), '{}') INTO v_rows
    FROM (
        SELECT a.*
        FROM cycles.audit_logs AS a
        WHERE (NOT v_filter ? 'tenant_id' OR a.tenant_id = v_filter ->> 'tenant_id')
          AND (NOT v_filter ? 'key_id' OR a.key_id = v_filter ->> 'key_id')
          AND (NOT v_filter ? 'resource_id' OR a.resource_id = v_filter ->> 'resource_id')
          AND (NOT v_filter ? 'trace_id' OR a.trace_id = v_filter ->> 'trace_id')
          AND (NOT v_filter ? 'request_id' OR a.request_id = v_filter ->> 'request_id')
          AND (v_operations IS NULL OR a.operation = ANY (v_operations))
          AND (v_types IS NULL OR a.resource_type = ANY (v_types))
          AND (v_errors IS NULL OR a.error_code = ANY (v_errors))
          AND (v_excluded IS NULL OR a.error_code IS NULL OR a.error_code <> ALL (v_excluded))
          AND (v_status IS NULL OR a.status = v_status)
          AND (v_status_min IS NULL OR a.status >= v_status_min)
          AND (v_status_max IS NULL OR a.status <= v_status_max)
          AND (v_from IS NULL OR a.created_at >= v_from)
          AND (v_to IS NULL OR a.created_at <= v_to)
          AND (v_search IS NULL OR strpos(lower(coalesce(a.resource_id, '')), v_search) > 0
               OR strpos(a.log_id, v_search) > 0 OR strpos(lower(coalesce(a.error_code, '')), v_search) > 0
               OR strpos(lower(a.operation), v_search) > 0)
          AND (v_after.log_id IS NULL OR (a.created_at, a.seq) < (v_after.created_at, v_after.seq))
        ORDER BY a.created_at DESC, a.seq DESC
        LIMIT v_limit + 1
    ) AS page;

    PERFORM cycles._audit(v_ctx, 'listAuditLogs', NULL, NULL, 200);
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'logs', coalesce((SELECT jsonb_agg(cycles._audit_json(v_rows[i]) ORDER BY i)
                          FROM generate_series(1, least(cardinality(v_rows), v_limit)) AS i), '[]'::jsonb),
        'has_more', cardinality(v_rows) > v_limit,
        'next_cursor', CASE WHEN cardinality(v_rows) > v_limit THEN (v_rows[v_limit]).log_id END));
END;
$$;

-- cycles.record_audit_failure --------------------------------------------------
-- Records an admin request that failed (its own transaction rolled back).
-- p_ctx is the request's context as given to the failed call; a tenant
-- key's secret in it is resolved to its key and tenant without any check
-- (the failure may be the key itself) and is never stored. The tenant is:
-- '__unauth__' for a 401 (failed before authentication), else the key's
-- tenant, else p_tenant_id when it is a well-formed tenant id, else
-- '__admin__'. Never raises for bad input: it is the caller's last word on
-- a request that already failed. Returns the log_id.
CREATE FUNCTION cycles.record_audit_failure(
    p_ctx           jsonb,
    p_operation     text,
    p_status        integer,
    p_error_code    text,
    p_message       text DEFAULT NULL,
    p_resource_type text DEFAULT NULL,
    p_resource_id   text DEFAULT NULL,
    p_tenant_id     text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := coalesce(p_ctx, '{}'::jsonb);
    v_key    cycles.api_keys;
    v_clean  jsonb;
    v_tenant text;
BEGIN
    IF v_ctx ? 'api_key' AND char_length(v_ctx ->> 'api_key') BETWEEN 1 AND 512 THEN
        SELECT k.* INTO v_key FROM cycles.api_keys AS k WHERE k.key_hash = cycles._hash_secret(v_ctx ->> 'api_key');
    END IF;
    v_clean := jsonb_strip_nulls(jsonb_build_object(
        'request_id', v_ctx ->> 'request_id', 'trace_id', v_ctx ->> 'trace_id',
        'source_ip', v_ctx ->> 'source_ip', 'user_agent', v_ctx ->> 'user_agent',
        'actor_type', CASE WHEN v_ctx ? 'api_key' THEN 'api_key'
                           WHEN v_ctx ->> 'actor_type' = 'admin_on_behalf_of' THEN 'admin_on_behalf_of'
                           ELSE 'admin' END,
        'key_id', v_key.key_id));
    v_tenant := CASE
        WHEN p_status = 401 THEN '__unauth__'
        WHEN v_key.key_id IS NOT NULL THEN v_key.tenant_id
        WHEN v_ctx ? 'api_key' THEN '__unauth__'
        WHEN p_tenant_id ~ '^[a-z0-9-]{3,64}$' THEN p_tenant_id
        ELSE '__admin__' END;
    RETURN cycles._audit(
        v_clean,
        coalesce(nullif(left(p_operation, 256), ''), 'unknown'),
        left(p_resource_type, 64),
        p_resource_id,
        CASE WHEN p_status BETWEEN 400 AND 599 THEN p_status ELSE 500 END,
        v_tenant,
        coalesce(nullif(left(p_error_code, 64), ''), 'INTERNAL_ERROR'),
        jsonb_build_object('error_message', left(replace(replace(p_message, chr(13), ' '), chr(10), ' '), 1024)));
END;
$$;
