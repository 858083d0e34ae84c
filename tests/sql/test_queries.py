"""cycles.balances, cycles.list_reservations, cycles.get_reservation and
cycles.introspect."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.sql.runtime_fixtures import (
    call,
    create_budget,
    create_key,
    raises,
    reserve_request,
    standard_fixture,
)

W1 = "tenant:acme/workspace:w1"
REQUIRED_SUMMARY = {"reservation_id", "status", "subject", "action", "reserved", "created_at_ms",
                    "expires_at_ms", "scope_path", "affected_scopes"}


def test_balances_filters_by_segment_and_pages(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    create_budget(db, "tenant:acme/workspace:w1/agent:a", 10)
    create_budget(db, "tenant:acme/workspace:w1", 10, unit="TOKENS")
    all_acme = call(db, "balances", fx.ka, {"tenant": "acme"})
    assert [b["scope"] for b in all_acme["balances"]] == [
        "tenant:acme", "tenant:acme/workspace:od", W1, W1, W1 + "/agent:a"]
    assert all_acme["has_more"] is False and "next_cursor" not in all_acme
    w1 = call(db, "balances", fx.ka, {"workspace": "W1", "unit": "USD_MICROCENTS"})
    assert [b["scope"] for b in w1["balances"]] == [W1, W1 + "/agent:a"]
    assert set(w1["balances"][0]) == {"scope", "scope_path", "remaining", "reserved", "spent", "allocated",
                                      "debt", "overdraft_limit", "is_over_limit"}
    seen: list[tuple[str, str]] = []
    query: dict[str, object] = {"tenant": "acme", "limit": 2}
    while True:
        page = call(db, "balances", fx.ka, query)
        seen += [(b["scope"], b["remaining"]["unit"]) for b in page["balances"]]
        if not page["has_more"]:
            break
        assert len(page["balances"]) == 2
        query = {"tenant": "acme", "limit": 2, "cursor": page["next_cursor"]}
    assert len(seen) == 5 == len(set(seen))
    prefixed = call(db, "balances", fx.ka, {"scope_prefix": "tenant:acme/workspace:w1"})
    assert {b["scope"] for b in prefixed["balances"]} == {W1, W1 + "/agent:a"}


def test_balances_errors(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    with raises("FORBIDDEN"):
        call(db, "balances", fx.ka, {"tenant": "beta"})
    with raises("INVALID_REQUEST"):
        call(db, "balances", fx.ka, {})
    with raises("INVALID_REQUEST"):
        call(db, "balances", fx.ka, {"tenant": "acme", "limit": 0})
    with raises("INVALID_REQUEST"):
        call(db, "balances", fx.ka, {"tenant": "acme", "limit": 201})
    with raises("INVALID_REQUEST"):
        call(db, "balances", fx.ka, {"tenant": "acme", "cursor": "garbage!"})
    with raises("FORBIDDEN"):
        call(db, "balances", create_key(db, "acme", ["reservations:create"]), {"tenant": "acme"})
    page = call(db, "balances", fx.ka, {"tenant": "acme", "limit": 1})
    with raises("INVALID_REQUEST"):
        call(db, "balances", fx.ka, {"workspace": "w1", "limit": 1, "cursor": page["next_cursor"]})


def test_get_reservation_detail(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    subject = {"tenant": "acme", "workspace": "w1", "dimensions": {"team": "ml"}}
    rid = call(db, "reserve", fx.ka, reserve_request(1000, key="k-1", subject=subject,
                                                     metadata={"run": 7}))["reservation_id"]
    active = call(db, "get_reservation", fx.ka, rid)
    assert set(active) == REQUIRED_SUMMARY | {"idempotency_key", "metadata"}
    call(db, "commit", fx.ka, rid, {"idempotency_key": "c", "actual": {"unit": "USD_MICROCENTS", "amount": 600},
                                    "metadata": {"done": True}})
    detail = call(db, "get_reservation", fx.ka, rid)
    assert REQUIRED_SUMMARY | {"committed", "finalized_at_ms", "idempotency_key", "metadata",
                               "committed_metadata"} == set(detail)
    assert detail["status"] == "COMMITTED"
    assert detail["subject"] == subject
    assert detail["committed"] == {"unit": "USD_MICROCENTS", "amount": 600}
    assert detail["reserved"] == {"unit": "USD_MICROCENTS", "amount": 1000}
    assert detail["metadata"] == {"run": 7}
    assert detail["committed_metadata"] == {"done": True}
    assert detail["idempotency_key"] == "k-1"
    with raises("FORBIDDEN"):
        call(db, "get_reservation", fx.kb, rid)
    with raises("NOT_FOUND"):
        call(db, "get_reservation", fx.ka, "rsv_none")
    assert call(db, "get_reservation", None, rid, ctx={"actor_type": "admin_on_behalf_of"}) == detail


def make_reservations(db: psycopg.Connection, key: str, count: int) -> list[str]:
    return [call(db, "reserve", key, reserve_request(10 * (n + 1), key=f"k{n}"))["reservation_id"]
            for n in range(count)]


def test_list_filters_and_pages(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    ids = make_reservations(db, fx.ka, 5)
    call(db, "reserve", fx.kb, reserve_request(1, key="k0", subject={"tenant": "beta"}))
    call(db, "release", fx.ka, ids[0], {"idempotency_key": "r"})
    by_key = call(db, "list_reservations", fx.ka, {"idempotency_key": "k0"})
    assert [r["reservation_id"] for r in by_key["reservations"]] == [ids[0]]
    assert set(by_key["reservations"][0]) == REQUIRED_SUMMARY | {"idempotency_key", "finalized_at_ms"}
    active = call(db, "list_reservations", fx.ka, {"status": "ACTIVE"})
    assert {r["reservation_id"] for r in active["reservations"]} == set(ids[1:])

    seen: list[str] = []
    query: dict[str, object] = {"limit": 2}
    pages = 0
    while True:
        page = call(db, "list_reservations", fx.ka, query)
        pages += 1
        seen += [r["reservation_id"] for r in page["reservations"]]
        if not page["has_more"]:
            break
        query = {"limit": 2, "cursor": page["next_cursor"]}
    assert pages == 3 and sorted(seen) == sorted(ids) and len(set(seen)) == 5

    by_amount = call(db, "list_reservations", fx.ka, {"sort_by": "reserved", "sort_dir": "asc", "limit": 3})
    assert [r["reserved"]["amount"] for r in by_amount["reservations"]] == [10, 20, 30]
    rest = call(db, "list_reservations", fx.ka, {"sort_by": "reserved", "sort_dir": "asc", "limit": 3,
                                                 "cursor": by_amount["next_cursor"]})
    assert [r["reserved"]["amount"] for r in rest["reservations"]] == [40, 50]
    assert rest["has_more"] is False
    with raises("INVALID_REQUEST"):
        call(db, "list_reservations", fx.ka, {"sort_by": "reserved", "sort_dir": "asc", "limit": 3,
                                              "from": "2000-01-01T00:00:00Z", "cursor": by_amount["next_cursor"]})

    for sort_by in ("reservation_id", "scope_path", "status", "expires_at_ms"):
        for sort_dir in ("asc", "desc"):
            ordered: list[str] = []
            query = {"sort_by": sort_by, "sort_dir": sort_dir, "limit": 2}
            while True:
                page = call(db, "list_reservations", fx.ka, query)
                ordered += [r["reservation_id"] for r in page["reservations"]]
                if not page["has_more"]:
                    break
                query = {"sort_by": sort_by, "sort_dir": sort_dir, "limit": 2, "cursor": page["next_cursor"]}
            assert sorted(ordered) == sorted(ids), (sort_by, sort_dir)
            if sort_by == "reservation_id":
                assert ordered == sorted(ids, reverse=sort_dir == "desc")


def test_list_windows_and_include(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = call(db, "reserve", fx.ka, reserve_request(10, metadata={"m": 1}))["reservation_id"]
    assert len(call(db, "list_reservations", fx.ka, {"from": "", "to": ""})["reservations"]) == 1
    assert call(db, "list_reservations", fx.ka, {"from": "2999-01-01T00:00:00Z"})["reservations"] == []
    assert len(call(db, "list_reservations", fx.ka, {"to": "2999-01-01"})["reservations"]) == 1
    assert call(db, "list_reservations", fx.ka, {"finalized_from": "2000-01-01T00:00:00Z"})["reservations"] == []
    with_meta = call(db, "list_reservations", fx.ka, {"include": "metadata,,x"})
    assert with_meta["reservations"][0]["metadata"] == {"m": 1}
    assert "metadata" not in call(db, "list_reservations", fx.ka, {})["reservations"][0]
    assert call(db, "list_reservations", fx.ka, {"workspace": "W1"})["reservations"][0]["reservation_id"] == rid
    assert call(db, "list_reservations", fx.ka, {"workspace": "other"})["reservations"] == []


@pytest.mark.parametrize("query", [
    {"from": "2024-02-01T00:00:00Z", "to": "2024-01-01T00:00:00Z"},
    {"expires_from": "2024-02-01", "expires_to": "2024-01-01"},
    {"from": "bad"}, {"to": "now"}, {"from": "2024-13-45"}, {"sort_by": "bogus"}, {"sort_dir": "up"},
    {"status": "DONE"}, {"limit": 0}, {"limit": 201}, {"cursor": "bm90IGpzb24"},
])
def test_list_rejects_bad_queries(db: psycopg.Connection, query: dict[str, object]) -> None:
    fx = standard_fixture(db)
    with raises("INVALID_REQUEST"):
        call(db, "list_reservations", fx.ka, query)


def test_list_tenancy(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    make_reservations(db, fx.ka, 2)
    with raises("FORBIDDEN"):
        call(db, "list_reservations", fx.ka, {"tenant": "beta"})
    assert len(call(db, "list_reservations", fx.ka, {"tenant": "acme"})["reservations"]) == 2
    with raises("INVALID_REQUEST") as caught:
        call(db, "list_reservations", None, {}, ctx={"actor_type": "admin_on_behalf_of"})
    assert caught[0].message == "tenant query parameter is required when using admin key authentication"
    admin = call(db, "list_reservations", None, {"tenant": "acme"}, ctx={"actor_type": "admin_on_behalf_of"})
    assert len(admin["reservations"]) == 2
    assert call(db, "list_reservations", None, {"tenant": "beta"},
                ctx={"actor_type": "admin_on_behalf_of"})["reservations"] == []


def test_introspect(db: psycopg.Connection) -> None:
    standard_fixture(db)
    key = create_key(db, "acme", ["reservations:create", "budgets:read", "admin:write"])
    result = call_introspect(db, key)
    assert result["authenticated"] is True and result["auth_type"] == "tenant"
    assert result["tenant_id"] == "acme" and result["key_id"].startswith("key_")
    assert result["permissions"] == ["reservations:create", "budgets:read", "admin:write"]
    caps = result["capabilities"]
    assert caps["view_budgets"] and caps["view_reservations"] and caps["manage_reservations"]
    assert caps["manage_budgets"] and caps["manage_webhooks"]
    assert not caps["view_events"] and not caps["view_policies"]
    assert not any(caps[k] for k in ("view_overview", "view_audit", "view_tenants", "view_api_keys",
                                     "manage_tenants", "manage_api_keys"))
    admin = call_introspect(db, None)
    assert admin["auth_type"] == "admin" and admin["permissions"] == ["*"]
    assert all(admin["capabilities"].values()) and "tenant_id" not in admin
    with raises("UNAUTHORIZED"):
        call_introspect(db, "cyc_live_nope")


def call_introspect(db: psycopg.Connection, key: str | None) -> dict[str, Any]:
    row = db.execute("SELECT cycles.introspect(%s)", (key,)).fetchone()
    assert row is not None
    result: dict[str, Any] = row[0]
    return result
