"""cycles.create_event: direct debits under each overage policy."""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg

from tests.sql.runtime_fixtures import (
    assert_ledger_consistent,
    budget,
    call,
    create_key,
    raises,
    set_budget,
    set_tenant_status,
    standard_fixture,
)

W1 = "tenant:acme/workspace:w1"
OD = "tenant:acme/workspace:od"


def event_request(amount: int, unit: str = "USD_MICROCENTS", subject: dict[str, Any] | None = None,
                  **extra: Any) -> dict[str, Any]:
    return {
        "idempotency_key": uuid.uuid4().hex,
        "subject": subject or {"tenant": "acme", "workspace": "w1"},
        "action": {"kind": "tool.search", "name": "web"},
        "actual": {"unit": unit, "amount": amount},
        **extra,
    }


def test_event_applies_once(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    request = event_request(500, client_time_ms=1, metrics={"latency_ms": 3}, metadata={"a": "b"})
    response = call(db, "create_event", fx.ka, request)
    assert set(response) == {"status", "event_id", "balances"}
    assert response["status"] == "APPLIED"
    assert re.fullmatch(r"evt_[0-9a-f]{32}", response["event_id"])
    assert budget(db, W1)["spent"] == 500
    assert budget(db, "tenant:acme")["spent"] == 500
    assert call(db, "create_event", fx.ka, request) == response
    assert budget(db, W1)["spent"] == 500
    with raises("IDEMPOTENCY_MISMATCH"):
        call(db, "create_event", fx.ka, {**request, "actual": {"unit": "USD_MICROCENTS", "amount": 501}})
    rows = db.execute("SELECT count(*) FROM cycles.ledger_entries WHERE operation = 'EVENT' AND event_id = %s",
                      (response["event_id"],)).fetchone()
    assert rows == (2,)
    assert_ledger_consistent(db)


def test_event_reject_policy(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    with raises("BUDGET_EXCEEDED") as caught:
        call(db, "create_event", fx.ka, event_request(100_001, overage_policy="REJECT"))
    assert caught[0].details["scope"] == W1
    assert budget(db, W1)["spent"] == 0


def test_event_allow_if_available_caps(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    response = call(db, "create_event", fx.ka, event_request(100_050))
    assert response["charged"] == {"unit": "USD_MICROCENTS", "amount": 100_000}
    w1 = budget(db, W1)
    assert (w1["spent"], w1["remaining"], w1["is_over_limit"], w1["debt"]) == (100_000, 0, True, 0)
    assert budget(db, "tenant:acme")["is_over_limit"] is False
    # Over-limit and debt do not block events.
    again = call(db, "create_event", fx.ka, event_request(10))
    assert again["charged"]["amount"] == 0
    assert_ledger_consistent(db)


def test_event_overdraft(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    subject = {"workspace": "od"}
    response = call(db, "create_event", fx.ka, event_request(1_400, subject=subject,
                                                             overage_policy="ALLOW_WITH_OVERDRAFT"))
    assert "charged" not in response
    od = budget(db, OD)
    assert (od["spent"], od["debt"], od["remaining"]) == (1_000, 400, -400)
    with raises("OVERDRAFT_LIMIT_EXCEEDED"):
        call(db, "create_event", fx.ka, event_request(101, subject=subject, overage_policy="ALLOW_WITH_OVERDRAFT"))
    assert budget(db, OD)["debt"] == 400
    assert_ledger_consistent(db)


def test_event_errors(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    with raises("UNIT_MISMATCH"):
        call(db, "create_event", fx.ka, event_request(1, unit="TOKENS"))
    with raises("NOT_FOUND"):
        call(db, "create_event", fx.kc, event_request(1, subject={"tenant": "gamma"}))
    with raises("FORBIDDEN"):
        call(db, "create_event", fx.ka, event_request(1, subject={"tenant": "beta"}))
    with raises("FORBIDDEN"):
        call(db, "create_event", create_key(db, "acme", ["reservations:create"]), event_request(1))
    set_budget(db, W1, status="FROZEN")
    with raises("BUDGET_FROZEN"):
        call(db, "create_event", fx.ka, event_request(1))
    set_budget(db, W1, status="ACTIVE")
    set_tenant_status(db, "acme", "SUSPENDED")
    with raises("FORBIDDEN") as caught:
        call(db, "create_event", fx.ka, event_request(1))
    assert caught[0].details["reason"] == "TENANT_SUSPENDED"
    set_tenant_status(db, "acme", "CLOSED")
    with raises("TENANT_CLOSED"):
        call(db, "create_event", fx.ka, event_request(1))
    assert budget(db, W1)["spent"] == 0
    assert_ledger_consistent(db)
