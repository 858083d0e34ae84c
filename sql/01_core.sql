-- Private helpers shared by every cycles.* function: errors, clock, ids,
-- input validation, scope paths, ledger rows and outbox events.

-- Errors -------------------------------------------------------------------
-- Every error a client can cause has its own SQLSTATE (class CY), raised with
-- a JSON DETAIL {"error": CODE, "details": {...}}. app/errors.py maps the
-- SQLSTATE to the HTTP status; a test asserts that map and this one agree.

CREATE FUNCTION cycles._error_sqlstate(p_error text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN CASE p_error
        WHEN 'INVALID_REQUEST'          THEN 'CY400'
        WHEN 'UNAUTHORIZED'             THEN 'CY401'
        WHEN 'FORBIDDEN'                THEN 'CY403'
        WHEN 'NOT_FOUND'                THEN 'CY404'
        WHEN 'RESERVATION_EXPIRED'      THEN 'CY410'
        WHEN 'UNIT_MISMATCH'            THEN 'CY4UM'
        WHEN 'BUDGET_EXCEEDED'          THEN 'CY901'
        WHEN 'BUDGET_FROZEN'            THEN 'CY902'
        WHEN 'BUDGET_CLOSED'            THEN 'CY903'
        WHEN 'OVERDRAFT_LIMIT_EXCEEDED' THEN 'CY904'
        WHEN 'DEBT_OUTSTANDING'         THEN 'CY905'
        WHEN 'RESERVATION_FINALIZED'    THEN 'CY906'
        WHEN 'IDEMPOTENCY_MISMATCH'     THEN 'CY907'
        WHEN 'MAX_EXTENSIONS_EXCEEDED'  THEN 'CY908'
        WHEN 'TENANT_CLOSED'            THEN 'CY909'
        WHEN 'TENANT_SUSPENDED'         THEN 'CY910'
        WHEN 'DUPLICATE_RESOURCE'       THEN 'CY911'
        WHEN 'INVALID_TRANSITION'       THEN 'CY912'
        WHEN 'KEY_REVOKED'              THEN 'CY913'
        WHEN 'TENANT_NOT_FOUND'         THEN 'CY4TN'
        WHEN 'BUDGET_NOT_FOUND'         THEN 'CY4BN'
        WHEN 'INSUFFICIENT_PERMISSIONS' THEN 'CY4IP'
        WHEN 'LIMIT_EXCEEDED'           THEN 'CY429'
        WHEN 'WEBHOOK_NOT_FOUND'        THEN 'CY4WN'
        WHEN 'WEBHOOK_URL_INVALID'      THEN 'CY4WU'
        WHEN 'REPLAY_IN_PROGRESS'       THEN 'CY9RP'
        WHEN 'COUNT_MISMATCH'           THEN 'CY9CM'
    END;
END;
$$;

CREATE FUNCTION cycles._fail(p_error text, p_message text, p_details jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_sqlstate text := cycles._error_sqlstate(p_error);
BEGIN
    IF v_sqlstate IS NULL THEN
        RAISE EXCEPTION 'unknown error code %', p_error;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = v_sqlstate,
        MESSAGE = p_message,
        DETAIL = jsonb_strip_nulls(jsonb_build_object('error', p_error, 'details', p_details))::text;
END;
$$;

-- Clock and ids ------------------------------------------------------------
-- clock_timestamp(), not now(): now() is frozen at transaction start and a
-- deadline must be judged at the moment the row is locked.

CREATE FUNCTION cycles._now_ms() RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL SAFE
AS $$
BEGIN
    RETURN floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint;
END;
$$;

CREATE FUNCTION cycles._ms_to_timestamptz(p_ms bigint) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN to_timestamp(p_ms / 1000.0);
END;
$$;

CREATE FUNCTION cycles._new_id(p_prefix text, p_hex_length integer DEFAULT 32) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL SAFE
AS $$
BEGIN
    RETURN p_prefix || left(replace(gen_random_uuid()::text, '-', ''), p_hex_length);
END;
$$;

-- Input validation ---------------------------------------------------------

CREATE FUNCTION cycles._require_unit(p_unit text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_unit IS NULL OR p_unit NOT IN ('USD_MICROCENTS', 'TOKENS', 'CREDITS', 'RISK_POINTS') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown unit %L: expected USD_MICROCENTS, TOKENS, CREDITS or RISK_POINTS', p_unit));
    END IF;
    RETURN p_unit;
END;
$$;

CREATE FUNCTION cycles._require_overage_policy(p_policy text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_policy IS NOT NULL AND p_policy NOT IN ('REJECT', 'ALLOW_IF_AVAILABLE', 'ALLOW_WITH_OVERDRAFT') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown overage policy %L: expected REJECT, ALLOW_IF_AVAILABLE or ALLOW_WITH_OVERDRAFT',
                   p_policy));
    END IF;
    RETURN p_policy;
END;
$$;

CREATE FUNCTION cycles._require_amount(p_amount bigint, p_field text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_amount IS NULL OR p_amount < 0 THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('%s must be a non-negative integer, got %s', p_field, coalesce(p_amount::text, 'null')));
    END IF;
    RETURN p_amount;
END;
$$;

-- An integer member of a JSON object (a request body, options, a patch):
-- p_default when absent or null, else an integer within [p_min, p_max].
-- p_label names it in the error (default: p_field).
-- Errors: INVALID_REQUEST.
CREATE FUNCTION cycles._json_int(
    p_object  jsonb,
    p_field   text,
    p_min     bigint,
    p_max     bigint,
    p_default bigint DEFAULT NULL,
    p_label   text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_value jsonb := p_object -> p_field;
BEGIN
    IF v_value IS NULL OR v_value = 'null'::jsonb THEN
        RETURN p_default;
    END IF;
    IF jsonb_typeof(v_value) <> 'number' OR v_value::text::numeric <> trunc(v_value::text::numeric)
       OR v_value::text::numeric NOT BETWEEN p_min AND p_max THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('%s must be an integer between %s and %s, got %s',
            coalesce(p_label, p_field), p_min, p_max, left(v_value::text, 64)));
    END IF;
    RETURN v_value::text::bigint;
END;
$$;

-- Scope paths --------------------------------------------------------------
-- A scope is level:value segments joined by '/', levels in the fixed order
-- tenant, workspace, app, workflow, agent, toolset, gaps allowed, starting with
-- the tenant. Values are lower-cased and must match ^[a-z0-9_.-]{1,128}$.

CREATE FUNCTION cycles._scope_levels() RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN ARRAY['tenant', 'workspace', 'app', 'workflow', 'agent', 'toolset'];
END;
$$;

CREATE FUNCTION cycles._canonical_scope(p_scope text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_segment   text;
    v_level     text;
    v_value     text;
    v_position  integer;
    v_last      integer := 0;
    v_parts     text[] := '{}';
BEGIN
    IF p_scope IS NULL OR p_scope = '' OR char_length(p_scope) > 1024 THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('malformed scope %L', p_scope));
    END IF;
    FOREACH v_segment IN ARRAY string_to_array(p_scope, '/') LOOP
        v_level := lower(split_part(v_segment, ':', 1));
        v_value := lower(substr(v_segment, char_length(split_part(v_segment, ':', 1)) + 2));
        v_position := array_position(cycles._scope_levels(), v_level);
        IF v_position IS NULL OR position(':' IN v_segment) = 0 THEN
            PERFORM cycles._fail('INVALID_REQUEST', format(
                'malformed scope %L: segment %L is not level:value with a level among '
                'tenant, workspace, app, workflow, agent, toolset', p_scope, v_segment));
        END IF;
        IF v_position <= v_last THEN
            PERFORM cycles._fail('INVALID_REQUEST', format(
                'malformed scope %L: levels must appear once each, in the order '
                'tenant, workspace, app, workflow, agent, toolset', p_scope));
        END IF;
        IF v_last = 0 AND v_position <> 1 THEN
            PERFORM cycles._fail('INVALID_REQUEST', format(
                'malformed scope %L: a scope starts with tenant:<id>', p_scope));
        END IF;
        IF v_value !~ '^[a-z0-9_.-]{1,128}$' THEN
            PERFORM cycles._fail('INVALID_REQUEST', format(
                'malformed scope %L: value %L must match ^[a-z0-9_.-]{1,128}$', p_scope, v_value));
        END IF;
        v_last := v_position;
        v_parts := v_parts || (v_level || ':' || v_value);
    END LOOP;
    RETURN array_to_string(v_parts, '/');
END;
$$;

CREATE FUNCTION cycles._scope_tenant(p_canonical_scope text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN substr(split_part(p_canonical_scope, '/', 1), 8);
END;
$$;

-- Ledger rows --------------------------------------------------------------

-- The hash that chains a ledger row to the previous row of its budget:
-- SHA-256 of the UTF-8 text of the record
--   (entry_id, tenant_id, budget_id, scope, unit, operation,
--    allocated_delta, spent_delta, reserved_delta, debt_delta,
--    reservation_id, event_id, action_kind, action_name, subject,
--    idempotency_key, reason, request_id, trace_id, actor_type, actor_key_id,
--    created_at as integer microseconds since 1970-01-01 UTC,
--    subject_workspace, subject_app, subject_workflow, subject_agent,
--    subject_toolset, operation_lead, allocated_after, spent_after,
--    reserved_after, debt_after, prev_hash as lower-case hex)
-- in PostgreSQL's record text form: fields joined by commas inside
-- parentheses, NULL as nothing, a value quoted with double quotes (inner
-- quotes and backslashes doubled) when it is empty or holds a quote, a
-- backslash, a parenthesis, a comma or white space; booleans are t and f,
-- subject is its jsonb text. Every field is spelled independently of session
-- settings (no time zone, date style or bytea format enters), so anyone can
-- recompute it from an export.
CREATE FUNCTION cycles._ledger_entry_hash(p_row cycles.ledger_entries) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN sha256(convert_to(ROW(
        p_row.entry_id, p_row.tenant_id, p_row.budget_id, p_row.scope, p_row.unit, p_row.operation,
        p_row.allocated_delta, p_row.spent_delta, p_row.reserved_delta, p_row.debt_delta,
        p_row.reservation_id, p_row.event_id, p_row.action_kind, p_row.action_name, p_row.subject,
        p_row.idempotency_key, p_row.reason, p_row.request_id, p_row.trace_id, p_row.actor_type,
        p_row.actor_key_id, (extract(epoch FROM p_row.created_at) * 1000000)::bigint,
        p_row.subject_workspace, p_row.subject_app, p_row.subject_workflow, p_row.subject_agent,
        p_row.subject_toolset, p_row.operation_lead, p_row.allocated_after, p_row.spent_after,
        p_row.reserved_after, p_row.debt_after, encode(p_row.prev_hash, 'hex'))::text, 'UTF8'));
END;
$$;

-- A ledger row as its writer receives it: what the caller knows (budget,
-- operation, deltas, references, actor). cycles._append_ledger_rows fills
-- the rest. Same parameters as cycles._append_ledger.
CREATE FUNCTION cycles._ledger_row(
    p_budget_id       bigint,
    p_tenant_id       text,
    p_scope           text,
    p_unit            text,
    p_operation       text,
    p_actor           jsonb,
    p_allocated_delta bigint DEFAULT 0,
    p_spent_delta     bigint DEFAULT 0,
    p_reserved_delta  bigint DEFAULT 0,
    p_debt_delta      bigint DEFAULT 0,
    p_reservation_id  text DEFAULT NULL,
    p_event_id        text DEFAULT NULL,
    p_action          jsonb DEFAULT NULL,
    p_subject         jsonb DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL,
    p_reason          text DEFAULT NULL,
    p_request_id      text DEFAULT NULL,
    p_trace_id        text DEFAULT NULL
) RETURNS cycles.ledger_entries
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_row cycles.ledger_entries;
BEGIN
    v_row.tenant_id := p_tenant_id;
    v_row.budget_id := p_budget_id;
    v_row.scope := p_scope;
    v_row.unit := p_unit;
    v_row.operation := p_operation;
    v_row.allocated_delta := p_allocated_delta;
    v_row.spent_delta := p_spent_delta;
    v_row.reserved_delta := p_reserved_delta;
    v_row.debt_delta := p_debt_delta;
    v_row.reservation_id := p_reservation_id;
    v_row.event_id := p_event_id;
    v_row.action_kind := p_action ->> 'kind';
    v_row.action_name := p_action ->> 'name';
    v_row.subject := p_subject;
    v_row.idempotency_key := p_idempotency_key;
    v_row.reason := p_reason;
    v_row.request_id := p_request_id;
    v_row.trace_id := p_trace_id;
    v_row.actor_type := coalesce(p_actor ->> 'type', 'admin');
    v_row.actor_key_id := p_actor ->> 'key_id';
    RETURN v_row;
END;
$$;

-- cycles._append_ledger_rows: the one place that appends to the ledger.
-- p_rows (from cycles._ledger_row) are appended in their order: the rows of
-- one operation (one per budget), or of several (the expiry sweeper's batch,
-- where a budget may come back: its head is then the row before it in the
-- batch). Callers have already applied the same deltas to the budget rows,
-- which they hold locked FOR UPDATE (or inserted, for CREATE) in this
-- transaction: every writer of a budget's rows is serialised by that lock,
-- so the previous row read here is the chain's last and stays so until
-- commit. No lock is taken here.
-- Fills, beyond what the caller gave: entry_id; created_at (strictly after
-- the previous row of the budget); the subject levels (from the subject, or
-- from the scope for an admin row); operation_lead (false when the row
-- continues the operation that the previous row written in this transaction
-- belongs to: same operation and reservation or event id; remembered in the
-- transaction-local setting cycles.ledger_operation); the running balances
-- (previous row's plus the deltas); prev_hash and entry_hash. Then inserts
-- all rows with one statement (PostgreSQL prepares a table's CHECK
-- constraints once per statement, not per row).
-- The chain heads of all the budgets of p_rows are read with one statement,
-- an index scan on (tenant_id, budget_id, created_at) backwards per budget,
-- in the current month's partition alone (the others are pruned when the
-- statement starts); a budget without a row there (its first row of the
-- month) is then read over every partition. A row of a later month cannot exist
-- unless the clock stepped back across the month's end, or rows written 1
-- microsecond apart ran ahead of it: so the one-partition lookup is used
-- only until an hour before the month ends. The generic plan is forced: a
-- custom plan would prune at planning time, look cheaper, and be planned on
-- every call.
-- Every other plan (sequential or bitmap scan, then a sort) is switched
-- off: statistics taken while the ledger was small (a fresh
-- install, a benchmark) would otherwise let the plan cached in a long-lived
-- session read all the budget's rows, or the whole ledger, on every append.
-- Errors: none of its own (a bigint overflow of a running balance would
-- mean the counters themselves overflowed).
-- Invariants: one row per element; for every budget, the last row's *_after
-- equal the sums of its deltas.
CREATE FUNCTION cycles._append_ledger_rows(p_rows cycles.ledger_entries[]) RETURNS void
LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_month timestamptz := date_trunc('month', clock_timestamp(), 'UTC');
    v_next  timestamptz := v_month + interval '1 month';
    v_safe  boolean := clock_timestamp() < v_next - interval '1 hour';
    v_row   cycles.ledger_entries;
    v_prev  cycles.ledger_entries;
    v_out   cycles.ledger_entries[];
    v_seen  bigint[] := '{}';
    v_group text;
    v_last  text := current_setting('cycles.ledger_operation', true);
    v_now   timestamptz;
    v_head_ids bigint[];
    v_heads    cycles.ledger_entries[];
    v_at       integer;
BEGIN
    -- This month's chain head of every budget in p_rows, with one statement
    -- (a batch of reserves writes a row for each of many budgets).
    SELECT array_agg((h.head).budget_id), array_agg(h.head) INTO v_head_ids, v_heads
    FROM (SELECT DISTINCT r.tenant_id, r.budget_id FROM unnest(p_rows) AS r) AS k
    CROSS JOIN LATERAL (
        SELECT l AS head
        FROM cycles.ledger_entries AS l
        WHERE l.tenant_id = k.tenant_id AND l.budget_id = k.budget_id
          AND l.created_at >= v_month AND l.created_at < v_next AND v_safe
        ORDER BY l.created_at DESC
        LIMIT 1) AS h;
    FOREACH v_row IN ARRAY p_rows LOOP
        IF v_row.budget_id = ANY (v_seen) THEN
            FOR i IN REVERSE cardinality(v_out) .. 1 LOOP
                IF v_out[i].budget_id = v_row.budget_id THEN
                    v_prev := v_out[i];
                    EXIT;
                END IF;
            END LOOP;
        ELSE
            v_at := array_position(v_head_ids, v_row.budget_id);
            IF v_at IS NOT NULL THEN
                v_prev := v_heads[v_at];
            ELSE
                SELECT l.* INTO v_prev
                FROM cycles.ledger_entries AS l
                WHERE l.tenant_id = v_row.tenant_id AND l.budget_id = v_row.budget_id
                ORDER BY l.created_at DESC
                LIMIT 1;
            END IF;
            v_seen := v_seen || v_row.budget_id;
        END IF;
        v_group := v_row.operation || ':' || coalesce(v_row.reservation_id, v_row.event_id);
        v_row.operation_lead := v_group IS NULL OR v_group IS DISTINCT FROM v_last;
        v_last := coalesce(v_group, v_last);
        v_now := clock_timestamp();
        v_row.entry_id := nextval('cycles.ledger_entries_entry_id_seq');
        v_row.created_at := CASE WHEN v_prev.created_at >= v_now THEN v_prev.created_at + interval '1 microsecond'
                                 ELSE v_now END;
        IF v_row.subject IS NULL THEN
            v_row.subject_workspace := substring(v_row.scope FROM '/workspace:([^/]+)');
            v_row.subject_app := substring(v_row.scope FROM '/app:([^/]+)');
            v_row.subject_workflow := substring(v_row.scope FROM '/workflow:([^/]+)');
            v_row.subject_agent := substring(v_row.scope FROM '/agent:([^/]+)');
            v_row.subject_toolset := substring(v_row.scope FROM '/toolset:([^/]+)');
        ELSE
            v_row.subject_workspace := lower(v_row.subject ->> 'workspace');
            v_row.subject_app := lower(v_row.subject ->> 'app');
            v_row.subject_workflow := lower(v_row.subject ->> 'workflow');
            v_row.subject_agent := lower(v_row.subject ->> 'agent');
            v_row.subject_toolset := lower(v_row.subject ->> 'toolset');
        END IF;
        v_row.allocated_after := coalesce(v_prev.allocated_after, 0) + v_row.allocated_delta;
        v_row.spent_after := coalesce(v_prev.spent_after, 0) + v_row.spent_delta;
        v_row.reserved_after := coalesce(v_prev.reserved_after, 0) + v_row.reserved_delta;
        v_row.debt_after := coalesce(v_prev.debt_after, 0) + v_row.debt_delta;
        v_row.prev_hash := v_prev.entry_hash;
        v_row.entry_hash := cycles._ledger_entry_hash(v_row);
        v_out := v_out || v_row;
    END LOOP;
    IF v_last IS DISTINCT FROM current_setting('cycles.ledger_operation', true) THEN
        PERFORM set_config('cycles.ledger_operation', v_last, true);
    END IF;
    INSERT INTO cycles.ledger_entries OVERRIDING SYSTEM VALUE SELECT r.* FROM unnest(v_out) AS r;
END;
$$;

-- One ledger row (see cycles._ledger_row and cycles._append_ledger_rows),
-- for callers that change one budget at a time.
CREATE FUNCTION cycles._append_ledger(
    p_budget_id       bigint,
    p_tenant_id       text,
    p_scope           text,
    p_unit            text,
    p_operation       text,
    p_actor           jsonb,
    p_allocated_delta bigint DEFAULT 0,
    p_spent_delta     bigint DEFAULT 0,
    p_reserved_delta  bigint DEFAULT 0,
    p_debt_delta      bigint DEFAULT 0,
    p_reservation_id  text DEFAULT NULL,
    p_event_id        text DEFAULT NULL,
    p_action          jsonb DEFAULT NULL,
    p_subject         jsonb DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL,
    p_reason          text DEFAULT NULL,
    p_request_id      text DEFAULT NULL,
    p_trace_id        text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM cycles._append_ledger_rows(ARRAY[cycles._ledger_row(
        p_budget_id, p_tenant_id, p_scope, p_unit, p_operation, p_actor, p_allocated_delta, p_spent_delta,
        p_reserved_delta, p_debt_delta, p_reservation_id, p_event_id, p_action, p_subject, p_idempotency_key,
        p_reason, p_request_id, p_trace_id)]);
END;
$$;

-- Outbox events ------------------------------------------------------------
-- The one place that writes to the outbox. The category is the event type's
-- prefix. No NOTIFY here: it takes a cluster-wide lock at commit, which would
-- serialise the hot path; delivery workers poll the outbox by seq.

CREATE FUNCTION cycles._emit_event(
    p_tenant_id      text,
    p_event_type     text,
    p_source         text,
    p_actor          jsonb,
    p_data           jsonb,
    p_scope          text DEFAULT NULL,
    p_request_id     text DEFAULT NULL,
    p_trace_id       text DEFAULT NULL,
    p_correlation_id text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_event_id text := cycles._new_id('evt_', 16);
BEGIN
    INSERT INTO cycles.events (
        event_id, tenant_id, event_type, category, scope, source, actor, data,
        correlation_id, request_id, trace_id)
    VALUES (
        v_event_id, p_tenant_id, p_event_type, split_part(p_event_type, '.', 1), p_scope, p_source,
        jsonb_strip_nulls(p_actor), jsonb_strip_nulls(coalesce(p_data, '{}'::jsonb)),
        p_correlation_id, p_request_id, p_trace_id);
    RETURN v_event_id;
END;
$$;

-- Actor of an operation, as stored on ledger rows and events: {type, key_id}.
-- psql callers pass nothing and are recorded as admin.
CREATE FUNCTION cycles._actor(p_ctx jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'type', coalesce(p_ctx ->> 'actor_type', 'admin'),
        'key_id', p_ctx ->> 'key_id',
        'source_ip', p_ctx ->> 'source_ip'));
END;
$$;

-- API keys -----------------------------------------------------------------
-- Secrets are never stored: a key is found by the SHA-256 of its secret.

CREATE FUNCTION cycles._hash_secret(p_secret text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN sha256(convert_to(p_secret, 'UTF8'));
END;
$$;

-- A new secret: cyc_live_ + 43 url-safe characters (256 bits drawn from two
-- v4 UUIDs, i.e. 244 random bits, from the server's strong random source).
CREATE FUNCTION cycles._new_secret() RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    RETURN 'cyc_live_' || rtrim(translate(encode(
        decode(replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''), 'hex'),
        'base64'), '+/', '-_'), '=');
END;
$$;

-- The ACTIVE, unexpired key whose secret this is, with its tenant;
-- UNAUTHORIZED otherwise. Errors say nothing about which check failed, so a
-- caller cannot probe for revoked or expired keys. One indexed lookup, by a
-- hash computed beforehand: with the hash function inside the statement the
-- plan cache would plan it anew for every key.
CREATE FUNCTION cycles._authenticate(p_api_key text, OUT o_key cycles.api_keys, OUT o_tenant cycles.tenants)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_hash  bytea;
    v_found record;
BEGIN
    IF p_api_key IS NOT NULL AND char_length(p_api_key) BETWEEN 1 AND 512 THEN
        v_hash := cycles._hash_secret(p_api_key);
        SELECT k AS key, t AS tenant INTO v_found
        FROM cycles.api_keys AS k
        JOIN cycles.tenants AS t ON t.tenant_id = k.tenant_id
        WHERE k.key_hash = v_hash;
        o_key := v_found.key;
        o_tenant := v_found.tenant;
    END IF;
    IF o_key.key_id IS NULL OR o_key.status <> 'ACTIVE' OR o_key.expires_at <= clock_timestamp() THEN
        PERFORM cycles._fail('UNAUTHORIZED', 'missing, unknown, revoked or expired API key');
    END IF;
END;
$$;

-- Whether a key's permission list grants p_permission. admin:write grants
-- every *:write, admin:read every *:read (never a write).
CREATE FUNCTION cycles._has_permission(p_permissions text[], p_permission text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN p_permission = ANY (p_permissions)
        OR (p_permission LIKE '%:write' AND 'admin:write' = ANY (p_permissions))
        OR (p_permission LIKE '%:read' AND 'admin:read' = ANY (p_permissions));
END;
$$;
