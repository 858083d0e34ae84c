"""Budgets over REST: create, list filters and cursor, lookup, patch, freeze,
unfreeze and fund, with the admin key and with a tenant key."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.admin.helpers import (
    admin_headers,
    create_budget,
    create_key,
    create_tenant,
    expect_error,
    one_audit_row,
)
from tests.api.conftest import ApiServer
from tests.api.provision import USD, Conn


def _amount(value: int) -> dict[str, Any]:
    return {"amount": value, "unit": USD}


def _budgets(conn: Conn, tenant_id: str) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM cycles.budgets WHERE tenant_id = %s ORDER BY budget_id",
                        (tenant_id,)).fetchall()


def test_create_with_the_admin_key_and_a_tenant_key(http: httpx.Client, api_server: ApiServer,
                                                    admin_conn: Conn) -> None:
    tenant_id = create_tenant(http, api_server)
    created = create_budget(http, api_server, tenant_id, f"tenant:{tenant_id}", 1000)
    assert created["allocated"] == _amount(1000) and created["remaining"] == _amount(1000)
    assert created["status"] == "ACTIVE" and created["is_over_limit"] is False
    key = create_key(http, api_server, tenant_id, ["budgets:write", "budgets:read"])["key_secret"]
    own = http.post("/v1/admin/budgets", headers={"X-Cycles-API-Key": key}, json={
        "scope": f"tenant:{tenant_id}/workspace:w", "unit": USD, "allocated": _amount(10),
        "overdraft_limit": _amount(5), "commit_overage_policy": "ALLOW_WITH_OVERDRAFT", "rollover_policy": "NONE"})
    assert own.status_code == 201, own.text
    assert own.json()["overdraft_limit"] == _amount(5)
    audit = one_audit_row(admin_conn, own)
    assert (audit["operation"], audit["actor_type"], audit["tenant_id"]) == ("createBudget", "api_key", tenant_id)
    duplicate = http.post("/v1/admin/budgets", headers=admin_headers(api_server), json={
        "tenant_id": tenant_id, "scope": f"tenant:{tenant_id}", "unit": USD, "allocated": _amount(1)})
    expect_error(duplicate, 409, "DUPLICATE_RESOURCE")
    assert one_audit_row(admin_conn, duplicate)["actor_type"] == "admin_on_behalf_of"


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"scope": "tenant:{t}/workspace:x", "unit": USD, "allocated": _amount(1)}, 400, "INVALID_REQUEST"),
    ({"tenant_id": "{t}", "scope": "tenant:other-tenant", "unit": USD, "allocated": _amount(1)}, 400,
     "INVALID_REQUEST"),
    ({"tenant_id": "{t}", "scope": "workspace:x", "unit": USD, "allocated": _amount(1)}, 400, "INVALID_REQUEST"),
    ({"tenant_id": "{t}", "scope": "tenant:{t}/workspace:y", "unit": "EUR", "allocated": _amount(1)}, 400,
     "INVALID_REQUEST"),
    ({"tenant_id": "{t}", "scope": "tenant:{t}/workspace:y", "unit": USD,
      "allocated": {"amount": 1, "unit": "TOKENS"}}, 400, "UNIT_MISMATCH"),
    ({"tenant_id": "{t}", "scope": "tenant:{t}/workspace:y", "unit": USD, "allocated": _amount(-1)}, 400,
     "INVALID_REQUEST"),
    ({"tenant_id": "{t}", "scope": "tenant:{t}/workspace:y", "unit": USD, "allocated": 5}, 400, "INVALID_REQUEST"),
    ({"tenant_id": "{t}", "scope": "tenant:{t}/workspace:y", "unit": USD, "allocated": _amount(1),
      "rollover_policy": "CARRY_FORWARD"}, 400, "INVALID_REQUEST"),
    ({"tenant_id": "{t}", "scope": "tenant:{t}/workspace:y", "unit": USD, "allocated": _amount(1),
      "colour": "red"}, 400, "INVALID_REQUEST"),
])
def test_create_rejects_bad_input(http: httpx.Client, api_server: ApiServer, admin_conn: Conn,
                                  body: dict[str, Any], status: int, code: str) -> None:
    tenant_id = create_tenant(http, api_server)
    filled = {key: value.replace("{t}", tenant_id) if isinstance(value, str) else value
              for key, value in body.items()}
    response = http.post("/v1/admin/budgets", headers=admin_headers(api_server), json=filled)
    expect_error(response, status, code)
    assert _budgets(admin_conn, tenant_id) == []
    assert one_audit_row(admin_conn, response)["status"] == status


def test_a_tenant_key_may_not_name_a_tenant(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    tenant_id = create_tenant(http, api_server)
    key = create_key(http, api_server, tenant_id, ["admin:write"])["key_secret"]
    response = http.post("/v1/admin/budgets", headers={"X-Cycles-API-Key": key}, json={
        "tenant_id": tenant_id, "scope": f"tenant:{tenant_id}", "unit": USD, "allocated": _amount(1)})
    expect_error(response, 400, "INVALID_REQUEST")
    assert _budgets(admin_conn, tenant_id) == []


def test_list_filters_and_cursor(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    tenant_id = create_tenant(http, api_server)
    root = f"tenant:{tenant_id}"
    for suffix in ("", "/workspace:a", "/workspace:b", "/workspace:b/agent:x"):
        create_budget(http, api_server, tenant_id, root + suffix, 1000)
    admin_conn.execute("UPDATE cycles.budgets SET spent = 900, remaining = 100 WHERE scope = %s",
                       (root + "/workspace:a",))
    admin_conn.execute("UPDATE cycles.budgets SET debt = 10, remaining = 990, is_over_limit = true"
                       " WHERE scope = %s", (root + "/workspace:b",))
    admin = admin_headers(api_server)

    def scopes(**params: str) -> list[str]:
        response = http.get("/v1/admin/budgets", headers=admin, params={"tenant_id": tenant_id, **params})
        assert response.status_code == 200, response.text
        return [ledger["scope"].removeprefix(root) for ledger in response.json()["ledgers"]]

    assert scopes() == ["", "/workspace:a", "/workspace:b", "/workspace:b/agent:x"]
    assert scopes(scope_prefix=root + "/workspace:b") == ["/workspace:b", "/workspace:b/agent:x"]
    assert scopes(over_limit="true") == ["/workspace:b"]
    assert scopes(has_debt="false") == ["", "/workspace:a", "/workspace:b/agent:x"]
    assert scopes(utilization_min="0.5") == ["/workspace:a"]
    assert scopes(utilization_max="0.5", unit=USD, status="ACTIVE") == ["", "/workspace:b", "/workspace:b/agent:x"]
    assert scopes(search="AGENT:X") == ["/workspace:b/agent:x"]
    first = http.get("/v1/admin/budgets", headers=admin, params={"tenant_id": tenant_id, "limit": "3"}).json()
    assert first["has_more"] and len(first["ledgers"]) == 3
    rest = http.get("/v1/admin/budgets", headers=admin,
                    params={"tenant_id": tenant_id, "cursor": first["next_cursor"]}).json()
    assert [ledger["scope"] for ledger in rest["ledgers"]] == [root + "/workspace:b/agent:x"]
    for params in ({"utilization_min": "0.9", "utilization_max": "0.1"}, {"utilization_min": "2"},
                   {"over_limit": "maybe"}, {"unit": "EUR"}, {"status": "OPEN"}, {"cursor": "nope"},
                   {"search": "s" * 129}):
        expect_error(http.get("/v1/admin/budgets", headers=admin, params=params), 400, "INVALID_REQUEST")


def test_lookup_patch_freeze_unfreeze(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    tenant_id = create_tenant(http, api_server)
    scope = f"tenant:{tenant_id}/workspace:w"
    create_budget(http, api_server, tenant_id, scope, 100)
    admin = admin_headers(api_server)
    target = {"scope": scope, "unit": USD}
    assert http.get("/v1/admin/budgets/lookup", headers=admin, params=target).json()["scope"] == scope
    expect_error(http.get("/v1/admin/budgets/lookup", headers=admin, params={"scope": scope, "unit": "TOKENS"}),
                 404, "BUDGET_NOT_FOUND")
    expect_error(http.get("/v1/admin/budgets/lookup", headers=admin, params={"scope": scope}),
                 400, "INVALID_REQUEST")
    patched = http.patch("/v1/admin/budgets", headers=admin, params=target, json={
        "overdraft_limit": _amount(50), "commit_overage_policy": "REJECT", "metadata": {"a": "b"}})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["overdraft_limit"], patched.json()["commit_overage_policy"]) == (_amount(50), "REJECT")
    expect_error(http.patch("/v1/admin/budgets", headers=admin, params=target,
                            json={"overdraft_limit": {"amount": 1, "unit": "TOKENS"}}), 400, "UNIT_MISMATCH")
    expect_error(http.patch("/v1/admin/budgets", headers=admin, params=target, json={"allocated": 1}),
                 400, "INVALID_REQUEST")
    frozen = http.post("/v1/admin/budgets/freeze", headers=admin, params=target, json={"reason": "audit"})
    assert frozen.status_code == 200 and frozen.json()["status"] == "FROZEN"
    expect_error(http.post("/v1/admin/budgets/freeze", headers=admin, params=target), 409, "INVALID_TRANSITION")
    fund = http.post("/v1/admin/budgets/fund", headers=admin, params={**target, "tenant_id": tenant_id},
                     json={"operation": "CREDIT", "amount": _amount(1), "idempotency_key": "f1"})
    expect_error(fund, 409, "BUDGET_FROZEN")
    thawed = http.post("/v1/admin/budgets/unfreeze", headers=admin, params=target)
    assert thawed.status_code == 200 and thawed.json()["status"] == "ACTIVE"
    expect_error(http.post("/v1/admin/budgets/unfreeze", headers=admin, params=target), 409, "INVALID_TRANSITION")
    types = [row[0] for row in admin_conn.execute(
        "SELECT event_type FROM cycles.events WHERE scope = %s ORDER BY seq", (scope,))]
    assert types == ["budget.created", "budget.updated", "budget.frozen", "budget.unfrozen"]


def test_fund(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    tenant_id = create_tenant(http, api_server)
    scope = f"tenant:{tenant_id}"
    create_budget(http, api_server, tenant_id, scope, 100)
    admin = admin_headers(api_server)
    target = {"scope": scope, "unit": USD}
    body = {"operation": "CREDIT", "amount": _amount(40), "idempotency_key": "fund-1", "reason": "top-up"}
    expect_error(http.post("/v1/admin/budgets/fund", headers=admin, params=target, json=body),
                 400, "INVALID_REQUEST")
    funded = http.post("/v1/admin/budgets/fund", headers=admin, params={**target, "tenant_id": tenant_id},
                       json=body)
    assert funded.status_code == 200, funded.text
    assert (funded.json()["previous_allocated"], funded.json()["new_allocated"]) == (_amount(100), _amount(140))
    replay = http.post("/v1/admin/budgets/fund", headers=admin, params={**target, "tenant_id": tenant_id},
                       json=body)
    assert replay.json() == funded.json()
    assert one_audit_row(admin_conn, replay)["operation"] == "fundBudget"
    key = create_key(http, api_server, tenant_id, ["budgets:write"])["key_secret"]
    debit = http.post("/v1/admin/budgets/fund", headers={"X-Cycles-API-Key": key}, params=target,
                      json={"operation": "DEBIT", "amount": _amount(1000), "idempotency_key": "fund-2"})
    expect_error(debit, 409, "BUDGET_EXCEEDED")
    mismatch = http.post("/v1/admin/budgets/fund", headers={"X-Cycles-API-Key": key}, params=target,
                         json={**body, "amount": _amount(41)})
    expect_error(mismatch, 409, "IDEMPOTENCY_MISMATCH")
    expect_error(http.post("/v1/admin/budgets/fund", headers={"X-Cycles-API-Key": key}, params=target,
                           json={"operation": "GIFT", "amount": _amount(1), "idempotency_key": "f3"}),
                 400, "INVALID_REQUEST")
    assert admin_conn.execute("SELECT allocated FROM cycles.budgets WHERE scope = %s", (scope,)).fetchone() == (140,)
