"""Shared helpers of the admin REST tests: headers, provisioning over HTTP,
and looks at what a request wrote (audit rows, tenant state)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.checks import assert_error, assert_ids
from tests.api.conftest import ApiServer
from tests.api.provision import Conn, unique

ALL_PERMISSIONS = [
    "reservations:create", "reservations:commit", "reservations:release", "reservations:extend",
    "reservations:list", "balances:read", "budgets:read", "budgets:write", "policies:read", "policies:write",
    "webhooks:read", "webhooks:write", "events:read", "admin:read", "admin:write",
    "admin:tenants:read", "admin:tenants:write", "admin:budgets:read", "admin:budgets:write",
    "admin:policies:read", "admin:policies:write", "admin:apikeys:read", "admin:apikeys:write",
    "admin:webhooks:read", "admin:webhooks:write", "admin:events:read", "admin:audit:read"]


def admin_headers(server: ApiServer) -> dict[str, str]:
    return {"X-Admin-API-Key": server.admin_key}


def key_headers(secret: str) -> dict[str, str]:
    return {"X-Cycles-API-Key": secret}


def create_tenant(http: httpx.Client, server: ApiServer, tenant_id: str | None = None) -> str:
    tenant_id = tenant_id or unique("adm-")
    response = http.post("/v1/admin/tenants", headers=admin_headers(server),
                         json={"tenant_id": tenant_id, "name": f"Tenant {tenant_id}"})
    assert response.status_code == 201, response.text
    return tenant_id


def create_key(http: httpx.Client, server: ApiServer, tenant_id: str, permissions: list[str] | None = None,
               **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"tenant_id": tenant_id, "name": "test key", **fields}
    if permissions is not None:
        body["permissions"] = permissions
    response = http.post("/v1/admin/api-keys", headers=admin_headers(server), json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def create_budget(http: httpx.Client, server: ApiServer, tenant_id: str, scope: str, allocated: int,
                  unit: str = "USD_MICROCENTS") -> dict[str, Any]:
    response = http.post("/v1/admin/budgets", headers=admin_headers(server), json={
        "tenant_id": tenant_id, "scope": scope, "unit": unit, "allocated": {"amount": allocated, "unit": unit}})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def audit_rows(conn: Conn, request_id: str) -> list[dict[str, Any]]:
    cursor = conn.execute(
        "SELECT tenant_id, key_id, actor_type, operation, resource_type, resource_id, status, error_code,"
        " trace_id, metadata FROM cycles.audit_logs WHERE request_id = %s ORDER BY seq", (request_id,))
    names = [column.name for column in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def one_audit_row(conn: Conn, response: httpx.Response) -> dict[str, Any]:
    """The request left exactly one audit row, with its trace id; returns it."""
    request_id, trace_id = assert_ids(response)
    rows = audit_rows(conn, request_id)
    assert len(rows) == 1, rows
    assert rows[0]["trace_id"] == trace_id
    return rows[0]


def expect_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    body: dict[str, Any] = assert_error(response, status, code)
    return body
