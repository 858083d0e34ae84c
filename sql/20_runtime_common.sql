-- Private helpers of the runtime protocol (reserve, commit, release, extend,
-- decide, events, queries): who is calling, request validation, scope
-- derivation, idempotency records, balance snapshots, the charge arithmetic
-- shared by commits and events, and the ledger rows and budget signals that
-- follow every balance change.

-- Principal ----------------------------------------------------------------

-- The authenticated key's id, its tenant row and its scope_filter, after
-- checking that the key grants p_permission (NULL: no permission needed).
-- Errors: UNAUTHORIZED (bad key), FORBIDDEN (permission missing).
CREATE FUNCTION cycles._runtime_principal(
    p_api_key    text,
    p_permission text,
    OUT o_key_id       text,
    OUT o_tenant       cycles.tenants,
    OUT o_scope_filter text[]
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_auth record;
BEGIN
    v_auth := cycles._authenticate(p_api_key);
    IF p_permission IS NOT NULL AND NOT cycles._has_permission((v_auth.o_key).permissions, p_permission) THEN
        PERFORM cycles._fail('FORBIDDEN', format('API key lacks the %s permission', p_permission),
            jsonb_build_object('required_permission', p_permission));
    END IF;
    o_key_id := (v_auth.o_key).key_id;
    o_scope_filter := (v_auth.o_key).scope_filter;
    o_tenant := v_auth.o_tenant;
END;
$$;

-- A key with a non-empty scope_filter acts only on scopes the filter allows
-- (cycles._scope_filter_allows: an entry level:value or level:* must appear
-- in the scope path, or the path must equal or descend from an entry that is
-- a full scope). Checked on the reservation's scope path (its deepest scope).
-- Returns p_scope_path, so that hot paths call it as an expression (an
-- assignment), which costs less than PERFORM's query.
-- Errors: FORBIDDEN.
CREATE FUNCTION cycles._require_scope_in_filter(p_scope_filter text[], p_scope_path text) RETURNS text
LANGUAGE plpgsql
AS $$
BEGIN
    IF cardinality(p_scope_filter) > 0
       AND NOT cycles._scope_filter_allows(to_jsonb(p_scope_filter), p_scope_path) THEN
        PERFORM cycles._fail('FORBIDDEN', format('API key''s scope_filter does not allow scope %s', p_scope_path),
            jsonb_build_object('scope', p_scope_path, 'scope_filter', to_jsonb(p_scope_filter)));
    END IF;
    RETURN p_scope_path;
END;
$$;

-- The admin key was verified by the caller (the HTTP layer, or psql). A NULL
-- API key is accepted only with one of p_allowed actor types in the context.
-- Errors: UNAUTHORIZED.
CREATE FUNCTION cycles._require_admin_context(p_ctx jsonb, p_allowed text[]) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF coalesce(p_ctx ->> 'actor_type', 'admin') <> ALL (p_allowed) THEN
        PERFORM cycles._fail('UNAUTHORIZED', 'missing, unknown, revoked or expired API key');
    END IF;
END;
$$;

-- Actor recorded on ledger rows and events of a runtime call: the API key
-- that made it, or the admin context when there is no key.
CREATE FUNCTION cycles._runtime_actor(p_ctx jsonb, p_key_id text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN CASE
        WHEN p_key_id IS NOT NULL THEN jsonb_strip_nulls(jsonb_build_object(
            'type', 'api_key', 'key_id', p_key_id, 'source_ip', p_ctx ->> 'source_ip'))
        ELSE cycles._actor(p_ctx)
    END;
END;
$$;

-- Request validation -------------------------------------------------------
-- The HTTP layer validates types and bounds already; these checks repeat the
-- semantic ones so that psql callers get the same errors.

CREATE FUNCTION cycles._require_idempotency_key(p_request jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_key text;
BEGIN
    IF p_request IS NULL OR jsonb_typeof(p_request) <> 'object' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'request body must be a JSON object');
    END IF;
    IF jsonb_typeof(p_request -> 'idempotency_key') IS DISTINCT FROM 'string' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'idempotency_key is required and must be a string');
    END IF;
    v_key := p_request ->> 'idempotency_key';
    IF char_length(v_key) NOT BETWEEN 1 AND 256 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'idempotency_key must be 1 to 256 characters');
    END IF;
    RETURN v_key;
END;
$$;

-- An Amount object {unit, amount}: a known unit and an int64 >= 0.
-- Errors: INVALID_REQUEST.
CREATE FUNCTION cycles._request_amount(
    p_value jsonb, p_field text, OUT o_unit text, OUT o_amount bigint
)
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_number numeric;
BEGIN
    IF p_value IS NULL OR jsonb_typeof(p_value) <> 'object' THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('%s is required and must be an object {unit, amount}', p_field));
    END IF;
    IF jsonb_typeof(p_value -> 'unit') IS DISTINCT FROM 'string' THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('%s.unit is required', p_field));
    END IF;
    o_unit := cycles._require_unit(p_value ->> 'unit');
    IF jsonb_typeof(p_value -> 'amount') IS DISTINCT FROM 'number' THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('%s.amount is required and must be an integer', p_field));
    END IF;
    v_number := (p_value -> 'amount')::numeric;
    IF v_number <> trunc(v_number) OR v_number < 0 OR v_number > 9223372036854775807 THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('%s.amount must be an integer between 0 and 9223372036854775807', p_field));
    END IF;
    o_amount := v_number::bigint;
END;
$$;

-- Action {kind, name, tags?}. Errors: INVALID_REQUEST.
CREATE FUNCTION cycles._require_action(p_action jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_action IS NULL OR jsonb_typeof(p_action) <> 'object' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'action is required and must be an object {kind, name}');
    END IF;
    IF jsonb_typeof(p_action -> 'kind') IS DISTINCT FROM 'string'
            OR char_length(p_action ->> 'kind') NOT BETWEEN 1 AND 64 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'action.kind is required: a string of at most 64 characters');
    END IF;
    IF jsonb_typeof(p_action -> 'name') IS DISTINCT FROM 'string'
            OR char_length(p_action ->> 'name') NOT BETWEEN 1 AND 256 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'action.name is required: a string of at most 256 characters');
    END IF;
    -- Tags are looked at only when present: the check is a query (the
    -- elements), which an action without tags should not pay for.
    IF p_action ? 'tags' AND p_action -> 'tags' <> 'null'::jsonb THEN
        IF jsonb_typeof(p_action -> 'tags') <> 'array'
                OR jsonb_array_length(p_action -> 'tags') > 10
                OR EXISTS (SELECT FROM jsonb_array_elements(p_action -> 'tags') AS t(tag)
                           WHERE jsonb_typeof(t.tag) <> 'string' OR char_length(t.tag #>> '{}') > 64) THEN
            PERFORM cycles._fail('INVALID_REQUEST',
                'action.tags must be at most 10 strings of at most 64 characters');
        END IF;
    END IF;
    RETURN p_action;
END;
$$;

-- An optional free-form object field (metadata, metrics). Errors: INVALID_REQUEST.
CREATE FUNCTION cycles._request_object(p_request jsonb, p_field text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_value jsonb := p_request -> p_field;
BEGIN
    IF v_value IS NULL OR v_value = 'null'::jsonb THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v_value) <> 'object' THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('%s must be an object', p_field));
    END IF;
    RETURN v_value;
END;
$$;

-- Scope derivation ---------------------------------------------------------

-- The canonical scope path and its cumulative prefixes for a subject. The
-- path always starts with the key's tenant; levels follow the fixed order,
-- gaps are skipped, values are lower-cased. subject.tenant, when given, must
-- name the key's tenant. The subject itself is stored as sent, so dimensions
-- round-trip.
-- Errors: INVALID_REQUEST (not an object, no standard field, bad value),
-- FORBIDDEN (subject.tenant is another tenant).
CREATE FUNCTION cycles._derive_scopes(
    p_subject   jsonb,
    p_tenant_id text,
    OUT o_scope_path      text,
    OUT o_affected_scopes text[]
)
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_level text;
    v_value jsonb;
    v_text  text;
BEGIN
    IF p_subject IS NULL OR jsonb_typeof(p_subject) <> 'object' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'subject is required and must be an object');
    END IF;
    -- A level set to JSON null counts as absent. An expression, not a query
    -- over the fields: this runs for every reserve, decide and event.
    IF NOT jsonb_strip_nulls(p_subject) ?| cycles._scope_levels() THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            'subject must set at least one of tenant, workspace, app, workflow, agent, toolset');
    END IF;
    IF p_subject ? 'dimensions' AND p_subject -> 'dimensions' <> 'null'::jsonb
            AND jsonb_typeof(p_subject -> 'dimensions') <> 'object' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'subject.dimensions must be an object of strings');
    END IF;
    o_scope_path := 'tenant:' || p_tenant_id;
    o_affected_scopes := ARRAY[o_scope_path];
    FOREACH v_level IN ARRAY cycles._scope_levels() LOOP
        v_value := p_subject -> v_level;
        CONTINUE WHEN v_value IS NULL OR v_value = 'null'::jsonb;
        IF jsonb_typeof(v_value) <> 'string' THEN
            PERFORM cycles._fail('INVALID_REQUEST', format('subject.%s must be a string', v_level));
        END IF;
        v_text := lower(v_value #>> '{}');
        IF v_text !~ '^[a-z0-9_.-]{1,128}$' THEN
            PERFORM cycles._fail('INVALID_REQUEST',
                format('subject.%s must match ^[a-zA-Z0-9_.-]{1,128}$', v_level));
        END IF;
        IF v_level = 'tenant' THEN
            IF v_text <> p_tenant_id THEN
                PERFORM cycles._fail('FORBIDDEN', 'subject.tenant does not match the API key''s tenant',
                    jsonb_build_object('subject_tenant', v_value #>> '{}', 'tenant', p_tenant_id));
            END IF;
            CONTINUE;
        END IF;
        o_scope_path := o_scope_path || '/' || v_level || ':' || v_text;
        o_affected_scopes := o_affected_scopes || o_scope_path;
    END LOOP;
END;
$$;

-- When no derived scope has a budget in p_unit: UNIT_MISMATCH if some has one
-- in another unit, else NOT_FOUND. Never returns.
CREATE FUNCTION cycles._fail_no_budget(p_scopes text[], p_unit text, p_scope_path text) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_scope text;
    v_units text[];
BEGIN
    SELECT max(b.scope COLLATE "C"), array_agg(DISTINCT b.unit ORDER BY b.unit)
    INTO v_scope, v_units
    FROM cycles.budgets AS b
    WHERE b.tenant_id = substr(split_part(p_scopes[1], '/', 1), 8) AND b.scope = ANY (p_scopes);
    IF v_scope IS NOT NULL THEN
        PERFORM cycles._fail('UNIT_MISMATCH',
            format('no budget in unit %s for scope %s; budgets exist in %s',
                   p_unit, v_scope, array_to_string(v_units, ', ')),
            jsonb_build_object('scope', v_scope, 'requested_unit', p_unit, 'expected_units', to_jsonb(v_units)));
    END IF;
    PERFORM cycles._fail('NOT_FOUND', format('Budget not found for provided scope: %s', p_scope_path),
        jsonb_build_object('scope', p_scope_path, 'unit', p_unit));
END;
$$;

-- Whether some derived scope has a budget (in any unit): decide and dry_run
-- turn "none at all" into DENY BUDGET_NOT_FOUND, and a unit mismatch into 400.
CREATE FUNCTION cycles._any_budget(p_scopes text[]) RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN EXISTS (SELECT FROM cycles.budgets AS b
                   WHERE b.tenant_id = substr(split_part(p_scopes[1], '/', 1), 8) AND b.scope = ANY (p_scopes));
END;
$$;

-- Checks -------------------------------------------------------------------

-- The first reason, scope by scope from the top of the hierarchy, why a new
-- reservation of p_estimate cannot be taken from p_rows (sorted by scope):
-- FROZEN, CLOSED, over limit, unpaid debt without overdraft, not enough
-- remaining. NULL reason when all pass.
CREATE FUNCTION cycles._reserve_denial(
    p_rows     cycles.budgets[],
    p_estimate bigint,
    OUT o_reason text,
    OUT o_row    cycles.budgets
)
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_row cycles.budgets;
BEGIN
    FOREACH v_row IN ARRAY p_rows LOOP
        o_reason := CASE
            WHEN v_row.status = 'FROZEN' THEN 'BUDGET_FROZEN'
            WHEN v_row.status = 'CLOSED' THEN 'BUDGET_CLOSED'
            WHEN v_row.is_over_limit THEN 'OVERDRAFT_LIMIT_EXCEEDED'
            WHEN v_row.debt > 0 AND v_row.overdraft_limit = 0 THEN 'DEBT_OUTSTANDING'
            WHEN v_row.remaining < p_estimate THEN 'BUDGET_EXCEEDED'
        END;
        IF o_reason IS NOT NULL THEN
            o_row := v_row;
            RETURN;
        END IF;
    END LOOP;
END;
$$;

-- Raises the 409 for a denial found by cycles._reserve_denial (or by the
-- event checks), naming the scope and the amounts involved.
CREATE FUNCTION cycles._fail_denial(p_reason text, p_row cycles.budgets, p_requested bigint) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_reason = 'BUDGET_CLOSED' THEN
        -- A tenant close that committed while this call waited for the budget
        -- locks closed the budget; the caller read the tenant before that.
        -- Report the cause, as a call made after the close does. (This
        -- statement's snapshot is newer than the lock wait.)
        PERFORM cycles._require_tenant_open(t, false) FROM cycles.tenants AS t WHERE t.tenant_id = p_row.tenant_id;
    END IF;
    PERFORM cycles._fail(p_reason,
        CASE p_reason
            WHEN 'BUDGET_FROZEN' THEN format('budget %s is frozen', p_row.scope)
            WHEN 'BUDGET_CLOSED' THEN format('budget %s is closed', p_row.scope)
            WHEN 'OVERDRAFT_LIMIT_EXCEEDED' THEN format('budget %s is over its overdraft limit', p_row.scope)
            WHEN 'DEBT_OUTSTANDING' THEN format('budget %s has outstanding debt %s', p_row.scope, p_row.debt)
            ELSE format('insufficient budget in scope %s: remaining %s, requested %s',
                        p_row.scope, p_row.remaining, p_requested)
        END,
        jsonb_build_object('scope', p_row.scope, 'unit', p_row.unit, 'remaining', p_row.remaining,
                           'requested', p_requested, 'debt', p_row.debt,
                           'overdraft_limit', p_row.overdraft_limit));
END;
$$;

-- Charges ------------------------------------------------------------------
-- A commit's overage and a direct event are the same problem: charge p_delta
-- more to every scope of p_rows under an overage policy. The cap is what can
-- be charged: ALLOW_IF_AVAILABLE never goes beyond the smallest positive
-- remaining; ALLOW_WITH_OVERDRAFT caps only by scopes without an overdraft
-- limit and lets the others take the unfunded part as debt, up to their limit.
-- Returns the cap, or the scope whose overdraft limit would be exceeded.
CREATE FUNCTION cycles._overage_cap(
    p_rows   cycles.budgets[],
    p_delta  bigint,
    p_policy text,
    OUT o_capped    bigint,
    OUT o_violation cycles.budgets
)
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_delta <= 0 THEN
        o_capped := 0;
        RETURN;
    END IF;
    SELECT least(p_delta, min(greatest(r.remaining, 0)))
    INTO o_capped
    FROM unnest(p_rows) AS r
    WHERE p_policy <> 'ALLOW_WITH_OVERDRAFT' OR r.overdraft_limit = 0;
    o_capped := coalesce(o_capped, p_delta);
    IF p_policy = 'ALLOW_WITH_OVERDRAFT' THEN
        SELECT r.* INTO o_violation
        FROM unnest(p_rows) AS r
        WHERE r.overdraft_limit > 0
          AND r.debt::numeric + (o_capped - greatest(r.remaining, 0)) > r.overdraft_limit
          AND o_capped > greatest(r.remaining, 0)
        ORDER BY r.scope COLLATE "C"
        LIMIT 1;
    END IF;
END;
$$;

-- Applies a settlement to the budget rows p_rows, which the caller holds
-- locked: release p_release from reserved, charge p_base from it, and charge
-- p_capped more from remaining (funded where remaining is positive, the rest
-- as debt). A scope that could not cover p_delta under a capping policy, or
-- whose debt passes its overdraft limit, becomes over limit.
-- Returns the rows after the change, sorted by scope. The generic plan is
-- forced, as in cycles._hold_reserved.
CREATE FUNCTION cycles._apply_charge(
    p_rows    cycles.budgets[],
    p_release bigint,
    p_base    bigint,
    p_capped  bigint,
    p_delta   bigint,
    p_policy  text
) RETURNS cycles.budgets[]
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_after cycles.budgets[];
BEGIN
    WITH changed AS (
        UPDATE cycles.budgets AS b SET
            reserved = b.reserved - p_release,
            spent = b.spent + p_base + least(p_capped, greatest(b.remaining, 0)),
            debt = b.debt + (p_capped - least(p_capped, greatest(b.remaining, 0))),
            remaining = b.remaining + p_release - p_base - p_capped,
            is_over_limit = b.is_over_limit
                OR b.debt + (p_capped - least(p_capped, greatest(b.remaining, 0))) > b.overdraft_limit
                OR (p_capped < p_delta AND b.remaining < p_delta
                    AND (p_policy <> 'ALLOW_WITH_OVERDRAFT' OR b.overdraft_limit = 0)),
            updated_at = clock_timestamp()
        WHERE b.tenant_id = (p_rows[1]).tenant_id
          AND b.budget_id = ANY (ARRAY(SELECT r.budget_id FROM unnest(p_rows) AS r))
        RETURNING b AS row
    )
    SELECT array_agg(c.row ORDER BY (c.row).scope COLLATE "C") INTO v_after FROM changed AS c;
    RETURN v_after;
END;
$$;

-- Balances -----------------------------------------------------------------

-- Balance objects of p_rows, in their order: every caller passes rows in
-- hierarchy order (scope byte order, then unit), as they were locked, read or
-- listed. The object is spelled out again rather than calling
-- cycles._balance_json per row, and built by a loop of expressions rather
-- than an aggregate query: this runs on every reserve and commit, where a
-- query's executor start-up costs more than the JSON (half the time).
CREATE FUNCTION cycles._balances_json(p_rows cycles.budgets[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_out jsonb := '[]';
    v_row cycles.budgets;
BEGIN
    FOREACH v_row IN ARRAY coalesce(p_rows, '{}') LOOP
        v_out := v_out || jsonb_build_array(jsonb_build_object(
            'scope', v_row.scope,
            'scope_path', v_row.scope,
            'remaining', jsonb_build_object('unit', v_row.unit, 'amount', v_row.remaining),
            'reserved', jsonb_build_object('unit', v_row.unit, 'amount', v_row.reserved),
            'spent', jsonb_build_object('unit', v_row.unit, 'amount', v_row.spent),
            'allocated', jsonb_build_object('unit', v_row.unit, 'amount', v_row.allocated),
            'debt', jsonb_build_object('unit', v_row.unit, 'amount', v_row.debt),
            'overdraft_limit', jsonb_build_object('unit', v_row.unit, 'amount', v_row.overdraft_limit),
            'is_over_limit', v_row.is_over_limit));
    END LOOP;
    RETURN v_out;
END;
$$;

-- The budget rows of p_scopes in p_unit, locked FOR UPDATE in the global
-- lock order (scope byte order, which is hierarchy order), as an array in
-- that order; NULL when none exists. The scopes are of one tenant (their
-- first segment). One statement per scope on the unique (tenant_id, scope,
-- unit) key: its plan is made once per connection, where a single
-- statement over an array of scopes is planned again on every call.
CREATE FUNCTION cycles._lock_budgets(p_scopes text[], p_unit text) RETURNS cycles.budgets[]
LANGUAGE plpgsql
AS $$
DECLARE
    v_scopes text[] := p_scopes;
    v_tenant text := substr(split_part(p_scopes[1], '/', 1), 8);
    v_scope  text;
    v_row    cycles.budgets;
    v_rows   cycles.budgets[];
BEGIN
    -- Callers pass a scope path's prefixes or a reservation's sorted scopes:
    -- already in order. Sort anything else rather than risk a deadlock.
    FOR i IN 2 .. coalesce(cardinality(v_scopes), 0) LOOP
        IF v_scopes[i - 1] COLLATE "C" >= v_scopes[i] COLLATE "C" THEN
            v_scopes := ARRAY(SELECT DISTINCT s.scope FROM unnest(p_scopes) AS s (scope) ORDER BY s.scope COLLATE "C");
            EXIT;
        END IF;
    END LOOP;
    FOREACH v_scope IN ARRAY v_scopes LOOP
        SELECT b.* INTO v_row FROM cycles.budgets AS b
        WHERE b.tenant_id = v_tenant AND b.scope = v_scope AND b.unit = p_unit
        FOR UPDATE;
        IF FOUND THEN
            v_rows := v_rows || v_row;
        END IF;
    END LOOP;
    RETURN v_rows;
END;
$$;

-- Adds p_estimate to reserved (and takes it from remaining) on p_rows, which
-- the caller holds locked: a reservation's hold. Returns the rows after, in
-- the same order. One UPDATE for all rows, whose integrity checks PostgreSQL
-- prepares once per statement; the generic plan (a primary-key lookup per id)
-- is forced, as the plan cache would otherwise plan an array of ids anew on
-- every call.
CREATE FUNCTION cycles._hold_reserved(p_rows cycles.budgets[], p_estimate bigint) RETURNS cycles.budgets[]
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_after cycles.budgets[];
BEGIN
    WITH changed AS (
        UPDATE cycles.budgets AS b SET
            reserved = b.reserved + p_estimate,
            remaining = b.remaining - p_estimate,
            updated_at = clock_timestamp()
        WHERE b.tenant_id = (p_rows[1]).tenant_id
          AND b.budget_id = ANY (ARRAY(SELECT r.budget_id FROM unnest(p_rows) AS r))
        RETURNING b AS row
    )
    SELECT array_agg(c.row ORDER BY (c.row).scope COLLATE "C") INTO v_after FROM changed AS c;
    RETURN v_after;
END;
$$;

-- The overage policy of the deepest of p_rows (in scope order, as locked)
-- that sets one; NULL when none does. A loop of expressions: it runs for
-- every reserve, where a query over the rows costs its executor start-up.
CREATE FUNCTION cycles._deepest_overage_policy(p_rows cycles.budgets[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_policy text;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_rows), 0) LOOP
        v_policy := coalesce(p_rows[i].commit_overage_policy, v_policy);
    END LOOP;
    RETURN v_policy;
END;
$$;

-- The same rows without locks, for read-only evaluations and snapshots.
CREATE FUNCTION cycles._read_budgets(p_scopes text[], p_unit text) RETURNS cycles.budgets[]
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (
        SELECT array_agg(b ORDER BY b.scope COLLATE "C")
        FROM cycles.budgets AS b
        WHERE b.tenant_id = substr(split_part(p_scopes[1], '/', 1), 8) AND b.scope = ANY (p_scopes)
          AND b.unit = p_unit
    );
END;
$$;

-- Idempotency --------------------------------------------------------------
-- One record per (tenant, endpoint, key) holds the hash of the request and
-- the response it produced. Endpoints: reserve (shared by dry_run), decide,
-- event, commit:<id>, release:<id>, extend:<id>.

-- SHA-256 of the request as jsonb text (key order and spacing normalised),
-- plus the reservation id for the per-reservation endpoints.
CREATE FUNCTION cycles._request_hash(p_request jsonb, p_reservation_id text DEFAULT NULL) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN sha256(convert_to(p_request::text || coalesce(chr(30) || p_reservation_id, ''), 'UTF8'));
END;
$$;

-- A stored response as it is replayed: verbatim, except remaining_ttl_ms,
-- which is recomputed from the response's expires_at_ms (0 once the
-- reservation is no longer ACTIVE).
CREATE FUNCTION cycles._replay_response(p_response jsonb, p_tenant_id text, p_reservation_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN CASE
        WHEN p_response ? 'remaining_ttl_ms' THEN jsonb_set(p_response, '{remaining_ttl_ms}', to_jsonb(
            coalesce((SELECT CASE WHEN r.status = 'ACTIVE'
                                  THEN greatest(0, (p_response ->> 'expires_at_ms')::bigint - cycles._now_ms())
                                  ELSE 0 END
                      FROM cycles.reservations AS r
                      WHERE r.tenant_id = p_tenant_id AND r.reservation_id = p_reservation_id), 0)))
        ELSE p_response
    END;
END;
$$;

-- The replayed response of an earlier success with this key, or NULL when
-- there is none (or it has expired). With p_serialize, first takes a
-- transaction-scoped advisory lock on the key, so concurrent requests with
-- the same key run one after the other and all but the first replay.
-- Errors: IDEMPOTENCY_MISMATCH (same key, different request).
CREATE FUNCTION cycles._idempotent_replay(
    p_tenant_id text,
    p_endpoint  text,
    p_key       text,
    p_hash      bytea,
    p_serialize boolean
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_record cycles.idempotency_records;
BEGIN
    IF p_serialize THEN
        PERFORM pg_advisory_xact_lock(
            hashtextextended(p_tenant_id || chr(31) || p_endpoint || chr(31) || p_key, 0));
    END IF;
    SELECT i.* INTO v_record
    FROM cycles.idempotency_records AS i
    WHERE i.tenant_id = p_tenant_id AND i.endpoint = p_endpoint AND i.idempotency_key = p_key
      AND i.expires_at > clock_timestamp();
    IF v_record.tenant_id IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_record.request_hash <> p_hash THEN
        PERFORM cycles._fail('IDEMPOTENCY_MISMATCH',
            'idempotency key was already used with a different request',
            jsonb_build_object('idempotency_key', p_key));
    END IF;
    RETURN cycles._replay_response(v_record.response, v_record.tenant_id, v_record.reservation_id);
END;
$$;

-- Stores the response of a success under its key, kept at least 7 days and
-- at least until p_keep_until. An expired record with the same key is
-- replaced.
CREATE FUNCTION cycles._idempotent_store(
    p_tenant_id      text,
    p_endpoint       text,
    p_key            text,
    p_hash           bytea,
    p_response       jsonb,
    p_reservation_id text DEFAULT NULL,
    p_keep_until_ms  bigint DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
        INSERT INTO cycles.idempotency_records AS i (
            tenant_id, endpoint, idempotency_key, request_hash, response, reservation_id, expires_at)
        VALUES (
            p_tenant_id, p_endpoint, p_key, p_hash, p_response, p_reservation_id,
            greatest(clock_timestamp() + interval '7 days',
                     cycles._ms_to_timestamptz(coalesce(p_keep_until_ms, 0))))
        ON CONFLICT ON CONSTRAINT idempotency_records_pkey DO UPDATE SET
            request_hash = excluded.request_hash,
            response = excluded.response,
            reservation_id = excluded.reservation_id,
            created_at = clock_timestamp(),
            expires_at = excluded.expires_at;
END;
$$;

-- Ledger rows and budget signals ---------------------------------------------

-- After a balance change on budget rows (p_before and p_after: the same
-- rows, both sorted by scope): one ledger row per budget with the deltas applied (every
-- budget for COMMIT and EVENT, so a zero charge is still on record; only
-- changed ones otherwise), then the budget events the change caused:
-- budget.exhausted (remaining reaches <= 0 from > 0), budget.over_limit_entered,
-- budget.debt_incurred, and one budget.threshold_crossed per 80/95/100 %
-- utilisation threshold crossed upwards (the lowest, 0.80, also gates the
-- event query).
CREATE FUNCTION cycles._record_changes(
    p_before          cycles.budgets[],
    p_after           cycles.budgets[],
    p_operation       text,
    p_actor           jsonb,
    p_ctx             jsonb,
    p_reservation_id  text DEFAULT NULL,
    p_event_id        text DEFAULT NULL,
    p_action          jsonb DEFAULT NULL,
    p_subject         jsonb DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL,
    p_reason          text DEFAULT NULL,
    p_overage_policy  text DEFAULT NULL,
    p_source          text DEFAULT 'cycles-server'
) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_before cycles.budgets;
    v_after  cycles.budgets;
    v_rows   cycles.ledger_entries[];
    v_signal boolean := false;
BEGIN
    -- Callers pass both arrays sorted by scope (cycles._lock_budgets, then
    -- an UPDATE of the same rows), so row i before is row i after. A loop of
    -- plain expressions costs less here than a join of the two arrays.
    FOR i IN 1 .. coalesce(cardinality(p_after), 0) LOOP
        v_before := p_before[i];
        v_after := p_after[i];
        IF v_before.budget_id IS DISTINCT FROM v_after.budget_id THEN
            RAISE EXCEPTION 'cycles._record_changes: before and after rows are not aligned';
        END IF;
        IF p_operation IN ('COMMIT', 'EVENT')
           OR (v_after.allocated, v_after.spent, v_after.reserved, v_after.debt)
              IS DISTINCT FROM (v_before.allocated, v_before.spent, v_before.reserved, v_before.debt) THEN
            v_rows := v_rows || cycles._ledger_row(
                v_after.budget_id, v_after.tenant_id, v_after.scope, v_after.unit, p_operation, p_actor,
                p_allocated_delta => v_after.allocated - v_before.allocated,
                p_spent_delta => v_after.spent - v_before.spent,
                p_reserved_delta => v_after.reserved - v_before.reserved,
                p_debt_delta => v_after.debt - v_before.debt,
                p_reservation_id => p_reservation_id,
                p_event_id => p_event_id,
                p_action => p_action,
                p_subject => p_subject,
                p_idempotency_key => p_idempotency_key,
                p_reason => p_reason,
                p_request_id => p_ctx ->> 'request_id',
                p_trace_id => p_ctx ->> 'trace_id');
        END IF;
        -- Whether the query below can find anything for this row: a budget
        -- below its lowest utilisation threshold that stays funded, within
        -- its limit and without new debt signals nothing.
        v_signal := v_signal
            OR (v_before.remaining > 0 AND v_after.remaining <= 0)
            OR (NOT v_before.is_over_limit AND v_after.is_over_limit)
            OR v_after.debt > v_before.debt
            OR (v_after.allocated > 0
                AND (v_after.spent + v_after.reserved + v_after.debt)::numeric >= 0.80 * v_after.allocated);
    END LOOP;
    IF v_rows IS NOT NULL THEN
        PERFORM cycles._append_ledger_rows(v_rows);
    END IF;
    IF NOT v_signal THEN
        RETURN;
    END IF;

    PERFORM cycles._emit_event(a.tenant_id, s.event_type, p_source, p_actor, s.data, a.scope,
                               p_ctx ->> 'request_id', p_ctx ->> 'trace_id',
                               coalesce(p_reservation_id, p_event_id))
    FROM unnest(p_before) AS b
    JOIN unnest(p_after) AS a ON a.budget_id = b.budget_id
    CROSS JOIN LATERAL (
        SELECT 1 AS ord, 'budget.exhausted' AS event_type, jsonb_build_object(
                'scope', a.scope, 'unit', a.unit, 'threshold', 1.0,
                'utilization', CASE WHEN a.allocated > 0
                    THEN round((a.spent + a.reserved + a.debt)::numeric / a.allocated, 4) END,
                'allocated', a.allocated, 'remaining', a.remaining, 'spent', a.spent,
                'reserved', a.reserved, 'direction', 'rising') AS data
        WHERE b.remaining > 0 AND a.remaining <= 0
        UNION ALL
        SELECT 2, 'budget.over_limit_entered', jsonb_build_object(
                'scope', a.scope, 'unit', a.unit, 'debt', a.debt, 'overdraft_limit', a.overdraft_limit,
                'is_over_limit', true,
                'debt_utilization', CASE WHEN a.overdraft_limit > 0
                    THEN round(a.debt::numeric / a.overdraft_limit, 4) END)
        WHERE NOT b.is_over_limit AND a.is_over_limit
        UNION ALL
        SELECT 3, 'budget.debt_incurred', jsonb_build_object(
                'scope', a.scope, 'unit', a.unit, 'reservation_id', p_reservation_id,
                'debt_incurred', a.debt - b.debt, 'total_debt', a.debt,
                'overdraft_limit', a.overdraft_limit, 'overage_policy', p_overage_policy)
        WHERE a.debt > b.debt
        UNION ALL
        SELECT 4, 'budget.threshold_crossed', jsonb_build_object(
                'scope', a.scope, 'unit', a.unit, 'threshold', t.threshold,
                'utilization', round((a.spent + a.reserved + a.debt)::numeric / a.allocated, 4),
                'allocated', a.allocated, 'remaining', a.remaining, 'spent', a.spent,
                'reserved', a.reserved, 'direction', 'rising')
        FROM unnest(ARRAY[0.80, 0.95, 1.00]::numeric[]) AS t(threshold)
        WHERE a.allocated > 0
          AND (b.spent + b.reserved + b.debt)::numeric < t.threshold * b.allocated
          AND (a.spent + a.reserved + a.debt)::numeric >= t.threshold * a.allocated
    ) AS s
    ORDER BY a.scope COLLATE "C", s.ord, s.data ->> 'threshold';
END;
$$;

-- Tenant status guard for operations that persist something. CLOSED refuses
-- everything (TENANT_CLOSED); SUSPENDED refuses new reservations and events
-- (p_new_work) with FORBIDDEN, but lets existing reservations settle.
-- Returns p_tenant (hot paths assign it: see cycles._require_scope_in_filter).
CREATE FUNCTION cycles._require_tenant_open(p_tenant cycles.tenants, p_new_work boolean) RETURNS cycles.tenants
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_tenant.status = 'CLOSED' THEN
        PERFORM cycles._fail('TENANT_CLOSED', format('tenant %s is closed', p_tenant.tenant_id),
            jsonb_build_object('tenant_id', p_tenant.tenant_id));
    END IF;
    IF p_new_work AND p_tenant.status = 'SUSPENDED' THEN
        PERFORM cycles._fail('FORBIDDEN', format('tenant %s is suspended', p_tenant.tenant_id),
            jsonb_build_object('reason', 'TENANT_SUSPENDED', 'tenant_id', p_tenant.tenant_id));
    END IF;
    RETURN p_tenant;
END;
$$;

-- The reservation a settlement is about, locked FOR UPDATE (this lock
-- serialises every settlement of one reservation, so commit, release and
-- extend need no other idempotency lock), with its tenant row.
-- p_tenant_id NULL: an admin caller, any tenant.
-- Errors: NOT_FOUND, FORBIDDEN (another tenant's reservation).
CREATE FUNCTION cycles._lock_reservation(
    p_reservation_id text,
    p_tenant_id      text,
    OUT o_reservation cycles.reservations,
    OUT o_tenant      cycles.tenants
)
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_tenant_id IS NOT NULL THEN
        SELECT r.* INTO o_reservation
        FROM cycles.reservations AS r
        WHERE r.tenant_id = p_tenant_id AND r.reservation_id = p_reservation_id
        FOR UPDATE;
        IF o_reservation.reservation_id IS NULL
           AND EXISTS (SELECT FROM cycles.reservations AS r WHERE r.reservation_id = p_reservation_id) THEN
            PERFORM cycles._fail('FORBIDDEN', 'reservation belongs to another tenant',
                jsonb_build_object('reservation_id', p_reservation_id));
        END IF;
    ELSE
        SELECT r.* INTO o_reservation
        FROM cycles.reservations AS r
        WHERE r.reservation_id = p_reservation_id
        FOR UPDATE;
    END IF;
    IF o_reservation.reservation_id IS NULL THEN
        PERFORM cycles._fail('NOT_FOUND', format('reservation %s not found', p_reservation_id),
            jsonb_build_object('reservation_id', p_reservation_id));
    END IF;
    SELECT t.* INTO o_tenant FROM cycles.tenants AS t WHERE t.tenant_id = o_reservation.tenant_id;
END;
$$;

-- Status checks of a settlement after replay handling: EXPIRED -> 410,
-- COMMITTED/RELEASED -> RESERVATION_FINALIZED, past the deadline (expiry
-- plus grace for commit/release, expiry alone for extend) -> 410 even before
-- the sweeper has run.
CREATE FUNCTION cycles._require_settleable(p_reservation cycles.reservations, p_grace boolean) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_reservation.status = 'EXPIRED' THEN
        PERFORM cycles._fail('RESERVATION_EXPIRED', format('reservation %s has expired', p_reservation.reservation_id),
            jsonb_build_object('reservation_id', p_reservation.reservation_id,
                               'expires_at_ms', p_reservation.expires_at_ms));
    END IF;
    IF p_reservation.status <> 'ACTIVE' THEN
        PERFORM cycles._fail('RESERVATION_FINALIZED',
            format('reservation %s is already %s', p_reservation.reservation_id, p_reservation.status),
            jsonb_build_object('reservation_id', p_reservation.reservation_id, 'status', p_reservation.status));
    END IF;
    IF cycles._now_ms() > p_reservation.expires_at_ms + (p_reservation.grace_period_ms * p_grace::integer) THEN
        PERFORM cycles._fail('RESERVATION_EXPIRED', format('reservation %s has expired', p_reservation.reservation_id),
            jsonb_build_object('reservation_id', p_reservation.reservation_id,
                               'expires_at_ms', p_reservation.expires_at_ms));
    END IF;
END;
$$;
