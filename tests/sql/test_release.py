"""cycles.release: the full estimate goes back; replays; admin force-release;
finalized and expired reservations."""

from __future__ import annotations

import psycopg

from tests.sql.runtime_fixtures import (
    age_reservation,
    assert_ledger_consistent,
    budget,
    call,
    create_key,
    raises,
    reservation,
    reserve_request,
    set_tenant_status,
    standard_fixture,
)

W1 = "tenant:acme/workspace:w1"


def test_release_restores_balances_and_replays(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = call(db, "reserve", fx.ka, reserve_request(1000))["reservation_id"]
    request = {"idempotency_key": "rel-1", "reason": "not needed"}
    response = call(db, "release", fx.ka, rid, request)
    assert set(response) == {"status", "released", "balances"}
    assert response["status"] == "RELEASED"
    assert response["released"] == {"unit": "USD_MICROCENTS", "amount": 1000}
    assert [b["remaining"]["amount"] for b in response["balances"]] == [1_000_000, 100_000]
    assert budget(db, W1)["reserved"] == 0
    row = reservation(db, rid)
    assert (row["status"], row["released"], row["release_reason"]) == ("RELEASED", 1000, "not needed")
    assert row["finalized_at_ms"] is not None
    assert call(db, "release", fx.ka, rid, request) == response
    with raises("IDEMPOTENCY_MISMATCH"):
        call(db, "release", fx.ka, rid, {"idempotency_key": "rel-1", "reason": "other"})
    with raises("RESERVATION_FINALIZED"):
        call(db, "release", fx.ka, rid, {"idempotency_key": "rel-2"})
    with raises("RESERVATION_FINALIZED"):
        call(db, "commit", fx.ka, rid, {"idempotency_key": "c", "actual": {"unit": "USD_MICROCENTS", "amount": 1}})
    ledger = db.execute(
        "SELECT scope, reserved_delta, actor_type FROM cycles.ledger_entries WHERE operation = 'RELEASE'"
        " ORDER BY scope").fetchall()
    assert ledger == [("tenant:acme", -1000, "api_key"), (W1, -1000, "api_key")]
    assert_ledger_consistent(db)


def test_release_errors(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = call(db, "reserve", fx.ka, reserve_request(10))["reservation_id"]
    with raises("NOT_FOUND"):
        call(db, "release", fx.ka, "rsv_missing", {"idempotency_key": "a"})
    with raises("FORBIDDEN"):
        call(db, "release", fx.kb, rid, {"idempotency_key": "a"})
    with raises("FORBIDDEN"):
        call(db, "release", create_key(db, "acme", ["reservations:commit"]), rid, {"idempotency_key": "a"})
    with raises("INVALID_REQUEST"):
        call(db, "release", fx.ka, rid, {"idempotency_key": "a", "reason": "x" * 257})
    assert reservation(db, rid)["status"] == "ACTIVE"


def test_admin_force_release(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = call(db, "reserve", fx.ka, reserve_request(10))["reservation_id"]
    with raises("UNAUTHORIZED"):
        call(db, "release", None, rid, {"idempotency_key": "a"}, ctx={"actor_type": "api_key"})
    with raises("UNAUTHORIZED"):
        call(db, "release", None, rid, {"idempotency_key": "a"})
    response = call(db, "release", None, rid, {"idempotency_key": "a"},
                    ctx={"actor_type": "admin_on_behalf_of", "request_id": "req-1"})
    assert response["status"] == "RELEASED"
    actors = db.execute(
        "SELECT DISTINCT actor_type, request_id FROM cycles.ledger_entries WHERE operation = 'RELEASE'").fetchall()
    assert actors == [("admin_on_behalf_of", "req-1")]
    assert_ledger_consistent(db)


def test_release_after_grace_is_expired(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = call(db, "reserve", fx.ka, reserve_request(10, grace_period_ms=0))["reservation_id"]
    age_reservation(db, rid, 61_000)
    with raises("RESERVATION_EXPIRED"):
        call(db, "release", fx.ka, rid, {"idempotency_key": "a"})
    assert budget(db, W1)["reserved"] == 10


def test_release_on_suspended_and_closed_tenant(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = call(db, "reserve", fx.ka, reserve_request(10))["reservation_id"]
    other = call(db, "reserve", fx.ka, reserve_request(10))["reservation_id"]
    set_tenant_status(db, "acme", "SUSPENDED")
    assert call(db, "release", fx.ka, rid, {"idempotency_key": "a"})["status"] == "RELEASED"
    set_tenant_status(db, "acme", "CLOSED")
    with raises("TENANT_CLOSED"):
        call(db, "release", fx.ka, other, {"idempotency_key": "b"})
    assert call(db, "release", fx.ka, rid, {"idempotency_key": "a"})["status"] == "RELEASED"
    assert_ledger_consistent(db)


def test_release_of_zero_estimate(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = call(db, "reserve", fx.ka, reserve_request(0))["reservation_id"]
    assert call(db, "release", fx.ka, rid, {"idempotency_key": "a"})["released"]["amount"] == 0
    assert_ledger_consistent(db)
