-- Reading the event outbox: the admin's event stream (every tenant, every
-- category) and a tenant key's view of its own budget, reservation and
-- tenant events.

-- The spec's EventType enum (normative), in its order.
CREATE FUNCTION cycles._event_types() RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN ARRAY[
        'budget.created', 'budget.updated', 'budget.funded', 'budget.debited', 'budget.reset',
        'budget.reset_spent', 'budget.debt_repaid', 'budget.frozen', 'budget.unfrozen', 'budget.closed',
        'budget.closed_via_tenant_cascade', 'budget.threshold_crossed', 'budget.exhausted',
        'budget.over_limit_entered', 'budget.over_limit_exited', 'budget.debt_incurred',
        'budget.burn_rate_anomaly',
        'reservation.denied', 'reservation.denial_rate_spike', 'reservation.expired',
        'reservation.expiry_rate_spike', 'reservation.commit_overage',
        'reservation.released_via_tenant_cascade',
        'tenant.created', 'tenant.updated', 'tenant.suspended', 'tenant.reactivated', 'tenant.closed',
        'tenant.settings_changed',
        'webhook.created', 'webhook.updated', 'webhook.paused', 'webhook.resumed', 'webhook.disabled',
        'webhook.deleted', 'webhook.disabled_via_tenant_cascade',
        'api_key.created', 'api_key.revoked', 'api_key.revoked_via_tenant_cascade', 'api_key.expired',
        'api_key.permissions_changed', 'api_key.auth_failed', 'api_key.auth_failure_rate_spike',
        'policy.created', 'policy.updated', 'policy.deleted',
        'system.store_connection_lost', 'system.store_connection_restored', 'system.high_latency',
        'system.webhook_delivery_failed', 'system.webhook_test'];
END;
$$;

-- The spec's Event object, nulls omitted: timestamp is the creation time in
-- ISO-8601 UTC with milliseconds.
CREATE FUNCTION cycles._event_json(p_event cycles.events) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'event_id', p_event.event_id,
        'event_type', p_event.event_type,
        'category', p_event.category,
        'timestamp', cycles._iso8601(p_event.created_at),
        'tenant_id', p_event.tenant_id,
        'scope', p_event.scope,
        'actor', p_event.actor,
        'source', p_event.source,
        'data', p_event.data,
        'correlation_id', p_event.correlation_id,
        'request_id', p_event.request_id,
        'trace_id', p_event.trace_id,
        'metadata', p_event.metadata));
END;
$$;

-- A page of events matching the filters, as {events, has_more, next_cursor}.
-- The shared engine of cycles.list_events and cycles.list_tenant_events;
-- p_categories NULL means every category; p_scope_filter (a key's non-empty
-- scope_filter) keeps only events whose scope it allows. Sorting: p_sort_by timestamp
-- (default), event_type, category, scope or tenant_id, ties broken by time
-- then by insertion order; p_sort_dir desc (default) or asc. The cursor is
-- the event_id of the last event of the previous page.
-- Errors: INVALID_REQUEST (unknown event type, category, sort, bad limit,
-- search longer than 128, from after to, unknown cursor).
CREATE FUNCTION cycles._list_events(
    p_tenant_id      text,
    p_categories     text[],
    p_event_type     text,
    p_category       text,
    p_scope          text,
    p_correlation_id text,
    p_trace_id       text,
    p_request_id     text,
    p_from           timestamptz,
    p_to             timestamptz,
    p_search         text,
    p_sort_by        text,
    p_sort_dir       text,
    p_cursor         text,
    p_limit          integer,
    p_scope_filter   text[] DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_limit   integer := cycles._page_limit(p_limit);
    v_sort_by text := coalesce(nullif(p_sort_by, ''), 'timestamp');
    v_desc    boolean;
    v_key     text;
    v_search  text := lower(nullif(p_search, ''));
    v_after   cycles.events;
    v_rows    cycles.events[];
    v_filter  jsonb := CASE WHEN cardinality(p_scope_filter) > 0 THEN to_jsonb(p_scope_filter) END;
BEGIN
    IF p_event_type IS NOT NULL AND p_event_type <> ALL (cycles._event_types())
       AND p_event_type NOT LIKE 'custom.%' THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('unknown event_type %L', p_event_type));
    END IF;
    IF p_category IS NOT NULL
       AND p_category NOT IN ('budget', 'tenant', 'api_key', 'policy', 'reservation', 'system', 'webhook') THEN
        PERFORM cycles._fail('INVALID_REQUEST', format(
            'unknown category %L: expected budget, tenant, api_key, policy, reservation, system or webhook',
            p_category));
    END IF;
    IF v_sort_by NOT IN ('timestamp', 'event_type', 'category', 'scope', 'tenant_id') THEN
        PERFORM cycles._fail('INVALID_REQUEST', format(
            'sort_by must be timestamp, event_type, category, scope or tenant_id, got %L', p_sort_by));
    END IF;
    IF coalesce(nullif(p_sort_dir, ''), 'desc') NOT IN ('asc', 'desc') THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('sort_dir must be asc or desc, got %L', p_sort_dir));
    END IF;
    v_desc := coalesce(nullif(p_sort_dir, ''), 'desc') = 'desc';
    IF char_length(v_search) > 128 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'search must be at most 128 characters');
    END IF;
    IF p_from > p_to THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'from must not be later than to');
    END IF;
    IF p_cursor IS NOT NULL THEN
        SELECT e.* INTO v_after FROM cycles.events AS e
        WHERE e.event_id = p_cursor
          AND (p_tenant_id IS NULL OR e.tenant_id = p_tenant_id)
          AND (p_categories IS NULL OR e.category = ANY (p_categories))
          AND (v_filter IS NULL OR coalesce(cycles._scope_filter_allows(v_filter, e.scope), false));
        IF v_after.event_id IS NULL THEN
            PERFORM cycles._fail('INVALID_REQUEST', format('unknown cursor %L', p_cursor));
        END IF;
        v_key := CASE v_sort_by WHEN 'event_type' THEN v_after.event_type WHEN 'category' THEN v_after.category
                                WHEN 'scope' THEN coalesce(v_after.scope, '') WHEN 'tenant_id' THEN v_after.tenant_id
                                ELSE '' END;
    END IF;

    -- The default order (time) reads an index in order and stops after a
    -- page; numbering every matching event first, as the general statement
    -- below must, costs time in proportion to the whole stream. Planned per
    -- call with the filters' values, so the plan fits the filters given.
    IF v_sort_by = 'timestamp' THEN
        EXECUTE format($sql$
            SELECT coalesce(array_agg(page.e ORDER BY page.created_at %2$s, page.seq %2$s), '{}')
            FROM (
                SELECT e, e.created_at, e.seq
                FROM cycles.events AS e
                WHERE ($1 IS NULL OR e.tenant_id = $1)
                  AND ($2 IS NULL OR e.category = ANY ($2))
                  AND ($3 IS NULL OR e.event_type = $3)
                  AND ($4 IS NULL OR e.category = $4)
                  AND ($5 IS NULL OR left(e.scope, char_length($5)) = lower($5))
                  AND ($6 IS NULL OR e.correlation_id = $6)
                  AND ($7 IS NULL OR e.trace_id = $7)
                  AND ($8 IS NULL OR e.request_id = $8)
                  AND ($9 IS NULL OR e.created_at >= $9)
                  AND ($10 IS NULL OR e.created_at <= $10)
                  AND ($11 IS NULL OR strpos(lower(e.correlation_id), $11) > 0
                       OR strpos(lower(e.scope), $11) > 0)
                  AND ($12 IS NULL OR coalesce(cycles._scope_filter_allows($12, e.scope), false))
                  AND ($13 IS NULL OR (e.created_at, e.seq) %1$s ($14, $15))
                ORDER BY e.created_at %2$s, e.seq %2$s
                LIMIT $16
            ) AS page$sql$,
            CASE WHEN v_desc THEN '<' ELSE '>' END, CASE WHEN v_desc THEN 'DESC' ELSE 'ASC' END)
        INTO v_rows
        USING p_tenant_id, p_categories, p_event_type, p_category, p_scope, p_correlation_id, p_trace_id,
              p_request_id, p_from, p_to, v_search, v_filter, v_after.event_id, v_after.created_at, v_after.seq,
              v_limit + 1;
    ELSE
    -- Any other sort: one statement; the order is (key, created_at, seq) in
    -- the requested direction and the cursor row's key continues it.
    SELECT coalesce(array_agg(page.e ORDER BY page.o), '{}') INTO v_rows
    FROM (
        SELECT e, row_number() OVER (
                   ORDER BY CASE WHEN v_desc THEN s.k END DESC, CASE WHEN v_desc THEN e.created_at END DESC,
                            CASE WHEN v_desc THEN e.seq END DESC,
                            CASE WHEN NOT v_desc THEN s.k END, CASE WHEN NOT v_desc THEN e.created_at END,
                            CASE WHEN NOT v_desc THEN e.seq END) AS o
        FROM cycles.events AS e
        CROSS JOIN LATERAL (
            SELECT (CASE v_sort_by WHEN 'event_type' THEN e.event_type WHEN 'category' THEN e.category
                                   WHEN 'scope' THEN coalesce(e.scope, '') WHEN 'tenant_id' THEN e.tenant_id
                                   ELSE '' END) COLLATE "C" AS k
        ) AS s
        WHERE (p_tenant_id IS NULL OR e.tenant_id = p_tenant_id)
          AND (p_categories IS NULL OR e.category = ANY (p_categories))
          AND (p_event_type IS NULL OR e.event_type = p_event_type)
          AND (p_category IS NULL OR e.category = p_category)
          AND (p_scope IS NULL OR left(e.scope, char_length(p_scope)) = lower(p_scope))
          AND (p_correlation_id IS NULL OR e.correlation_id = p_correlation_id)
          AND (p_trace_id IS NULL OR e.trace_id = p_trace_id)
          AND (p_request_id IS NULL OR e.request_id = p_request_id)
          AND (p_from IS NULL OR e.created_at >= p_from)
          AND (p_to IS NULL OR e.created_at <= p_to)
          AND (v_search IS NULL OR strpos(lower(e.correlation_id), v_search) > 0
               OR strpos(lower(e.scope), v_search) > 0)
          AND (v_filter IS NULL OR coalesce(cycles._scope_filter_allows(v_filter, e.scope), false))
          AND (v_after.event_id IS NULL
               OR (v_desc AND (s.k, e.created_at, e.seq) < (v_key COLLATE "C", v_after.created_at, v_after.seq))
               OR (NOT v_desc AND (s.k, e.created_at, e.seq) > (v_key COLLATE "C", v_after.created_at, v_after.seq)))
        ORDER BY o
        LIMIT v_limit + 1
    ) AS page;
    END IF;

    RETURN jsonb_strip_nulls(jsonb_build_object(
        'events', coalesce((SELECT jsonb_agg(cycles._event_json(v_rows[i]) ORDER BY i)
                             FROM generate_series(1, least(cardinality(v_rows), v_limit)) AS i), '[]'::jsonb),
        'has_more', cardinality(v_rows) > v_limit,
        'next_cursor', CASE WHEN cardinality(v_rows) > v_limit THEN (v_rows[v_limit]).event_id END));
END;
$$;

-- cycles.list_events ------------------------------------------------------------
-- GET /v1/admin/events: the whole event stream, newest first, for the admin.
-- Filters (all optional, ANDed): tenant, event type, category, scope prefix
-- (a plain string prefix of the lower-cased scope), correlation, trace and
-- request ids, from/to (inclusive, on the event time), search (substring of
-- correlation_id or scope, case-insensitive). From psql:
--   SELECT cycles.list_events(p_tenant_id => 'acme', p_category => 'budget');
-- Authorization: the admin key only (a tenant key gets
-- INSUFFICIENT_PERMISSIONS). Writes one audit row (listEvents).
-- Errors: UNAUTHORIZED, INSUFFICIENT_PERMISSIONS, INVALID_REQUEST.
CREATE FUNCTION cycles.list_events(
    p_tenant_id      text DEFAULT NULL,
    p_event_type     text DEFAULT NULL,
    p_category       text DEFAULT NULL,
    p_scope          text DEFAULT NULL,
    p_correlation_id text DEFAULT NULL,
    p_trace_id       text DEFAULT NULL,
    p_request_id     text DEFAULT NULL,
    p_from           timestamptz DEFAULT NULL,
    p_to             timestamptz DEFAULT NULL,
    p_search         text DEFAULT NULL,
    p_sort_by        text DEFAULT NULL,
    p_sort_dir       text DEFAULT NULL,
    p_cursor         text DEFAULT NULL,
    p_limit          integer DEFAULT 50,
    p_ctx            jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, NULL);
    v_result jsonb;
BEGIN
    v_result := cycles._list_events(p_tenant_id, NULL, p_event_type, p_category, p_scope, p_correlation_id,
                                    p_trace_id, p_request_id, p_from, p_to, p_search, p_sort_by, p_sort_dir,
                                    p_cursor, p_limit);
    PERFORM cycles._audit(v_ctx, 'listEvents', NULL, NULL, 200, p_tenant_id);
    RETURN v_result;
END;
$$;

-- cycles.get_event -----------------------------------------------------------------
-- GET /v1/admin/events/{event_id}: one event, for the admin.
-- Errors: UNAUTHORIZED, INSUFFICIENT_PERMISSIONS, NOT_FOUND.
CREATE FUNCTION cycles.get_event(p_event_id text, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx   jsonb := cycles._admin_principal(p_ctx, NULL);
    v_event cycles.events;
BEGIN
    SELECT e.* INTO v_event FROM cycles.events AS e WHERE e.event_id = p_event_id;
    IF v_event.event_id IS NULL THEN
        PERFORM cycles._fail('NOT_FOUND', format('event %L not found', p_event_id),
            jsonb_build_object('event_id', p_event_id));
    END IF;
    PERFORM cycles._audit(v_ctx, 'getEvent', NULL, p_event_id, 200, v_event.tenant_id);
    RETURN cycles._event_json(v_event);
END;
$$;

-- cycles.list_tenant_events ----------------------------------------------------------
-- GET /v1/events: the calling key's tenant's events of the tenant-accessible
-- categories only (budget, reservation, tenant), newest first, with the
-- filters of cycles.list_events but no tenant, trace or request filter. A
-- filter on an admin-only category or type simply matches nothing. A key
-- with a scope_filter sees only events whose scope the filter allows.
-- Needs events:read (admin:read satisfies it). Reads are allowed whatever
-- the tenant's status. Writes nothing.
-- Errors, in precedence order: UNAUTHORIZED; INSUFFICIENT_PERMISSIONS;
-- INVALID_REQUEST.
CREATE FUNCTION cycles.list_tenant_events(
    p_api_key        text,
    p_event_type     text DEFAULT NULL,
    p_category       text DEFAULT NULL,
    p_scope          text DEFAULT NULL,
    p_correlation_id text DEFAULT NULL,
    p_from           timestamptz DEFAULT NULL,
    p_to             timestamptz DEFAULT NULL,
    p_cursor         text DEFAULT NULL,
    p_limit          integer DEFAULT 50,
    p_ctx            jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_key cycles.api_keys;
BEGIN
    v_key := (cycles._authenticate(p_api_key)).o_key;
    IF NOT cycles._has_permission(v_key.permissions, 'events:read') THEN
        PERFORM cycles._fail('INSUFFICIENT_PERMISSIONS', 'API key lacks the events:read permission',
            jsonb_build_object('required_permission', 'events:read'));
    END IF;
    RETURN cycles._list_events(v_key.tenant_id, ARRAY['budget', 'reservation', 'tenant'], p_event_type,
                               p_category, p_scope, p_correlation_id, NULL, NULL, p_from, p_to, NULL, NULL,
                               NULL, p_cursor, p_limit, v_key.scope_filter);
END;
$$;
