"""cycles.commit: check order, the three overage policies, debt, over-limit,
grace, and what is stored on the reservation."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from tests.sql.runtime_fixtures import (
    age_reservation,
    assert_ledger_consistent,
    budget,
    call,
    create_key,
    events,
    raises,
    reservation,
    reserve_request,
    set_tenant_status,
    standard_fixture,
)

W1 = "tenant:acme/workspace:w1"
OD = "tenant:acme/workspace:od"


def commit_request(amount: int, unit: str = "USD_MICROCENTS", **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": uuid.uuid4().hex, "actual": {"unit": unit, "amount": amount}, **extra}


def reserve(db: psycopg.Connection, key: str, amount: int, **extra: Any) -> str:
    rid: str = call(db, "reserve", key, reserve_request(amount, **extra))["reservation_id"]
    return rid


def test_commit_under_estimate_releases_the_rest(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = reserve(db, fx.ka, 1000)
    response = call(db, "commit", fx.ka, rid, commit_request(
        600, metrics={"tokens_input": 10, "custom": {"x": 1}}, metadata={"run": "42"}))
    assert set(response) == {"status", "charged", "released", "balances"}
    assert response["status"] == "COMMITTED"
    assert response["charged"] == {"unit": "USD_MICROCENTS", "amount": 600}
    assert response["released"] == {"unit": "USD_MICROCENTS", "amount": 400}
    for scope in ("tenant:acme", W1):
        state = budget(db, scope)
        assert (state["spent"], state["reserved"]) == (600, 0)
    w1 = next(b for b in response["balances"] if b["scope"] == W1)
    assert w1["remaining"]["amount"] == 99_400
    row = reservation(db, rid)
    assert row["status"] == "COMMITTED"
    assert row["committed"] == 600
    assert row["committed_metadata"] == {"run": "42"}
    assert row["metrics"] == {"tokens_input": 10, "custom": {"x": 1}}
    assert row["finalized_at_ms"] is not None
    assert_ledger_consistent(db)


def test_commit_replay_and_mismatch(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = reserve(db, fx.ka, 1000)
    request = commit_request(600)
    first = call(db, "commit", fx.ka, rid, request)
    ledger_rows = db.execute("SELECT count(*) FROM cycles.ledger_entries").fetchone()
    event_rows = len(events(db))
    assert call(db, "commit", fx.ka, rid, request) == first
    assert budget(db, W1)["spent"] == 600
    assert db.execute("SELECT count(*) FROM cycles.ledger_entries").fetchone() == ledger_rows
    assert len(events(db)) == event_rows
    with raises("IDEMPOTENCY_MISMATCH"):
        call(db, "commit", fx.ka, rid, {**request, "actual": {"unit": "USD_MICROCENTS", "amount": 700}})
    # On the committed reservation: a new key, a release, an extend.
    with raises("RESERVATION_FINALIZED"):
        call(db, "commit", fx.ka, rid, commit_request(600))
    with raises("RESERVATION_FINALIZED"):
        call(db, "release", fx.ka, rid, {"idempotency_key": "r1"})
    with raises("RESERVATION_FINALIZED"):
        call(db, "extend", fx.ka, rid, {"idempotency_key": "e1", "extend_by_ms": 1000})
    assert budget(db, W1)["spent"] == 600
    assert_ledger_consistent(db)


def test_commit_at_exactly_the_estimate_has_no_released(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = reserve(db, fx.ka, 500)
    response = call(db, "commit", fx.ka, rid, commit_request(500))
    assert "released" not in response
    assert response["charged"]["amount"] == 500
    assert events(db, "reservation.commit_overage") == []


def test_unknown_foreign_and_wrong_unit(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = reserve(db, fx.ka, 1000)
    with raises("NOT_FOUND"):
        call(db, "commit", fx.ka, "rsv_" + "0" * 32, commit_request(1))
    with raises("FORBIDDEN"):
        call(db, "commit", fx.kb, rid, commit_request(1))
    with raises("UNIT_MISMATCH"):
        call(db, "commit", fx.ka, rid, commit_request(1, unit="TOKENS"))
    with raises("FORBIDDEN"):
        call(db, "commit", create_key(db, "acme", ["reservations:create"]), rid, commit_request(1))
    with raises("INVALID_REQUEST"):
        call(db, "commit", fx.ka, rid, {"idempotency_key": "x"})
    assert reservation(db, rid)["status"] == "ACTIVE"
    assert budget(db, W1)["reserved"] == 1000


def test_reject_policy_refuses_overage_and_stays_active(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = reserve(db, fx.ka, 100, overage_policy="REJECT")
    with raises("BUDGET_EXCEEDED"):
        call(db, "commit", fx.ka, rid, commit_request(150))
    assert reservation(db, rid)["status"] == "ACTIVE"
    assert budget(db, W1)["reserved"] == 100
    assert call(db, "commit", fx.ka, rid, commit_request(100))["charged"]["amount"] == 100
    assert_ledger_consistent(db)


def test_allow_if_available_charges_overage_in_full_when_covered(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = reserve(db, fx.ka, 100)
    response = call(db, "commit", fx.ka, rid, commit_request(150))
    assert response["charged"]["amount"] == 150
    assert "released" not in response
    assert budget(db, W1)["spent"] == 150
    overage = events(db, "reservation.commit_overage")
    assert len(overage) == 1
    assert overage[0]["data"] == {
        "reservation_id": rid, "scope": W1, "unit": "USD_MICROCENTS", "estimated_amount": 100,
        "actual_amount": 150, "overage": 50, "overage_policy": "ALLOW_IF_AVAILABLE", "debt_incurred": 0}
    assert_ledger_consistent(db)


def test_allow_if_available_caps_and_marks_only_short_scopes(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    # Drain w1 to 30 remaining.
    call(db, "commit", fx.ka, reserve(db, fx.ka, 99_970), commit_request(99_970))
    rid = reserve(db, fx.ka, 10)
    assert budget(db, W1)["remaining"] == 20
    response = call(db, "commit", fx.ka, rid, commit_request(100))
    assert response["charged"]["amount"] == 30
    w1 = budget(db, W1)
    assert (w1["remaining"], w1["debt"], w1["is_over_limit"]) == (0, 0, True)
    assert budget(db, "tenant:acme")["is_over_limit"] is False
    assert [e["scope"] for e in events(db, "budget.over_limit_entered")] == [W1]
    with raises("OVERDRAFT_LIMIT_EXCEEDED"):
        call(db, "reserve", fx.ka, reserve_request(1))
    assert call(db, "decide", fx.ka, reserve_request(1))["reason_code"] == "OVERDRAFT_LIMIT_EXCEEDED"
    assert_ledger_consistent(db)


def test_overdraft_creates_debt_within_the_limit(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = reserve(db, fx.ka, 1000, subject={"workspace": "od"}, overage_policy="ALLOW_WITH_OVERDRAFT")
    response = call(db, "commit", fx.ka, rid, commit_request(1400))
    assert response["charged"]["amount"] == 1400
    od = budget(db, OD)
    assert (od["spent"], od["debt"], od["remaining"], od["is_over_limit"]) == (1000, 400, -400, False)
    assert budget(db, "tenant:acme")["spent"] == 1400
    assert budget(db, "tenant:acme")["debt"] == 0
    od_balance = next(b for b in response["balances"] if b["scope"] == OD)
    assert od_balance["remaining"] == {"unit": "USD_MICROCENTS", "amount": -400}
    debt = events(db, "budget.debt_incurred")
    assert [(e["scope"], e["data"]["debt_incurred"], e["data"]["total_debt"]) for e in debt] == [(OD, 400, 400)]
    assert events(db, "reservation.commit_overage")[0]["data"]["debt_incurred"] == 400
    # The scope has debt within a non-zero limit: new reservations fail on remaining.
    with raises("BUDGET_EXCEEDED"):
        call(db, "reserve", fx.ka, reserve_request(1, subject={"workspace": "od"}))
    assert_ledger_consistent(db)


def test_overdraft_beyond_the_limit_changes_nothing(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = reserve(db, fx.ka, 1000, subject={"workspace": "od"}, overage_policy="ALLOW_WITH_OVERDRAFT")
    with raises("OVERDRAFT_LIMIT_EXCEEDED") as caught:
        call(db, "commit", fx.ka, rid, commit_request(1600))
    assert caught[0].details["scope"] == OD
    assert reservation(db, rid)["status"] == "ACTIVE"
    od = budget(db, OD)
    assert (od["spent"], od["debt"], od["reserved"]) == (0, 0, 1000)
    assert_ledger_consistent(db)


def test_overdraft_policy_on_a_scope_without_limit_behaves_as_allow_if_available(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    call(db, "commit", fx.ka, reserve(db, fx.ka, 99_990), commit_request(99_990))
    rid = reserve(db, fx.ka, 5, overage_policy="ALLOW_WITH_OVERDRAFT")
    response = call(db, "commit", fx.ka, rid, commit_request(50))
    assert response["charged"]["amount"] == 10
    w1 = budget(db, W1)
    assert (w1["debt"], w1["remaining"], w1["is_over_limit"]) == (0, 0, True)
    assert_ledger_consistent(db)


def test_commit_in_grace_is_accepted_and_after_grace_is_expired(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    in_grace = reserve(db, fx.ka, 100)
    age_reservation(db, in_grace, 62_000)  # 2 s past expiry, grace 5 s
    assert call(db, "commit", fx.ka, in_grace, commit_request(100))["status"] == "COMMITTED"
    late = reserve(db, fx.ka, 100)
    age_reservation(db, late, 66_000)  # past expiry + grace, sweeper not run
    with raises("RESERVATION_EXPIRED"):
        call(db, "commit", fx.ka, late, commit_request(100))
    assert reservation(db, late)["status"] == "ACTIVE"
    assert_ledger_consistent(db)


def test_commit_huge_actual_is_never_a_raw_error(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = reserve(db, fx.ka, 10, subject={"workspace": "od"}, overage_policy="ALLOW_WITH_OVERDRAFT")
    with raises("OVERDRAFT_LIMIT_EXCEEDED"):
        call(db, "commit", fx.ka, rid, commit_request(2**63 - 1))
    rid2 = reserve(db, fx.ka, 10)
    response = call(db, "commit", fx.ka, rid2, commit_request(2**63 - 1))
    assert response["charged"]["amount"] == 10 + 99_990
    assert_ledger_consistent(db)


def test_tenant_status_on_commit(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = reserve(db, fx.ka, 100)
    done = reserve(db, fx.ka, 100)
    request = commit_request(100)
    first = call(db, "commit", fx.ka, done, request)
    set_tenant_status(db, "acme", "SUSPENDED")
    assert call(db, "commit", fx.ka, rid, commit_request(50))["charged"]["amount"] == 50
    set_tenant_status(db, "acme", "CLOSED")
    rid3_row = db.execute("SELECT count(*) FROM cycles.reservations").fetchone()
    assert rid3_row == (2,)
    assert call(db, "commit", fx.ka, done, request) == first
    with raises("TENANT_CLOSED"):
        # Closed beats FINALIZED on a non-replay.
        call(db, "commit", fx.ka, done, commit_request(100))
    assert_ledger_consistent(db)


def test_commit_of_zero_reservation(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = reserve(db, fx.ka, 0)
    response = call(db, "commit", fx.ka, rid, commit_request(0))
    assert response["charged"]["amount"] == 0 and "released" not in response
    assert_ledger_consistent(db)
