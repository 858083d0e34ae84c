"""cycles.extend: new expiry from the current one, clamping, limits, no grace."""

from __future__ import annotations

import psycopg

from tests.sql.runtime_fixtures import (
    age_reservation,
    call,
    create_budget,
    create_key,
    create_tenant,
    raises,
    reservation,
    reserve_request,
    set_tenant_status,
    standard_fixture,
)


def test_extend_moves_expiry_from_the_current_one(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    created = call(db, "reserve", fx.ka, reserve_request(10))
    rid = created["reservation_id"]
    request = {"idempotency_key": "e1", "extend_by_ms": 30_000}
    response = call(db, "extend", fx.ka, rid, request)
    assert set(response) == {"status", "expires_at_ms", "remaining_ttl_ms", "balances"}
    assert response["status"] == "ACTIVE"
    assert response["expires_at_ms"] == created["expires_at_ms"] + 30_000
    assert 60_000 < response["remaining_ttl_ms"] <= 90_000
    assert [b["reserved"]["amount"] for b in response["balances"]] == [10, 10]
    row = reservation(db, rid)
    assert (row["expires_at_ms"], row["extension_count"]) == (response["expires_at_ms"], 1)
    replay = call(db, "extend", fx.ka, rid, request)
    assert replay["expires_at_ms"] == response["expires_at_ms"]
    assert reservation(db, rid)["extension_count"] == 1
    with raises("IDEMPOTENCY_MISMATCH"):
        call(db, "extend", fx.ka, rid, {"idempotency_key": "e1", "extend_by_ms": 1000})
    # The reserve's replay record lives at least as long as the reservation.
    keep = db.execute(
        "SELECT expires_at >= cycles._ms_to_timestamptz(%s) FROM cycles.idempotency_records"
        " WHERE endpoint = 'reserve'", (response["expires_at_ms"],)).fetchone()
    assert keep == (True,)


def test_extension_limit(db: psycopg.Connection) -> None:
    create_tenant(db, "delta", max_reservation_extensions=2)
    create_budget(db, "tenant:delta", 100)
    key = create_key(db, "delta")
    rid = call(db, "reserve", key, reserve_request(1, subject={"tenant": "delta"}))["reservation_id"]
    for n in range(2):
        call(db, "extend", key, rid, {"idempotency_key": f"e{n}", "extend_by_ms": 1000})
    with raises("MAX_EXTENSIONS_EXCEEDED"):
        call(db, "extend", key, rid, {"idempotency_key": "e3", "extend_by_ms": 1000})
    assert reservation(db, rid)["extension_count"] == 2


def test_extend_is_clamped_to_the_tenant_max_ttl_from_now(db: psycopg.Connection) -> None:
    create_tenant(db, "delta", max_reservation_ttl_ms=10_000, default_reservation_ttl_ms=10_000)
    create_budget(db, "tenant:delta", 100)
    key = create_key(db, "delta")
    created = call(db, "reserve", key, reserve_request(1, subject={"tenant": "delta"}))
    response = call(db, "extend", key, created["reservation_id"], {"idempotency_key": "e", "extend_by_ms": 86_400_000})
    assert created["expires_at_ms"] <= response["expires_at_ms"] <= created["expires_at_ms"] + 1_000
    assert response["remaining_ttl_ms"] <= 10_000


def test_extend_has_no_grace(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = call(db, "reserve", fx.ka, reserve_request(10, ttl_ms=1000, grace_period_ms=5000))["reservation_id"]
    age_reservation(db, rid, 2000)
    with raises("RESERVATION_EXPIRED"):
        call(db, "extend", fx.ka, rid, {"idempotency_key": "e", "extend_by_ms": 1000})
    # Commit still works within grace.
    commit = call(db, "commit", fx.ka, rid, {"idempotency_key": "c", "actual": {"unit": "USD_MICROCENTS",
                                                                               "amount": 5}})
    assert commit["status"] == "COMMITTED"


def test_extend_errors(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = call(db, "reserve", fx.ka, reserve_request(10))["reservation_id"]
    with raises("INVALID_REQUEST"):
        call(db, "extend", fx.ka, rid, {"idempotency_key": "e", "extend_by_ms": 0})
    with raises("INVALID_REQUEST"):
        call(db, "extend", fx.ka, rid, {"idempotency_key": "e"})
    with raises("NOT_FOUND"):
        call(db, "extend", fx.ka, "rsv_nope", {"idempotency_key": "e", "extend_by_ms": 1})
    with raises("FORBIDDEN"):
        call(db, "extend", fx.kb, rid, {"idempotency_key": "e", "extend_by_ms": 1})
    with raises("FORBIDDEN"):
        call(db, "extend", create_key(db, "acme", ["reservations:create"]), rid,
             {"idempotency_key": "e", "extend_by_ms": 1})
    set_tenant_status(db, "acme", "SUSPENDED")
    assert call(db, "extend", fx.ka, rid, {"idempotency_key": "s", "extend_by_ms": 1})["status"] == "ACTIVE"
    set_tenant_status(db, "acme", "CLOSED")
    with raises("TENANT_CLOSED"):
        call(db, "extend", fx.ka, rid, {"idempotency_key": "e", "extend_by_ms": 1})
    assert reservation(db, rid)["extension_count"] == 1


def test_extend_replay_after_settlement_reports_zero_ttl(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = call(db, "reserve", fx.ka, reserve_request(10))["reservation_id"]
    request = {"idempotency_key": "e", "extend_by_ms": 1000}
    first = call(db, "extend", fx.ka, rid, request)
    call(db, "release", fx.ka, rid, {"idempotency_key": "r"})
    replay = call(db, "extend", fx.ka, rid, request)
    assert replay["remaining_ttl_ms"] == 0
    assert {k: v for k, v in replay.items() if k != "remaining_ttl_ms"} == \
        {k: v for k, v in first.items() if k != "remaining_ttl_ms"}
