"""The reference quickstart, verbatim over HTTP: create a tenant, a key with
admin:write, a budget with that tenant key, then reserve, commit and read the
balance; and the reference demos' provisioning of a budget hierarchy."""

from __future__ import annotations

import httpx

from tests.api.admin.helpers import admin_headers, one_audit_row
from tests.api.conftest import ApiServer
from tests.api.provision import Conn, unique


def test_quickstart_flow(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    admin = {"X-Admin-API-Key": api_server.admin_key, "Content-Type": "application/json"}
    tenant = http.post("/v1/admin/tenants", headers=admin,
                       content=b'{"tenant_id":"demo-tenant","name":"Demo Tenant"}')
    assert tenant.status_code == 201, tenant.text
    assert tenant.json()["status"] == "ACTIVE"
    assert one_audit_row(admin_conn, tenant)["operation"] == "createTenant"

    key = http.post("/v1/admin/api-keys", headers=admin, content=(
        b'{"tenant_id":"demo-tenant","name":"k","permissions":["reservations:create","reservations:commit",'
        b'"reservations:release","reservations:extend","balances:read","admin:write"]}'))
    assert key.status_code == 201, key.text
    secret = key.json()["key_secret"]
    assert secret.startswith("cyc_live_")

    tenant_key = {"X-Cycles-API-Key": secret, "Content-Type": "application/json"}
    budget = http.post("/v1/admin/budgets", headers=tenant_key, content=(
        b'{"scope":"tenant:demo-tenant","unit":"USD_MICROCENTS",'
        b'"allocated":{"amount":100000000,"unit":"USD_MICROCENTS"}}'))
    assert budget.status_code == 201, budget.text
    ledger = budget.json()
    assert ledger["scope"] == "tenant:demo-tenant"
    assert ledger["remaining"] == {"unit": "USD_MICROCENTS", "amount": 100000000}
    audit = one_audit_row(admin_conn, budget)
    assert (audit["tenant_id"], audit["actor_type"], audit["key_id"]) == (
        "demo-tenant", "api_key", key.json()["key_id"])

    reserve = http.post("/v1/reservations", headers=tenant_key, json={
        "idempotency_key": "tutorial-reserve-1",
        "subject": {"tenant": "demo-tenant"},
        "action": {"kind": "llm.completion", "name": "gpt-4o"},
        "estimate": {"amount": 500000, "unit": "USD_MICROCENTS"}})
    assert reserve.status_code == 200, reserve.text
    assert reserve.json()["decision"] == "ALLOW"
    reservation_id = reserve.json()["reservation_id"]

    commit = http.post(f"/v1/reservations/{reservation_id}/commit", headers=tenant_key, json={
        "idempotency_key": "tutorial-commit-1", "actual": {"amount": 420000, "unit": "USD_MICROCENTS"}})
    assert commit.status_code == 200, commit.text
    assert commit.json()["status"] == "COMMITTED"

    balances = http.get("/v1/balances", headers=tenant_key, params={"tenant": "demo-tenant"})
    assert balances.status_code == 200, balances.text
    [balance] = balances.json()["balances"]
    assert balance["spent"] == {"unit": "USD_MICROCENTS", "amount": 420000}
    assert balance["remaining"] == {"unit": "USD_MICROCENTS", "amount": 100000000 - 420000}


def test_demo_provisioning_of_a_budget_hierarchy(
    http: httpx.Client, api_server: ApiServer, admin_conn: Conn,
) -> None:
    tenant_id = unique("demo-")
    admin = admin_headers(api_server)
    assert http.post("/v1/admin/tenants", headers=admin,
                     json={"tenant_id": tenant_id, "name": "Demo"}).status_code == 201
    key = http.post("/v1/admin/api-keys", headers=admin, json={
        "tenant_id": tenant_id, "name": "demo",
        "permissions": ["reservations:create", "reservations:commit", "reservations:release",
                        "reservations:extend", "reservations:list", "balances:read", "admin:read",
                        "admin:write"]}).json()["key_secret"]
    scopes = [
        f"tenant:{tenant_id}",
        f"tenant:{tenant_id}/workspace:default",
        f"tenant:{tenant_id}/workspace:default/app:default",
        f"tenant:{tenant_id}/workspace:default/app:default/workflow:default",
        f"tenant:{tenant_id}/workspace:default/app:default/workflow:default/agent:support-bot",
    ]
    for scope in scopes:
        response = http.post("/v1/admin/budgets", headers={"X-Cycles-API-Key": key}, json={
            "scope": scope, "unit": "USD_MICROCENTS", "allocated": {"amount": 10_000_000, "unit": "USD_MICROCENTS"},
            "commit_overage_policy": "ALLOW_IF_AVAILABLE"})
        assert response.status_code == 201, response.text
    listed = http.get("/v1/admin/budgets", headers={"X-Cycles-API-Key": key})
    assert listed.status_code == 200
    assert [ledger["scope"] for ledger in listed.json()["ledgers"]] == scopes

    reserve = http.post("/v1/reservations", headers={"X-Cycles-API-Key": key}, json={
        "idempotency_key": unique("r-"),
        "subject": {"tenant": tenant_id, "workspace": "default", "app": "default", "workflow": "default",
                    "agent": "support-bot"},
        "action": {"kind": "llm.completion", "name": "gpt-4o"},
        "estimate": {"amount": 1000, "unit": "USD_MICROCENTS"}})
    assert reserve.status_code == 200, reserve.text
    assert sorted(reserve.json()["affected_scopes"]) == sorted(scopes)
