-- Settle in batches: concurrent commits and releases of one API key applied
-- in one transaction, each with its own outcome.
--
-- Why: a settlement's own work is small; a transaction per request pays the
-- commit (WAL flush) and PL/pgSQL's per-transaction set-up each time, and
-- settlements that charge one shared budget take its row lock one after the
-- other, each holding it until its commit. Applied together, all of that is
-- paid once per batch.
--
-- Locks of a batch, in order: the reservation row of every item (of the
-- key's tenant), FOR UPDATE in reservation id byte order; then the budget
-- rows of every one of them that is ACTIVE, in its unit, FOR UPDATE in
-- (scope byte order, unit), the global lock order. That is every lock the
-- items can take (a superset: an item refused before its locks, or a
-- repeated id already settled by an earlier item, takes fewer), and a single
-- settlement (cycles.commit, cycles.release, cycles.extend) takes the same
-- kinds in the same order: its reservation row, then its budget rows in
-- scope order. Settlements take no idempotency advisory lock (the
-- reservation row serialises every settlement of it, same-key retries
-- included). So with reservation rows ordered before budget rows, every
-- transaction waits only for locks that sort after all those it holds, and
-- there is no cycle: not with single settlements or other batches, not with
-- the expiry sweeper (cycles.expire_due: reservation rows SKIP LOCKED, then
-- budget rows in the global order), nor with reserves and reserve batches
-- (idempotency advisory locks, which no settlement takes, then budget rows
-- in the global order), nor with a tenant close (its reservation rows by id,
-- then its budget rows in the global order; reservation ids are rsv_ and
-- fixed-length lower-case hex, ordered alike by every collation). Taken item
-- by item instead, item 2 could lock a budget row that sorts before one item
-- 1 holds (sibling scopes of a tenant without a tenant-level budget), or a
-- reservation row after having locked budget rows, and deadlock.

-- Every lock the items of a settle batch can take (see above); nothing for a
-- key that does not authenticate (every item is then refused before it
-- locks anything). Ids of another tenant or of no reservation lock nothing.
CREATE FUNCTION cycles._lock_settle_batch(p_api_key text, p_reservation_ids text[]) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_principal   record;
    v_tenant_id   text;
    v_id          text;
    v_status      text;
    v_budgeted    text[];
    v_unit        text;
    v_scopes      text[] := '{}';
    v_units       text[] := '{}';
BEGIN
    BEGIN
        v_principal := cycles._runtime_principal(p_api_key, NULL);
        v_tenant_id := (v_principal.o_tenant).tenant_id;
    EXCEPTION WHEN OTHERS THEN
        IF left(SQLSTATE, 2) <> 'CY' THEN
            RAISE;
        END IF;
        RETURN;
    END;
    -- One primary-key lookup per id, in id byte order: the rows are locked
    -- in the order the statements run.
    FOR v_id IN
        SELECT DISTINCT r.id COLLATE "C" FROM unnest(p_reservation_ids) AS r (id)
        WHERE r.id IS NOT NULL ORDER BY 1
    LOOP
        SELECT r.status, r.budgeted_scopes, r.unit INTO v_status, v_budgeted, v_unit
        FROM cycles.reservations AS r
        WHERE r.tenant_id = v_tenant_id AND r.reservation_id = v_id
        FOR UPDATE;
        -- Only an ACTIVE reservation's settlement locks budget rows (and a
        -- settled one never becomes ACTIVE again).
        IF FOUND AND v_status = 'ACTIVE' THEN
            v_scopes := v_scopes || v_budgeted;
            v_units := v_units || array_fill(v_unit, ARRAY[coalesce(cardinality(v_budgeted), 0)]);
        END IF;
    END LOOP;
    PERFORM cycles._lock_budget_pairs(v_tenant_id, v_scopes, v_units);
END;
$$;

-- cycles.settle_batch: the server's group commit of concurrent
-- POST /v1/reservations/{id}/commit and .../release made with one API key
-- (so of one tenant).
--
-- Item i is p_operations[i] ('commit' or 'release') of reservation
-- p_reservation_ids[i] with p_requests[i] and p_ctxs[i], and has exactly the
-- outcome cycles.commit or cycles.release has when the items run one after
-- the other in array order: each is that call, in a subtransaction of its
-- own. A refused item (any error of class CY raised by cycles._fail:
-- RESERVATION_FINALIZED, NOT_FOUND, IDEMPOTENCY_MISMATCH, BUDGET_EXCEEDED,
-- ...) changes nothing and is returned as its SQLSTATE, message and DETAIL,
-- exactly as the single call raises them; the other items go on. A repeated
-- reservation id or idempotency key behaves as the same calls made one after
-- another (a later item replays, mismatches or finds the reservation
-- finalized). Any other error (lock or statement timeout, deadlock,
-- serialization failure, out of resources, a bug) is raised: the whole batch
-- rolls back and nothing in it is done, as for a single call that fails
-- that way.
--
-- Locks, in order: the reservation rows of all items, FOR UPDATE in
-- reservation id byte order; then the budget rows of the ACTIVE ones, FOR
-- UPDATE in (scope byte order, unit); all before the first item runs (see
-- the top of this file). No advisory locks.
--
-- Returns one row per item, in order: o_item (1-based), then o_response
-- (the call's response) or o_sqlstate, o_message, o_detail.
--
-- Errors, in precedence order: INVALID_REQUEST (arrays of different
-- lengths; more than 64 items: every item keeps a subtransaction id until
-- the commit, and PostgreSQL caches 64 per backend; an operation other than
-- commit or release; no API key: an admin's release on a tenant's behalf is
-- not batched).
--
-- Invariants: those of cycles.commit and cycles.release, per item.
CREATE FUNCTION cycles.settle_batch(
    p_api_key         text,
    p_operations      text[],
    p_reservation_ids text[],
    p_requests        jsonb[],
    p_ctxs            jsonb[]
) RETURNS TABLE (o_item integer, o_response jsonb, o_sqlstate text, o_message text, o_detail text)
LANGUAGE plpgsql
AS $$
DECLARE
    v_count integer := coalesce(cardinality(p_operations), 0);
BEGIN
    IF v_count <> coalesce(cardinality(p_reservation_ids), 0) OR v_count <> coalesce(cardinality(p_requests), 0)
       OR v_count <> coalesce(cardinality(p_ctxs), 0) THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            'p_operations, p_reservation_ids, p_requests and p_ctxs must have the same length');
    END IF;
    IF v_count > 64 THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('a batch holds at most 64 requests, got %s', v_count));
    END IF;
    IF EXISTS (SELECT FROM unnest(p_operations) AS o (operation)
               WHERE o.operation IS NULL OR o.operation NOT IN ('commit', 'release')) THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'every operation must be commit or release');
    END IF;
    IF p_api_key IS NULL THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'a settle batch needs an API key');
    END IF;
    IF v_count = 0 THEN
        RETURN;
    END IF;

    PERFORM cycles._lock_settle_batch(p_api_key, p_reservation_ids);

    FOR i IN 1 .. v_count LOOP
        o_item := i;
        o_response := NULL;
        o_sqlstate := NULL;
        o_message := NULL;
        o_detail := NULL;
        BEGIN
            IF p_operations[i] = 'commit' THEN
                o_response := cycles.commit(p_api_key => p_api_key, p_reservation_id => p_reservation_ids[i],
                                            p_request => p_requests[i], p_ctx => p_ctxs[i]);
            ELSE
                o_response := cycles.release(p_api_key => p_api_key, p_reservation_id => p_reservation_ids[i],
                                             p_request => p_requests[i], p_ctx => p_ctxs[i]);
            END IF;
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
