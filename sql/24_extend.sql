-- Extend: keep a reservation alive longer.

-- cycles.extend: POST /v1/reservations/{reservation_id}/extend.
--
-- Moves expires_at_ms to its current value + extend_by_ms, but never more
-- than the max TTL ahead of now (the matching policy's max_ttl_ms, else the
-- tenant's max_reservation_ttl_ms) (and never earlier
-- than it was); the returned expires_at_ms is authoritative. Allowed only
-- while ACTIVE and not past expires_at_ms (no grace), at most the
-- reservation's max_extensions times. No balance changes. The reserve's
-- idempotency record is kept at least as long as the reservation can live.
--
-- Locks: the reservation row FOR UPDATE.
--
-- Errors, in precedence order: UNAUTHORIZED; FORBIDDEN (permission
-- reservations:extend); INVALID_REQUEST; NOT_FOUND; FORBIDDEN (another
-- tenant's reservation, or its scope outside the key's scope_filter);
-- IDEMPOTENCY_MISMATCH; TENANT_CLOSED;
-- RESERVATION_EXPIRED (status EXPIRED); RESERVATION_FINALIZED;
-- RESERVATION_EXPIRED (past expires_at_ms); MAX_EXTENSIONS_EXCEEDED.
CREATE FUNCTION cycles.extend(
    p_api_key text, p_reservation_id text, p_request jsonb, p_ctx jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_principal   record;
    v_locked      record;
    v_reservation cycles.reservations;
    v_key         text;
    v_extend_by   bigint;
    v_hash        bytea;
    v_response    jsonb;
    v_now_ms      bigint;
    v_expires_ms  bigint;
BEGIN
    v_principal := cycles._runtime_principal(p_api_key, 'reservations:extend');
    v_key := cycles._require_idempotency_key(p_request);
    IF p_request -> 'extend_by_ms' IS NULL OR p_request -> 'extend_by_ms' = 'null'::jsonb THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'extend_by_ms is required');
    END IF;
    v_extend_by := cycles._json_int(p_request, 'extend_by_ms', 1, 86400000, NULL);
    PERFORM cycles._request_object(p_request, 'metadata');

    v_locked := cycles._lock_reservation(p_reservation_id, (v_principal.o_tenant).tenant_id);
    v_reservation := v_locked.o_reservation;
    v_reservation.scope_path :=
        cycles._require_scope_in_filter(v_principal.o_scope_filter, v_reservation.scope_path);

    v_hash := cycles._request_hash(p_request, p_reservation_id);
    v_response := cycles._idempotent_replay(v_reservation.tenant_id, 'extend:' || p_reservation_id, v_key,
                                            v_hash, false);
    IF v_response IS NOT NULL THEN
        RETURN v_response;
    END IF;

    v_locked.o_tenant := cycles._require_tenant_open(v_locked.o_tenant, false);
    PERFORM cycles._require_settleable(v_reservation, false);
    IF v_reservation.extension_count >= v_reservation.max_extensions THEN
        PERFORM cycles._fail('MAX_EXTENSIONS_EXCEEDED',
            format('reservation %s has already been extended %s times, the maximum',
                   p_reservation_id, v_reservation.extension_count),
            jsonb_build_object('reservation_id', p_reservation_id,
                               'max_extensions', v_reservation.max_extensions));
    END IF;

    v_now_ms := cycles._now_ms();
    v_expires_ms := greatest(v_reservation.expires_at_ms,
                             least(v_reservation.expires_at_ms + v_extend_by,
                                   v_now_ms + coalesce(
                                       ((cycles._match_policy(v_reservation.tenant_id, v_reservation.scope_path))
                                           .reservation_ttl_override ->> 'max_ttl_ms')::bigint,
                                       (v_locked.o_tenant).max_reservation_ttl_ms)));
    UPDATE cycles.reservations AS r SET
        expires_at_ms = v_expires_ms,
        extension_count = r.extension_count + 1
    WHERE r.tenant_id = v_reservation.tenant_id AND r.reservation_id = p_reservation_id;

    -- The reserve's replay must outlive the reservation it names.
    UPDATE cycles.idempotency_records AS i SET
        expires_at = cycles._ms_to_timestamptz(v_expires_ms + v_reservation.grace_period_ms)
    WHERE i.tenant_id = v_reservation.tenant_id AND i.endpoint = 'reserve'
      AND i.idempotency_key = v_reservation.idempotency_key
      AND i.expires_at < cycles._ms_to_timestamptz(v_expires_ms + v_reservation.grace_period_ms);

    v_response := jsonb_build_object(
        'status', 'ACTIVE',
        'expires_at_ms', v_expires_ms,
        'remaining_ttl_ms', greatest(0, v_expires_ms - cycles._now_ms()),
        'balances', cycles._balances_json(
            cycles._read_budgets(v_reservation.budgeted_scopes, v_reservation.unit)));
    PERFORM cycles._idempotent_store(v_reservation.tenant_id, 'extend:' || p_reservation_id, v_key, v_hash,
                                     v_response, p_reservation_id, v_expires_ms + v_reservation.grace_period_ms);
    RETURN v_response;
END;
$$;
