"""Permission matrix of the admin endpoints: each of the 27 permissions x each
endpoint, with a key holding only that permission. Allowed calls get past
authorization; refused ones are 403 INSUFFICIENT_PERMISSIONS, change nothing
and leave one audit row saying so. Plus tenant isolation: a key with every
permission can read or change nothing of another tenant."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.api.admin.helpers import ALL_PERMISSIONS, expect_error, key_headers, one_audit_row
from tests.api.conftest import ApiServer
from tests.api.provision import USD, Conn, create_budget, new_api_key, unique


@dataclass(frozen=True)
class Target:
    tenant_id: str
    secret: str

    @property
    def scope(self) -> str:
        return f"tenant:{self.tenant_id}"


@dataclass(frozen=True)
class Endpoint:
    operation: str
    method: str
    path: str
    allowed: frozenset[str]
    params: Callable[[Target], dict[str, str]] = lambda target: {}
    body: Callable[[Target], Any] = lambda target: None


BUDGET_WRITE = frozenset({"budgets:write", "admin:budgets:write", "admin:write"})
BUDGET_READ = frozenset({"budgets:read", "admin:budgets:read", "admin:read"})
BUDGET_ADMIN = frozenset({"admin:budgets:write", "admin:write"})
ADMIN_ONLY: frozenset[str] = frozenset()


def _target(target: Target) -> dict[str, str]:
    return {"scope": target.scope, "unit": USD}


ENDPOINTS = [
    Endpoint("createBudget", "POST", "/v1/admin/budgets", BUDGET_WRITE, body=lambda t: {
        "scope": f"{t.scope}/workspace:{unique('w')}", "unit": USD, "allocated": {"amount": 10, "unit": USD}}),
    Endpoint("listBudgets", "GET", "/v1/admin/budgets", BUDGET_READ),
    Endpoint("lookupBudget", "GET", "/v1/admin/budgets/lookup", BUDGET_READ, params=_target),
    Endpoint("fundBudget", "POST", "/v1/admin/budgets/fund", BUDGET_WRITE, params=_target, body=lambda t: {
        "operation": "CREDIT", "amount": {"amount": 5, "unit": USD}, "idempotency_key": unique("f")}),
    Endpoint("updateBudget", "PATCH", "/v1/admin/budgets", BUDGET_ADMIN, params=_target,
             body=lambda t: {"metadata": {"touched": "yes"}}),
    Endpoint("freezeBudget", "POST", "/v1/admin/budgets/freeze", BUDGET_ADMIN, params=_target),
    Endpoint("unfreezeBudget", "POST", "/v1/admin/budgets/unfreeze", BUDGET_ADMIN, params=_target),
    Endpoint("createTenant", "POST", "/v1/admin/tenants", ADMIN_ONLY,
             body=lambda t: {"tenant_id": unique("perm-"), "name": "x"}),
    Endpoint("listTenants", "GET", "/v1/admin/tenants", ADMIN_ONLY),
    Endpoint("getTenant", "GET", "/v1/admin/tenants/{tenant}", ADMIN_ONLY),
    Endpoint("updateTenant", "PATCH", "/v1/admin/tenants/{tenant}", ADMIN_ONLY, body=lambda t: {"name": "renamed"}),
    Endpoint("bulkActionTenants", "POST", "/v1/admin/tenants/bulk-action", ADMIN_ONLY, body=lambda t: {
        "filter": {"search": t.tenant_id}, "action": "SUSPEND", "idempotency_key": unique("b")}),
    Endpoint("createApiKey", "POST", "/v1/admin/api-keys", ADMIN_ONLY,
             body=lambda t: {"tenant_id": t.tenant_id, "name": "x"}),
    Endpoint("listApiKeys", "GET", "/v1/admin/api-keys", ADMIN_ONLY, params=lambda t: {"tenant_id": t.tenant_id}),
    Endpoint("bulkActionBudgets", "POST", "/v1/admin/budgets/bulk-action", ADMIN_ONLY, body=lambda t: {
        "filter": {"tenant_id": t.tenant_id}, "action": "CREDIT", "amount": {"amount": 1, "unit": USD},
        "idempotency_key": unique("b")}),
    Endpoint("listAuditLogs", "GET", "/v1/admin/audit/logs", ADMIN_ONLY),
]


def _state(conn: Conn, tenant_id: str) -> tuple[Any, ...]:
    return (
        conn.execute("SELECT * FROM cycles.tenants WHERE tenant_id = %s", (tenant_id,)).fetchall(),
        conn.execute("SELECT * FROM cycles.budgets WHERE tenant_id = %s ORDER BY budget_id", (tenant_id,)).fetchall(),
        conn.execute("SELECT key_id, status, permissions, name FROM cycles.api_keys WHERE tenant_id = %s"
                     " ORDER BY key_id", (tenant_id,)).fetchall(),
        conn.execute("SELECT count(*) FROM cycles.events WHERE tenant_id = %s", (tenant_id,)).fetchall(),
        conn.execute("SELECT count(*) FROM cycles.tenants").fetchall(),
        conn.execute("SELECT count(*) FROM cycles.ledger_entries WHERE tenant_id = %s", (tenant_id,)).fetchall(),
    )


def _send(http: httpx.Client, endpoint: Endpoint, target: Target, headers: dict[str, str]) -> httpx.Response:
    body = endpoint.body(target)
    return http.request(endpoint.method, endpoint.path.format(tenant=target.tenant_id),
                        params=endpoint.params(target), headers=headers,
                        json=body if body is not None else None)


def _provision(conn: Conn, permissions: list[str]) -> Target:
    tenant_id = unique("perm-")
    conn.execute("SELECT cycles.create_tenant(p_tenant_id => %s, p_name => 'perm')", (tenant_id,))
    create_budget(conn, f"tenant:{tenant_id}", 1_000)
    return Target(tenant_id, new_api_key(conn, tenant_id, permissions))


@pytest.mark.parametrize("permission", ALL_PERMISSIONS)
def test_each_permission_against_each_endpoint(
    http: httpx.Client, api_server: ApiServer, admin_conn: Conn, permission: str,
) -> None:
    target = _provision(admin_conn, [permission])
    for endpoint in ENDPOINTS:
        before = _state(admin_conn, target.tenant_id)
        response = _send(http, endpoint, target, key_headers(target.secret))
        audit = one_audit_row(admin_conn, response)
        assert audit["operation"] == endpoint.operation
        assert audit["tenant_id"] == target.tenant_id
        if permission in endpoint.allowed:
            assert response.status_code < 300, (permission, endpoint.operation, response.text)
            assert audit["actor_type"] == "api_key" and audit["status"] == response.status_code
        else:
            expect_error(response, 403, "INSUFFICIENT_PERMISSIONS")
            assert _state(admin_conn, target.tenant_id) == before, (permission, endpoint.operation)
            assert (audit["status"], audit["error_code"]) == (403, "INSUFFICIENT_PERMISSIONS")


def test_wildcards_never_grant_across_read_and_write(
    http: httpx.Client, api_server: ApiServer, admin_conn: Conn,
) -> None:
    target = _provision(admin_conn, ["admin:read", "budgets:read"])
    response = http.post("/v1/admin/budgets", headers=key_headers(target.secret), json={
        "scope": f"{target.scope}/workspace:w", "unit": USD, "allocated": {"amount": 1, "unit": USD}})
    expect_error(response, 403, "INSUFFICIENT_PERMISSIONS")


def test_a_revoked_or_unknown_key_is_unauthorized(
    http: httpx.Client, api_server: ApiServer, admin_conn: Conn,
) -> None:
    target = _provision(admin_conn, ["admin:write", "admin:read"])
    admin_conn.execute("SELECT cycles.revoke_api_key(k.key_id) FROM cycles.api_keys AS k WHERE k.tenant_id = %s",
                       (target.tenant_id,))
    for secret in (target.secret, "cyc_live_unknown"):
        response = http.get("/v1/admin/budgets", headers=key_headers(secret))
        expect_error(response, 401, "UNAUTHORIZED")
        audit = one_audit_row(admin_conn, response)
        assert (audit["tenant_id"], audit["status"]) == ("__unauth__", 401)


def test_a_key_with_every_permission_reaches_nothing_of_another_tenant(
    http: httpx.Client, api_server: ApiServer, admin_conn: Conn,
) -> None:
    mine = _provision(admin_conn, ALL_PERMISSIONS)
    other = _provision(admin_conn, ALL_PERMISSIONS)
    create_budget(admin_conn, f"{other.scope}/workspace:w", 500)
    before = _state(admin_conn, other.tenant_id)
    headers = key_headers(mine.secret)
    scope = {"scope": other.scope, "unit": USD}
    attempts = [
        ("GET", "/v1/admin/budgets/lookup", scope, None, 403, "FORBIDDEN"),
        ("POST", "/v1/admin/budgets/fund", {**scope, "tenant_id": other.tenant_id},
         {"operation": "CREDIT", "amount": {"amount": 5, "unit": USD}, "idempotency_key": "x"}, 403, "FORBIDDEN"),
        ("PATCH", "/v1/admin/budgets", scope, {"overdraft_limit": {"amount": 9, "unit": USD}}, 403, "FORBIDDEN"),
        ("POST", "/v1/admin/budgets/freeze", scope, None, 403, "FORBIDDEN"),
        ("POST", "/v1/admin/budgets/unfreeze", scope, None, 403, "FORBIDDEN"),
        ("POST", "/v1/admin/budgets", {}, {"scope": f"{other.scope}/agent:a", "unit": USD,
                                           "allocated": {"amount": 1, "unit": USD}}, 403, "FORBIDDEN"),
        ("GET", f"/v1/admin/tenants/{other.tenant_id}", {}, None, 403, "INSUFFICIENT_PERMISSIONS"),
        ("PATCH", f"/v1/admin/tenants/{other.tenant_id}", {}, {"status": "CLOSED"}, 403, "INSUFFICIENT_PERMISSIONS"),
        ("GET", "/v1/admin/api-keys", {"tenant_id": other.tenant_id}, None, 403, "INSUFFICIENT_PERMISSIONS"),
        ("POST", "/v1/admin/api-keys", {}, {"tenant_id": other.tenant_id, "name": "x"}, 403,
         "INSUFFICIENT_PERMISSIONS"),
        ("GET", "/v1/admin/audit/logs", {"tenant_id": other.tenant_id}, None, 403, "INSUFFICIENT_PERMISSIONS"),
    ]
    for method, path, params, body, status, code in attempts:
        response = http.request(method, path, params=params, headers=headers, json=body)
        expect_error(response, status, code)
        assert _state(admin_conn, other.tenant_id) == before, path
    # Listing ignores another tenant named in the query: only the key's own budgets.
    listed = http.get("/v1/admin/budgets", params={"tenant_id": other.tenant_id}, headers=headers)
    assert listed.status_code == 200
    assert {ledger["tenant_id"] for ledger in listed.json()["ledgers"]} == {mine.tenant_id}


def test_scope_filter_limits_a_tenant_key_on_the_admin_plane(
    http: httpx.Client, api_server: ApiServer, admin_conn: Conn,
) -> None:
    target = _provision(admin_conn, ["admin:write", "admin:read"])
    create_budget(admin_conn, f"{target.scope}/workspace:eng", 100)
    create_budget(admin_conn, f"{target.scope}/workspace:ops", 100)
    key_id = admin_conn.execute("SELECT key_id FROM cycles.api_keys WHERE tenant_id = %s",
                                (target.tenant_id,)).fetchone()
    assert key_id is not None
    admin_conn.execute("SELECT cycles.update_api_key(%s, '{\"scope_filter\": [\"workspace:eng\"]}')", (key_id[0],))
    headers = key_headers(target.secret)
    listed = http.get("/v1/admin/budgets", headers=headers)
    assert [ledger["scope"] for ledger in listed.json()["ledgers"]] == [f"{target.scope}/workspace:eng"]
    outside = http.get("/v1/admin/budgets/lookup", headers=headers,
                       params={"scope": f"{target.scope}/workspace:ops", "unit": USD})
    expect_error(outside, 403, "FORBIDDEN")
    inside = http.get("/v1/admin/budgets/lookup", headers=headers,
                      params={"scope": f"{target.scope}/workspace:eng", "unit": USD})
    assert inside.status_code == 200
