-- Release: give a reservation's estimate back unused.

-- cycles.release: POST /v1/reservations/{reservation_id}/release.
--
-- Returns the full estimate to the reserved scopes and marks the reservation
-- RELEASED. Accepted until expires_at_ms + grace_period_ms. A NULL API key is
-- an admin force-release (the caller verified the admin key): allowed only
-- with p_ctx actor_type admin_on_behalf_of, on any tenant's reservation, and
-- recorded as that actor on the ledger rows.
--
-- Locks: the reservation row FOR UPDATE, then its budget rows FOR UPDATE in
-- scope byte order.
--
-- Errors, in precedence order: UNAUTHORIZED; FORBIDDEN (permission
-- reservations:release); INVALID_REQUEST; NOT_FOUND; FORBIDDEN (another
-- tenant's reservation, or its scope outside the key's scope_filter);
-- IDEMPOTENCY_MISMATCH; TENANT_CLOSED;
-- RESERVATION_EXPIRED (status EXPIRED); RESERVATION_FINALIZED;
-- RESERVATION_EXPIRED (past grace).
--
-- Invariants: one RELEASE ledger row per budget (reserved -estimate); a
-- replay changes nothing.
CREATE FUNCTION cycles.release(
    p_api_key text, p_reservation_id text, p_request jsonb, p_ctx jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_key_id      text;
    v_tenant_id   text;
    v_filter      text[];
    v_locked      record;
    v_reservation cycles.reservations;
    v_key         text;
    v_reason      text;
    v_hash        bytea;
    v_response    jsonb;
    v_before      cycles.budgets[];
    v_after       cycles.budgets[];
BEGIN
    IF p_api_key IS NULL THEN
        PERFORM cycles._require_admin_context(p_ctx, ARRAY['admin_on_behalf_of']);
    ELSE
        SELECT p.o_key_id, (p.o_tenant).tenant_id, p.o_scope_filter INTO v_key_id, v_tenant_id, v_filter
        FROM cycles._runtime_principal(p_api_key, 'reservations:release') AS p;
    END IF;
    v_key := cycles._require_idempotency_key(p_request);
    IF p_request ? 'reason' AND p_request -> 'reason' <> 'null'::jsonb AND (
            jsonb_typeof(p_request -> 'reason') <> 'string' OR char_length(p_request ->> 'reason') > 256) THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'reason must be a string of at most 256 characters');
    END IF;
    v_reason := p_request ->> 'reason';

    v_locked := cycles._lock_reservation(p_reservation_id, v_tenant_id);
    v_reservation := v_locked.o_reservation;
    v_reservation.scope_path := cycles._require_scope_in_filter(v_filter, v_reservation.scope_path);

    v_hash := cycles._request_hash(p_request, p_reservation_id);
    v_response := cycles._idempotent_replay(v_reservation.tenant_id, 'release:' || p_reservation_id, v_key,
                                            v_hash, false);
    IF v_response IS NOT NULL THEN
        PERFORM cycles._audit_on_behalf(p_api_key, p_ctx, 'releaseReservation', p_reservation_id,
                                        v_reservation.tenant_id);
        RETURN v_response;
    END IF;

    v_locked.o_tenant := cycles._require_tenant_open(v_locked.o_tenant, false);
    PERFORM cycles._require_settleable(v_reservation, true);

    v_before := cycles._lock_budgets(v_reservation.budgeted_scopes, v_reservation.unit);
    v_after := cycles._apply_charge(v_before, v_reservation.estimate, 0, 0, 0, v_reservation.overage_policy);

    UPDATE cycles.reservations AS r SET
        status = 'RELEASED',
        released = v_reservation.estimate,
        release_reason = v_reason,
        finalized_at_ms = cycles._now_ms()
    WHERE r.tenant_id = v_reservation.tenant_id AND r.reservation_id = p_reservation_id;

    PERFORM cycles._record_changes(v_before, v_after, 'RELEASE', cycles._runtime_actor(p_ctx, v_key_id), p_ctx,
        p_reservation_id => p_reservation_id, p_action => v_reservation.action,
        p_subject => v_reservation.subject, p_idempotency_key => v_key, p_reason => v_reason);

    v_response := jsonb_build_object(
        'status', 'RELEASED',
        'released', cycles._amount_json(v_reservation.unit, v_reservation.estimate),
        'balances', cycles._balances_json(v_after));
    PERFORM cycles._idempotent_store(v_reservation.tenant_id, 'release:' || p_reservation_id, v_key, v_hash,
                                     v_response, p_reservation_id);
    PERFORM cycles._audit_on_behalf(p_api_key, p_ctx, 'releaseReservation', p_reservation_id,
                                    v_reservation.tenant_id);
    RETURN v_response;
END;
$$;
