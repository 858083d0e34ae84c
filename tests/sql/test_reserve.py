"""cycles.reserve (live and dry_run) and cycles.decide: scope derivation,
checks and their precedence, tenant status, the response shape."""

from __future__ import annotations

import re

import psycopg
import pytest

from tests.sql.runtime_fixtures import (
    assert_ledger_consistent,
    budget,
    call,
    create_budget,
    create_key,
    create_tenant,
    events,
    raises,
    reservation,
    reserve_request,
    set_budget,
    set_tenant_status,
    standard_fixture,
)

W1 = "tenant:acme/workspace:w1"


def test_reserve_allows_and_charges_every_budgeted_scope(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    before = db.execute("SELECT cycles._now_ms()").fetchone()[0]  # type: ignore[index]
    response = call(db, "reserve", fx.ka, reserve_request(1000))

    assert set(response) == {"decision", "reservation_id", "affected_scopes", "expires_at_ms",
                             "remaining_ttl_ms", "scope_path", "reserved", "balances"}
    assert response["decision"] == "ALLOW"
    assert re.fullmatch(r"rsv_[0-9a-f]{32}", response["reservation_id"])
    assert response["affected_scopes"] == ["tenant:acme", W1]
    assert response["scope_path"] == W1
    assert response["reserved"] == {"unit": "USD_MICROCENTS", "amount": 1000}
    assert before + 60000 <= response["expires_at_ms"] <= before + 61000
    assert 0 < response["remaining_ttl_ms"] <= 60000
    balances = {b["scope"]: b for b in response["balances"]}
    assert set(balances) == {"tenant:acme", W1}
    assert balances[W1] == {
        "scope": W1, "scope_path": W1,
        "remaining": {"unit": "USD_MICROCENTS", "amount": 99_000},
        "reserved": {"unit": "USD_MICROCENTS", "amount": 1000},
        "spent": {"unit": "USD_MICROCENTS", "amount": 0},
        "allocated": {"unit": "USD_MICROCENTS", "amount": 100_000},
        "debt": {"unit": "USD_MICROCENTS", "amount": 0},
        "overdraft_limit": {"unit": "USD_MICROCENTS", "amount": 0},
        "is_over_limit": False,
    }
    assert budget(db, "tenant:acme")["reserved"] == 1000
    assert budget(db, "tenant:acme")["remaining"] == 999_000
    row = reservation(db, response["reservation_id"])
    assert row["status"] == "ACTIVE"
    assert row["budgeted_scopes"] == ["tenant:acme", W1]
    assert row["overage_policy"] == "ALLOW_IF_AVAILABLE"
    assert row["grace_period_ms"] == 5000
    assert row["max_extensions"] == 10
    assert_ledger_consistent(db)


def test_unbudgeted_scopes_are_listed_but_not_charged(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    response = call(db, "reserve", fx.ka, reserve_request(
        10, subject={"tenant": "acme", "workspace": "w1", "agent": "nobudget"}))
    assert response["affected_scopes"] == ["tenant:acme", W1, W1 + "/agent:nobudget"]
    assert [b["scope"] for b in response["balances"]] == ["tenant:acme", W1]
    assert budget(db, W1)["reserved"] == 10
    assert_ledger_consistent(db)


def test_scope_derivation_lowercases_skips_gaps_and_anchors_the_key_tenant(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    create_budget(db, "tenant:acme/app:bot/toolset:web.search", 500)
    subject = {"app": "Bot", "toolset": "Web.Search", "dimensions": {"cost_center": "R&D"}}
    response = call(db, "reserve", fx.ka, reserve_request(5, subject=subject))
    assert response["scope_path"] == "tenant:acme/app:bot/toolset:web.search"
    assert response["affected_scopes"] == [
        "tenant:acme", "tenant:acme/app:bot", "tenant:acme/app:bot/toolset:web.search"]
    assert reservation(db, response["reservation_id"])["subject"] == subject
    assert budget(db, "tenant:acme/app:bot/toolset:web.search")["reserved"] == 5
    assert_ledger_consistent(db)


def test_subject_of_another_tenant_is_forbidden(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    with raises("FORBIDDEN"):
        call(db, "reserve", fx.ka, reserve_request(1, subject={"tenant": "beta"}))
    # Case-insensitive match of the own tenant is fine.
    assert call(db, "reserve", fx.ka, reserve_request(1, subject={"tenant": "ACME"}))["decision"] == "ALLOW"


@pytest.mark.parametrize("subject", [{}, {"dimensions": {"a": "b"}}, {"workspace": "has space"},
                                     {"workspace": 5}, {"agent": "x" * 129}])
def test_bad_subjects_are_invalid(db: psycopg.Connection, subject: dict[str, object]) -> None:
    fx = standard_fixture(db)
    with raises("INVALID_REQUEST"):
        call(db, "reserve", fx.ka, reserve_request(1, subject=subject))
    assert budget(db, "tenant:acme")["reserved"] == 0


@pytest.mark.parametrize("change", [
    {"estimate": {"unit": "USD_MICROCENTS", "amount": -1}},
    {"estimate": {"unit": "USD_MICROCENTS", "amount": 1.5}},
    {"estimate": {"unit": "USD_MICROCENTS", "amount": 2**63}},
    {"estimate": {"unit": "EUR", "amount": 1}},
    {"ttl_ms": 999}, {"ttl_ms": 86_400_001}, {"grace_period_ms": 60_001},
    {"overage_policy": "NOPE"}, {"idempotency_key": ""}, {"idempotency_key": "k" * 257},
    {"action": {"kind": "k" * 65, "name": "n"}}, {"action": {"kind": "llm", "name": "n", "tags": ["t"] * 11}},
    {"action": {"kind": "llm"}}, {"dry_run": "yes"}, {"metadata": [1]},
])
def test_invalid_requests_change_nothing(db: psycopg.Connection, change: dict[str, object]) -> None:
    fx = standard_fixture(db)
    with raises("INVALID_REQUEST"):
        call(db, "reserve", fx.ka, {**reserve_request(1), **change})
    assert db.execute("SELECT count(*) FROM cycles.reservations").fetchone() == (0,)


def test_max_int64_estimate_is_budget_exceeded(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    with raises("BUDGET_EXCEEDED") as caught:
        call(db, "reserve", fx.ka, reserve_request(2**63 - 1))
    assert caught[0].details["scope"] == "tenant:acme"


def test_budget_exceeded_names_the_scope_and_locks_nothing_partially(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    with raises("BUDGET_EXCEEDED") as caught:
        call(db, "reserve", fx.ka, reserve_request(100_001))
    assert caught[0].details == {
        "scope": W1, "unit": "USD_MICROCENTS", "remaining": 100_000, "requested": 100_001,
        "debt": 0, "overdraft_limit": 0}
    assert budget(db, "tenant:acme")["reserved"] == 0
    assert budget(db, W1)["reserved"] == 0
    assert_ledger_consistent(db)


def test_zero_estimate_is_allowed(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    response = call(db, "reserve", fx.ka, reserve_request(0))
    assert response["reserved"]["amount"] == 0
    assert_ledger_consistent(db)


@pytest.mark.parametrize(("top", "bottom", "expected"), [
    ({"status": "FROZEN"}, {"status": "CLOSED", "closed_at": "now()"}, "BUDGET_FROZEN"),
    ({"is_over_limit": True}, {"status": "FROZEN"}, "OVERDRAFT_LIMIT_EXCEEDED"),
    ({}, {"status": "CLOSED"}, "BUDGET_CLOSED"),
    ({}, {"is_over_limit": True}, "OVERDRAFT_LIMIT_EXCEEDED"),
])
def test_checks_run_scope_by_scope_from_the_top(
        db: psycopg.Connection, top: dict[str, object], bottom: dict[str, object], expected: str) -> None:
    fx = standard_fixture(db)
    for scope, change in (("tenant:acme", top), (W1, bottom)):
        if change.get("status") == "CLOSED":
            db.execute("UPDATE cycles.budgets SET status = 'CLOSED', closed_at = clock_timestamp() WHERE scope = %s",
                       (scope,))
        elif change:
            set_budget(db, scope, **{k: v for k, v in change.items() if k != "closed_at"})
    with raises(expected) as caught:
        call(db, "reserve", fx.ka, reserve_request(1))
    assert caught[0].details["scope"] == ("tenant:acme" if top else W1)
    # decide and dry_run deny for the same reason, without a 409.
    decided = call(db, "decide", fx.ka, reserve_request(1))
    assert decided == {"decision": "DENY", "reason_code": expected, "affected_scopes": ["tenant:acme", W1]}
    dry = call(db, "reserve", fx.ka, reserve_request(1, dry_run=True))
    assert dry["decision"] == "DENY" and dry["reason_code"] == expected


def test_over_limit_beats_debt_and_debt_blocks_only_without_overdraft(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    # Debt on a scope without overdraft limit: DEBT_OUTSTANDING.
    db.execute("UPDATE cycles.budgets SET debt = 10, remaining = remaining - 10 WHERE scope = %s", (W1,))
    with raises("DEBT_OUTSTANDING"):
        call(db, "reserve", fx.ka, reserve_request(1))
    set_budget(db, W1, is_over_limit=True)
    with raises("OVERDRAFT_LIMIT_EXCEEDED"):
        call(db, "reserve", fx.ka, reserve_request(1))
    # Debt within a non-zero limit: only the remaining check applies.
    od = "tenant:acme/workspace:od"
    db.execute("UPDATE cycles.budgets SET debt = 100, remaining = remaining - 100 WHERE scope = %s", (od,))
    response = call(db, "reserve", fx.ka, reserve_request(5, subject={"workspace": "od"}))
    assert response["decision"] == "ALLOW"


def test_unit_mismatch_and_not_found(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    with raises("UNIT_MISMATCH") as caught:
        call(db, "reserve", fx.ka, reserve_request(1, unit="TOKENS"))
    assert caught[0].details["requested_unit"] == "TOKENS"
    assert "USD_MICROCENTS" in caught[0].details["expected_units"]
    assert caught[0].details["scope"] in ("tenant:acme", W1)
    with raises("UNIT_MISMATCH"):
        call(db, "decide", fx.ka, reserve_request(1, unit="TOKENS"))
    with raises("UNIT_MISMATCH"):
        call(db, "reserve", fx.ka, reserve_request(1, unit="TOKENS", dry_run=True))

    with raises("NOT_FOUND"):
        call(db, "reserve", fx.kc, reserve_request(1, subject={"tenant": "gamma"}))
    assert call(db, "decide", fx.kc, reserve_request(1, subject={"tenant": "gamma"}))["reason_code"] == \
        "BUDGET_NOT_FOUND"
    dry = call(db, "reserve", fx.kc, reserve_request(1, subject={"tenant": "gamma"}, dry_run=True))
    assert dry == {"decision": "DENY", "reason_code": "BUDGET_NOT_FOUND", "affected_scopes": ["tenant:gamma"],
                   "scope_path": "tenant:gamma"}


def test_dry_run_evaluates_without_changing_anything(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    response = call(db, "reserve", fx.ka, reserve_request(1000, dry_run=True))
    assert response["decision"] == "ALLOW"
    assert not {"reservation_id", "expires_at_ms", "remaining_ttl_ms", "reason_code"} & set(response)
    assert response["reserved"] == {"unit": "USD_MICROCENTS", "amount": 1000}
    assert [b["remaining"]["amount"] for b in response["balances"]] == [1_000_000, 100_000]
    denied = call(db, "reserve", fx.ka, reserve_request(100_001, dry_run=True))
    assert denied["decision"] == "DENY" and denied["reason_code"] == "BUDGET_EXCEEDED"
    assert "reservation_id" not in denied
    assert db.execute("SELECT count(*) FROM cycles.reservations").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM cycles.ledger_entries WHERE operation <> 'CREATE'").fetchone() == (0,)
    assert budget(db, W1)["reserved"] == 0
    denial_events = events(db, "reservation.denied")
    assert len(denial_events) == 1
    assert denial_events[0]["data"]["reason_code"] == "BUDGET_EXCEEDED"
    assert denial_events[0]["data"]["requested_amount"] == 100_001
    assert denial_events[0]["data"]["scope"] == W1


def test_decide_allows_and_denies_without_mutation(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    allowed = call(db, "decide", fx.ka, reserve_request(10))
    assert allowed == {"decision": "ALLOW", "affected_scopes": ["tenant:acme", W1]}
    request = reserve_request(100_001)
    denied = call(db, "decide", fx.ka, request)
    assert denied["decision"] == "DENY" and denied["reason_code"] == "BUDGET_EXCEEDED"
    # A replay returns the identical body and writes no second event.
    assert call(db, "decide", fx.ka, request) == denied
    assert len(events(db, "reservation.denied")) == 1
    assert budget(db, W1)["reserved"] == 0
    assert db.execute("SELECT count(*) FROM cycles.reservations").fetchone() == (0,)


def test_closed_tenant(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    earlier = reserve_request(10)
    first = call(db, "reserve", fx.ka, earlier)
    set_tenant_status(db, "acme", "CLOSED")
    with raises("TENANT_CLOSED"):
        call(db, "reserve", fx.ka, reserve_request(10))
    # A replay of an earlier success still replays.
    assert call(db, "reserve", fx.ka, earlier)["reservation_id"] == first["reservation_id"]
    assert call(db, "decide", fx.ka, reserve_request(10))["reason_code"] == "TENANT_CLOSED"
    dry = call(db, "reserve", fx.ka, reserve_request(10, dry_run=True))
    assert dry["decision"] == "DENY" and dry["reason_code"] == "TENANT_CLOSED"


def test_suspended_tenant_refuses_new_reservations(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    set_tenant_status(db, "acme", "SUSPENDED")
    with raises("FORBIDDEN") as caught:
        call(db, "reserve", fx.ka, reserve_request(10))
    assert caught[0].details["reason"] == "TENANT_SUSPENDED"
    assert call(db, "decide", fx.ka, reserve_request(10))["reason_code"] == "TENANT_SUSPENDED"


def test_ttl_defaults_and_caps_come_from_the_tenant(db: psycopg.Connection) -> None:
    create_tenant(db, "delta", default_reservation_ttl_ms=20_000, max_reservation_ttl_ms=30_000,
                  max_reservation_extensions=3, default_commit_overage_policy="REJECT")
    create_budget(db, "tenant:delta", 1000)
    key = create_key(db, "delta")
    subject = {"tenant": "delta"}
    defaulted = reservation(db, call(db, "reserve", key, reserve_request(1, subject=subject))["reservation_id"])
    assert defaulted["ttl_ms"] == 20_000
    assert defaulted["expires_at_ms"] - defaulted["created_at_ms"] == 20_000
    assert defaulted["max_extensions"] == 3
    assert defaulted["overage_policy"] == "REJECT"
    capped = call(db, "reserve", key, reserve_request(1, subject=subject, ttl_ms=600_000, grace_period_ms=0,
                                                      overage_policy="ALLOW_WITH_OVERDRAFT"))
    row = reservation(db, capped["reservation_id"])
    assert row["ttl_ms"] == 30_000
    assert row["grace_period_ms"] == 0
    assert row["overage_policy"] == "ALLOW_WITH_OVERDRAFT"
    assert capped["remaining_ttl_ms"] <= 30_000


def test_overage_policy_falls_back_to_the_deepest_budget(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    set_budget(db, "tenant:acme", commit_overage_policy="REJECT")
    set_budget(db, W1, commit_overage_policy="ALLOW_WITH_OVERDRAFT")
    response = call(db, "reserve", fx.ka, reserve_request(1))
    assert reservation(db, response["reservation_id"])["overage_policy"] == "ALLOW_WITH_OVERDRAFT"


def test_permissions_and_authentication(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    reader = create_key(db, "acme", ["balances:read"])
    with raises("FORBIDDEN"):
        call(db, "reserve", reader, reserve_request(1))
    with raises("FORBIDDEN"):
        call(db, "decide", reader, reserve_request(1))
    with raises("UNAUTHORIZED"):
        call(db, "reserve", "cyc_live_bogus", reserve_request(1))
    with raises("UNAUTHORIZED"):
        call(db, "reserve", None, reserve_request(1))
    assert budget(db, "tenant:acme")["reserved"] == 0
    assert fx.ka


def test_reserve_emits_budget_signals_once(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    call(db, "reserve", fx.ka, reserve_request(85_000))
    crossed = [e for e in events(db, "budget.threshold_crossed") if e["scope"] == W1]
    assert [float(e["data"]["threshold"]) for e in crossed] == [0.8]
    call(db, "reserve", fx.ka, reserve_request(15_000))
    crossed = [e for e in events(db, "budget.threshold_crossed") if e["scope"] == W1]
    assert [float(e["data"]["threshold"]) for e in crossed] == [0.8, 0.95, 1.0]
    exhausted = events(db, "budget.exhausted")
    assert [e["scope"] for e in exhausted] == [W1]
    assert exhausted[0]["actor"]["type"] == "api_key"
    assert exhausted[0]["data"]["remaining"] == 0
    assert_ledger_consistent(db)
