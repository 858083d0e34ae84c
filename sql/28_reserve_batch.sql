-- Reserve in batches: concurrent reserves of one API key applied in one
-- transaction, each with its own outcome.
--
-- Why: reserves that charge one shared budget serialise on its row lock,
-- which each holds until its commit (WAL flush included). Applied together,
-- the lock is taken once, the commit is flushed once, and the rows every
-- item changes are written with one statement per table for the batch.
--
-- Locks of a batch, in order (a single reserve's order, for all items at
-- once): the idempotency advisory lock of every item's key, in key byte
-- order; then the budget rows of every item's derived scopes in its estimate
-- unit, FOR UPDATE in (scope byte order, unit), the global lock order. The
-- items then lock nothing they do not hold already (a budget created
-- meanwhile aside). Taken item by item instead, item 2 could lock a row that
-- sorts before one item 1 locked (sibling scopes of a tenant without a
-- tenant-level budget) and deadlock with a transaction locking both in order.

-- The budget rows of the pairs (p_scopes[i], p_units[i]) of one tenant,
-- locked FOR UPDATE in the global lock order ((scope, unit) byte order), as
-- an array in that order; NULL when none exists. One statement per pair on
-- the unique (tenant_id, scope, unit) key, as cycles._lock_budgets does:
-- a single statement over the pairs gets a generic plan that hashes every
-- budget of the tenant, whose cost grows with the tenant, not the batch.
CREATE FUNCTION cycles._lock_budget_pairs(p_tenant_id text, p_scopes text[], p_units text[])
RETURNS cycles.budgets[]
LANGUAGE plpgsql
AS $$
DECLARE
    v_scope text;
    v_unit  text;
    v_row   cycles.budgets;
    v_rows  cycles.budgets[];
BEGIN
    FOR v_scope, v_unit IN
        SELECT p.scope, p.unit FROM unnest(p_scopes, p_units) AS p (scope, unit)
        GROUP BY p.scope, p.unit
        ORDER BY p.scope COLLATE "C", p.unit COLLATE "C"
    LOOP
        SELECT b.* INTO v_row FROM cycles.budgets AS b
        WHERE b.tenant_id = p_tenant_id AND b.scope = v_scope AND b.unit = v_unit
        FOR UPDATE;
        IF FOUND THEN
            v_rows := v_rows || v_row;
        END IF;
    END LOOP;
    RETURN v_rows;
END;
$$;

-- Every lock the items of a batch can take (see above); nothing for a key
-- that does not authenticate. A request this cannot read fails in its own
-- evaluation before locking anything.
CREATE FUNCTION cycles._lock_reserve_batch(p_api_key text, p_requests jsonb[]) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_principal record;
    v_tenant_id text;
    v_request   jsonb;
    v_keys      text[] := '{}';
    v_key       text;
    v_scopes    text[] := '{}';
    v_units     text[] := '{}';
    v_unit      text;
    v_derived   record;
BEGIN
    BEGIN
        v_principal := cycles._runtime_principal(p_api_key, 'reservations:create');
        v_tenant_id := (v_principal.o_tenant).tenant_id;
    EXCEPTION WHEN OTHERS THEN
        IF left(SQLSTATE, 2) <> 'CY' THEN
            RAISE;
        END IF;
        RETURN;
    END;
    FOR i IN 1 .. coalesce(cardinality(p_requests), 0) LOOP
        v_request := p_requests[i];
        CONTINUE WHEN jsonb_typeof(v_request) IS DISTINCT FROM 'object';
        IF jsonb_typeof(v_request -> 'idempotency_key') = 'string' THEN
            v_keys := v_keys || (v_request ->> 'idempotency_key');
        END IF;
        v_unit := v_request -> 'estimate' ->> 'unit';
        CONTINUE WHEN v_unit IS NULL;
        BEGIN
            v_derived := cycles._derive_scopes(v_request -> 'subject', v_tenant_id);
            v_derived.o_scope_path :=
                cycles._require_scope_in_filter(v_principal.o_scope_filter, v_derived.o_scope_path);
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 2) <> 'CY' THEN
                RAISE;
            END IF;
            CONTINUE;
        END;
        v_scopes := v_scopes || v_derived.o_affected_scopes;
        v_units := v_units || array_fill(v_unit, ARRAY[cardinality(v_derived.o_affected_scopes)]);
    END LOOP;
    -- The idempotency lock of cycles.reserve, taken by its own helper (a
    -- NULL hash never mismatches: this only locks).
    FOR v_key IN SELECT DISTINCT k.key COLLATE "C" FROM unnest(v_keys) AS k (key) ORDER BY 1 LOOP
        PERFORM cycles._idempotent_replay(v_tenant_id, 'reserve', v_key, NULL, true);
    END LOOP;
    PERFORM cycles._lock_budget_pairs(v_tenant_id, v_scopes, v_units);
END;
$$;

-- The general way of cycles.reserve_batch: each item is exactly a call of
-- cycles.reserve in a subtransaction of its own, after
-- cycles._lock_reserve_batch. Used for batches with a dry run or a key
-- repeated (a later item then replays or mismatches an earlier one).
-- Errors: as cycles.reserve_batch.
CREATE FUNCTION cycles._reserve_batch_each(p_api_key text, p_requests jsonb[], p_ctxs jsonb[])
RETURNS TABLE (o_item integer, o_response jsonb, o_sqlstate text, o_message text, o_detail text)
LANGUAGE plpgsql
AS $$
DECLARE
    v_count     integer := coalesce(cardinality(p_requests), 0);
BEGIN
    PERFORM cycles._lock_reserve_batch(p_api_key, p_requests);

    FOR i IN 1 .. v_count LOOP
        o_item := i;
        o_response := NULL;
        o_sqlstate := NULL;
        o_message := NULL;
        o_detail := NULL;
        BEGIN
            o_response := cycles.reserve(p_api_key => p_api_key, p_request => p_requests[i], p_ctx => p_ctxs[i]);
        EXCEPTION WHEN OTHERS THEN
            -- Only a refusal of this request stays with it; anything else
            -- fails the batch (QUERY_CANCELED is not caught by OTHERS at all).
            IF left(SQLSTATE, 2) <> 'CY' THEN
                RAISE;
            END IF;
            GET STACKED DIAGNOSTICS o_message = MESSAGE_TEXT, o_detail = PG_EXCEPTION_DETAIL;
            o_sqlstate := SQLSTATE;
        END;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- The fast way of cycles.reserve_batch, for live reserves with distinct
-- idempotency keys: the same checks as cycles.reserve, in the same order per
-- item, but the budget changes, reservations, ledger rows and idempotency
-- records of all items written with one statement per table. Items are
-- decided in array order against the balances the items before them left.
-- Every check an item fails is the helper cycles.reserve calls, raising the
-- same error; a refused item writes nothing.
-- Locks, in order: the idempotency lock of every valid item, in key byte
-- order; then the budget rows of the items still undecided after their
-- replay and tenant checks, FOR UPDATE in (scope byte order, unit). The
-- request checks run before any lock, the replays and policy lookups before
-- the budget locks: budget rows are held only for the decisions and writes.
-- Errors: as cycles.reserve_batch.
CREATE FUNCTION cycles._reserve_batch_together(p_api_key text, p_requests jsonb[], p_ctxs jsonb[])
RETURNS TABLE (o_item integer, o_response jsonb, o_sqlstate text, o_message text, o_detail text)
LANGUAGE plpgsql
-- The plan cache would otherwise plan the UPDATE of the budgets (over an
-- array of rows) again on every call; its generic plan is a primary-key
-- lookup per row.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_count       integer := cardinality(p_requests);
    v_principal   record;
    v_tenant      cycles.tenants;
    v_request     jsonb;
    v_parsed      cycles.reserve_request;
    v_items       cycles.reserve_request[];
    v_ttl_reqs    bigint[];
    v_graces      bigint[];
    v_policies    text[];
    v_hashes      bytea[];
    v_caps        jsonb[];
    v_ttls        bigint[];
    v_max_exts    integer[];
    v_match       cycles.policies;
    v_match_pols  text[];
    v_responses   jsonb[];
    v_sqlstates   text[];
    v_messages    text[];
    v_details     text[];
    v_live        boolean[];
    v_scopes      text[] := '{}';
    v_units       text[] := '{}';
    v_current     cycles.budgets[];
    v_keys        text[];
    v_scope       text;
    v_pos         integer;
    v_budgeted    text[];
    v_signals     boolean[];
    v_index       integer[];
    v_before      cycles.budgets[];
    v_after       cycles.budgets[];
    v_row         cycles.budgets;
    v_message     text;
    v_detail      text;
    v_befores     cycles.budgets[];
    v_afters      cycles.budgets[];
    v_first       integer[];
    v_last        integer[];
    v_reservation cycles.reservations;
    v_reservations cycles.reservations[];
    v_ledger      cycles.ledger_entries[];
    v_actor       jsonb;
    v_now_ms      bigint;
    v_expires_ms  bigint;
    v_keep_ms     bigint[];
    v_ids         text[];
    v_changed     boolean := false;
    v_at          integer;
BEGIN
    -- Who calls: the first check of every item, so a failure is every item's.
    BEGIN
        v_principal := cycles._runtime_principal(p_api_key, 'reservations:create');
    EXCEPTION WHEN OTHERS THEN
        IF left(SQLSTATE, 2) <> 'CY' THEN
            RAISE;
        END IF;
        GET STACKED DIAGNOSTICS o_message = MESSAGE_TEXT, o_detail = PG_EXCEPTION_DETAIL;
        o_sqlstate := SQLSTATE;
        FOR i IN 1 .. v_count LOOP
            o_item := i;
            RETURN NEXT;
        END LOOP;
        RETURN;
    END;
    v_tenant := v_principal.o_tenant;
    v_live := array_fill(true, ARRAY[v_count]);

    -- The request checks of cycles.reserve, up to its idempotency lock.
    FOR i IN 1 .. v_count LOOP
        v_request := p_requests[i];
        BEGIN
            v_parsed := cycles._parse_reserve_request(v_request, v_tenant.tenant_id);
            v_parsed.scope_path :=
                cycles._require_scope_in_filter(v_principal.o_scope_filter, v_parsed.scope_path);
            IF v_request ? 'dry_run' AND jsonb_typeof(v_request -> 'dry_run') NOT IN ('boolean', 'null') THEN
                PERFORM cycles._fail('INVALID_REQUEST', 'dry_run must be a boolean');
            END IF;
            v_items[i] := v_parsed;
            v_ttl_reqs[i] := cycles._json_int(v_request, 'ttl_ms', 1000, 86400000, NULL);
            v_graces[i] := cycles._json_int(v_request, 'grace_period_ms', 0, 60000, 5000);
            v_policies[i] := cycles._require_overage_policy(v_request ->> 'overage_policy');
            v_hashes[i] := cycles._request_hash(v_request);
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 2) <> 'CY' THEN
                RAISE;
            END IF;
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
            v_messages[i] := v_message;
            v_details[i] := v_detail;
            v_sqlstates[i] := SQLSTATE;
            v_live[i] := false;
        END;
    END LOOP;

    -- The idempotency lock and replay, then the checks cycles.reserve makes
    -- before its budget locks. Items in key byte order, so that the
    -- idempotency locks are taken in the order cycles._lock_reserve_batch
    -- takes them (the keys are distinct: outcomes do not depend on it).
    FOR v_at IN SELECT g.i FROM generate_subscripts(p_requests, 1) AS g (i)
             WHERE v_live[g.i] ORDER BY (v_items[g.i]).idempotency_key COLLATE "C" LOOP
        v_parsed := v_items[v_at];
        BEGIN
            v_responses[v_at] := cycles._idempotent_replay(
                v_tenant.tenant_id, 'reserve', v_parsed.idempotency_key, v_hashes[v_at], true);
            IF v_responses[v_at] IS NULL THEN
                v_tenant := cycles._require_tenant_open(v_tenant, true);
                v_match := cycles._match_policy(v_tenant.tenant_id, v_parsed.scope_path);
                v_caps[v_at] := cycles._policy_caps(v_match);
                v_ttls[v_at] := least(
                    coalesce(v_ttl_reqs[v_at], (v_match.reservation_ttl_override ->> 'default_ttl_ms')::bigint,
                             v_tenant.default_reservation_ttl_ms),
                    coalesce((v_match.reservation_ttl_override ->> 'max_ttl_ms')::bigint,
                             v_tenant.max_reservation_ttl_ms));
                v_max_exts[v_at] := coalesce((v_match.reservation_ttl_override ->> 'max_extensions')::integer,
                                          v_tenant.max_reservation_extensions);
                v_match_pols[v_at] := v_match.commit_overage_policy;
            ELSE
                v_live[v_at] := false;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 2) <> 'CY' THEN
                RAISE;
            END IF;
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
            v_messages[v_at] := v_message;
            v_details[v_at] := v_detail;
            v_sqlstates[v_at] := SQLSTATE;
            v_live[v_at] := false;
        END;
    END LOOP;

    -- The budget rows the items charge, locked in the global order, all
    -- before the first item is decided.
    FOR i IN 1 .. v_count LOOP
        CONTINUE WHEN NOT v_live[i];
        v_scopes := v_scopes || (v_items[i]).affected_scopes;
        v_units := v_units || array_fill((v_items[i]).unit, ARRAY[cardinality((v_items[i]).affected_scopes)]);
    END LOOP;
    v_current := cycles._lock_budget_pairs(v_tenant.tenant_id, v_scopes, v_units);
    FOR j IN 1 .. coalesce(cardinality(v_current), 0) LOOP
        v_keys[j] := (v_current[j]).scope || chr(31) || (v_current[j]).unit;
    END LOOP;

    -- Each item against the balances the items before it left, in memory.
    FOR i IN 1 .. v_count LOOP
        CONTINUE WHEN NOT v_live[i];
        v_parsed := v_items[i];
        v_before := NULL;
        v_index := '{}';
        -- The item's rows by key, in its scopes' (hierarchy) order, which is
        -- their order in v_current: not by a pass over every locked row per
        -- item, whose cost grows with the square of the batch.
        FOREACH v_scope IN ARRAY v_parsed.affected_scopes LOOP
            v_pos := array_position(v_keys, v_scope || chr(31) || v_parsed.unit);
            IF v_pos IS NOT NULL THEN
                v_before := v_before || v_current[v_pos];
                v_index := v_index || v_pos;
            END IF;
        END LOOP;
        BEGIN
            v_before := cycles._require_reservable(v_before, v_parsed);
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 2) <> 'CY' THEN
                RAISE;
            END IF;
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
            v_messages[i] := v_message;
            v_details[i] := v_detail;
            v_sqlstates[i] := SQLSTATE;
            v_live[i] := false;
            CONTINUE;
        END;

        -- The hold (cycles._hold_reserved's arithmetic, applied in memory).
        -- The rows are in scope order: the loop also gathers the budgeted
        -- scopes and whether a budget may signal, instead of a query over
        -- the rows for each.
        v_after := NULL;
        v_budgeted := '{}';
        v_signals[i] := false;
        FOR k IN 1 .. cardinality(v_before) LOOP
            v_row := v_before[k];
            v_row.reserved := v_row.reserved + v_parsed.estimate;
            v_row.remaining := v_row.remaining - v_parsed.estimate;
            v_row.updated_at := clock_timestamp();
            v_after := v_after || v_row;
            v_current[v_index[k]] := v_row;
            v_budgeted := v_budgeted || v_row.scope;
            v_signals[i] := v_signals[i] OR v_row.remaining <= 0
                OR (v_row.allocated > 0
                    AND (v_row.spent + v_row.reserved + v_row.debt)::numeric >= 0.80 * v_row.allocated);
        END LOOP;
        v_changed := true;
        -- Kept for the ledger rows: item i's rows are from v_first[i] on.
        v_first[i] := coalesce(cardinality(v_befores), 0) + 1;
        v_last[i] := v_first[i] + cardinality(v_before) - 1;
        v_befores := v_befores || v_before;
        v_afters := v_afters || v_after;

        v_now_ms := cycles._now_ms();
        v_expires_ms := v_now_ms + v_ttls[i];
        v_reservation := NULL;
        v_reservation.reservation_id := cycles._new_id('rsv_', 32);
        v_reservation.tenant_id := v_tenant.tenant_id;
        v_reservation.api_key_id := v_principal.o_key_id;
        v_reservation.idempotency_key := v_parsed.idempotency_key;
        v_reservation.subject := v_parsed.subject;
        v_reservation.action := v_parsed.action;
        v_reservation.unit := v_parsed.unit;
        v_reservation.estimate := v_parsed.estimate;
        v_reservation.scope_path := v_parsed.scope_path;
        v_reservation.affected_scopes := v_parsed.affected_scopes;
        v_reservation.budgeted_scopes := v_budgeted;
        -- Overage policy: the request's, else the matching policy's, else
        -- the deepest budget's, else the tenant's.
        v_reservation.overage_policy := coalesce(
            v_policies[i],
            v_match_pols[i],
            cycles._deepest_overage_policy(v_before),
            v_tenant.default_commit_overage_policy,
            'ALLOW_IF_AVAILABLE');
        v_reservation.status := 'ACTIVE';
        v_reservation.created_at_ms := v_now_ms;
        v_reservation.expires_at_ms := v_expires_ms;
        v_reservation.grace_period_ms := v_graces[i];
        v_reservation.ttl_ms := v_ttls[i];
        v_reservation.extension_count := 0;
        v_reservation.max_extensions := v_max_exts[i];
        v_reservation.metadata := cycles._request_object(p_requests[i], 'metadata');
        v_reservation.request_id := p_ctxs[i] ->> 'request_id';
        v_reservation.trace_id := p_ctxs[i] ->> 'trace_id';
        v_reservations := v_reservations || v_reservation;
        v_ids[i] := v_reservation.reservation_id;
        v_keep_ms[i] := v_expires_ms + v_graces[i];

        v_responses[i] := jsonb_build_object(
            'decision', CASE WHEN v_caps[i] IS NOT NULL THEN 'ALLOW_WITH_CAPS' ELSE 'ALLOW' END,
            'reservation_id', v_reservation.reservation_id,
            'affected_scopes', to_jsonb(v_parsed.affected_scopes),
            'expires_at_ms', v_expires_ms,
            'remaining_ttl_ms', greatest(0, v_expires_ms - cycles._now_ms()),
            'scope_path', v_parsed.scope_path,
            'reserved', cycles._amount_json(v_parsed.unit, v_parsed.estimate),
            'balances', cycles._balances_json(v_after))
            || CASE WHEN v_caps[i] IS NOT NULL THEN jsonb_build_object('caps', v_caps[i]) ELSE '{}'::jsonb END;
    END LOOP;

    IF v_changed THEN
        -- The budgets, once each, to the balances the last item left: the
        -- sum of the items' holds (every intermediate state passed the same
        -- checks on the way).
        UPDATE cycles.budgets AS b SET
            reserved = c.reserved,
            remaining = c.remaining,
            updated_at = c.updated_at
        FROM unnest(v_current) AS c
        WHERE b.tenant_id = v_tenant.tenant_id AND b.budget_id = c.budget_id
          AND (b.reserved, b.remaining) IS DISTINCT FROM (c.reserved, c.remaining);

        INSERT INTO cycles.reservations (
            reservation_id, tenant_id, api_key_id, idempotency_key, subject, action, unit, estimate,
            scope_path, affected_scopes, budgeted_scopes, overage_policy, status, created_at_ms,
            expires_at_ms, grace_period_ms, ttl_ms, extension_count, max_extensions, metadata,
            request_id, trace_id)
        SELECT r.reservation_id, r.tenant_id, r.api_key_id, r.idempotency_key, r.subject, r.action, r.unit,
               r.estimate, r.scope_path, r.affected_scopes, r.budgeted_scopes, r.overage_policy, r.status,
               r.created_at_ms, r.expires_at_ms, r.grace_period_ms, r.ttl_ms, r.extension_count,
               r.max_extensions, r.metadata, r.request_id, r.trace_id
        FROM unnest(v_reservations) AS r;

        -- Ledger rows in item order; an item that may signal (a threshold,
        -- exhaustion) goes through cycles._record_changes, which also emits
        -- its budget events, after the rows of the items before it.
        FOR i IN 1 .. v_count LOOP
            CONTINUE WHEN v_ids[i] IS NULL;
            v_parsed := v_items[i];
            v_before := v_befores[v_first[i] : v_last[i]];
            v_after := v_afters[v_first[i] : v_last[i]];
            v_actor := cycles._runtime_actor(p_ctxs[i], v_principal.o_key_id);
            IF v_signals[i] THEN
                IF v_ledger IS NOT NULL THEN
                    PERFORM cycles._append_ledger_rows(v_ledger);
                    v_ledger := NULL;
                END IF;
                PERFORM cycles._record_changes(v_before, v_after, 'RESERVE', v_actor, p_ctxs[i],
                    p_reservation_id => v_ids[i], p_action => v_parsed.action, p_subject => v_parsed.subject,
                    p_idempotency_key => v_parsed.idempotency_key);
                CONTINUE;
            END IF;
            CONTINUE WHEN v_parsed.estimate = 0;
            FOR k IN 1 .. cardinality(v_after) LOOP
                v_ledger := v_ledger || cycles._ledger_row(
                    (v_after[k]).budget_id, (v_after[k]).tenant_id, (v_after[k]).scope, (v_after[k]).unit,
                    'RESERVE', v_actor,
                    p_reserved_delta => v_parsed.estimate,
                    p_reservation_id => v_ids[i],
                    p_action => v_parsed.action,
                    p_subject => v_parsed.subject,
                    p_idempotency_key => v_parsed.idempotency_key,
                    p_request_id => p_ctxs[i] ->> 'request_id',
                    p_trace_id => p_ctxs[i] ->> 'trace_id');
            END LOOP;
        END LOOP;
        IF v_ledger IS NOT NULL THEN
            PERFORM cycles._append_ledger_rows(v_ledger);
        END IF;

        -- The idempotency records (cycles._idempotent_store, for all items).
        INSERT INTO cycles.idempotency_records AS r (
            tenant_id, endpoint, idempotency_key, request_hash, response, reservation_id, expires_at)
        SELECT v_tenant.tenant_id, 'reserve', (v_items[i]).idempotency_key, v_hashes[i], v_responses[i], v_ids[i],
               greatest(clock_timestamp() + interval '7 days', cycles._ms_to_timestamptz(v_keep_ms[i]))
        FROM generate_subscripts(p_requests, 1) AS i
        WHERE v_ids[i] IS NOT NULL
        ON CONFLICT ON CONSTRAINT idempotency_records_pkey DO UPDATE SET
            request_hash = excluded.request_hash,
            response = excluded.response,
            reservation_id = excluded.reservation_id,
            created_at = clock_timestamp(),
            expires_at = excluded.expires_at;
    END IF;

    FOR i IN 1 .. v_count LOOP
        o_item := i;
        o_response := v_responses[i];
        o_sqlstate := v_sqlstates[i];
        o_message := v_messages[i];
        o_detail := v_details[i];
        RETURN NEXT;
    END LOOP;
END;
$$;

-- cycles.reserve_batch: the server's group commit of concurrent
-- POST /v1/reservations made with one API key (so of one tenant).
--
-- Each item has exactly the outcome cycles.reserve(p_api_key, p_requests[i],
-- p_ctxs[i]) has when the items run one after the other in array order: a
-- refused item (any error of class CY raised by cycles._fail:
-- BUDGET_EXCEEDED, IDEMPOTENCY_MISMATCH, INVALID_REQUEST, ...) changes
-- nothing and is returned as its SQLSTATE, message and DETAIL, exactly as
-- the single call raises them; the other items go on. Any other error (lock
-- or statement timeout, deadlock, serialization failure, out of resources, a
-- bug) is raised: the whole batch rolls back and nothing in it is done, as
-- for a single call that fails that way.
--
-- Live reserves with distinct keys take the fast way
-- (cycles._reserve_batch_together); a batch with a dry run or a repeated key
-- runs each item as a cycles.reserve call (cycles._reserve_batch_each).
--
-- Locks, in order (either way): the idempotency lock of every item's key, in
-- key byte order; then the budget rows of the items' derived scopes in their
-- units, FOR UPDATE in (scope byte order, unit); all before the first item
-- is decided (see the top of this file).
--
-- Returns one row per item, in order: o_item (1-based), then o_response
-- (the reserve's response) or o_sqlstate, o_message, o_detail.
--
-- Errors, in precedence order: INVALID_REQUEST (p_requests and p_ctxs of
-- different lengths, or more than 64 items: every item of the general way
-- keeps a subtransaction id until the commit, and PostgreSQL caches 64 per
-- backend).
--
-- Invariants: those of cycles.reserve, per item.
CREATE FUNCTION cycles.reserve_batch(p_api_key text, p_requests jsonb[], p_ctxs jsonb[])
RETURNS TABLE (o_item integer, o_response jsonb, o_sqlstate text, o_message text, o_detail text)
LANGUAGE plpgsql
AS $$
DECLARE
    v_count integer := coalesce(cardinality(p_requests), 0);
BEGIN
    IF v_count <> coalesce(cardinality(p_ctxs), 0) THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'p_requests and p_ctxs must have the same length');
    END IF;
    IF v_count > 64 THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('a batch holds at most 64 requests, got %s', v_count));
    END IF;
    IF v_count = 0 THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM unnest(p_requests) AS r (request)
               WHERE jsonb_typeof(r.request) = 'object'
                 AND coalesce(r.request -> 'dry_run', 'false') NOT IN ('false'::jsonb, 'null'::jsonb))
       OR (SELECT count(k.key) <> count(DISTINCT k.key)
           FROM unnest(p_requests) AS r (request), LATERAL (SELECT r.request ->> 'idempotency_key' AS key) AS k) THEN
        RETURN QUERY SELECT * FROM cycles._reserve_batch_each(p_api_key, p_requests, p_ctxs);
    ELSE
        RETURN QUERY SELECT * FROM cycles._reserve_batch_together(p_api_key, p_requests, p_ctxs);
    END IF;
END;
$$;
