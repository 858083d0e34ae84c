"""API keys over REST: create (secret once), list, get, patch, revoke."""

from __future__ import annotations

import httpx
import pytest

from tests.api.admin.helpers import admin_headers, create_key, create_tenant, expect_error, one_audit_row
from tests.api.checks import assert_keys
from tests.api.conftest import ApiServer
from tests.api.provision import Conn, unique

KEY_KEYS = {
    "key_id", "tenant_id", "key_prefix", "name", "description", "permissions", "scope_filter", "status",
    "created_at", "last_used_at", "expires_at", "revoked_at", "revoked_reason", "metadata"}
DEFAULT_PERMISSIONS = [
    "reservations:create", "reservations:commit", "reservations:release", "reservations:extend",
    "reservations:list", "balances:read", "budgets:read", "budgets:write", "policies:read", "policies:write"]


def test_create_list_get(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    tenant_id = create_tenant(http, api_server)
    created = create_key(http, api_server, tenant_id, description="for tests", scope_filter=["workspace:eng"],
                         metadata={"owner": "qa"}, expires_at="2099-01-01T00:00:00Z")
    assert set(created) == {"key_id", "key_secret", "key_prefix", "tenant_id", "permissions", "created_at",
                            "expires_at"}
    assert created["permissions"] == DEFAULT_PERMISSIONS
    assert created["expires_at"].startswith("2099-01-01T00:00:00")
    admin = admin_headers(api_server)
    got = http.get(f"/v1/admin/api-keys/{created['key_id']}", headers=admin).json()
    assert_keys(got, KEY_KEYS, {"key_id", "tenant_id", "key_prefix", "status", "permissions", "expires_at"})
    assert "key_secret" not in got and got["scope_filter"] == ["workspace:eng"] and got["status"] == "ACTIVE"
    second = create_key(http, api_server, tenant_id, ["balances:read"])
    page = http.get("/v1/admin/api-keys", headers=admin, params={"tenant_id": tenant_id, "limit": "1"}).json()
    assert page["has_more"] and [key["key_id"] for key in page["keys"]] == [created["key_id"]]
    rest = http.get("/v1/admin/api-keys", headers=admin,
                    params={"tenant_id": tenant_id, "cursor": page["next_cursor"]}).json()
    assert [key["key_id"] for key in rest["keys"]] == [second["key_id"]] and not rest["has_more"]
    expect_error(http.get("/v1/admin/api-keys/key_missing", headers=admin), 404, "NOT_FOUND")
    expect_error(http.get("/v1/admin/api-keys", headers=admin, params={"tenant_id": "no-such-tenant"}),
                 404, "TENANT_NOT_FOUND")


@pytest.mark.parametrize("body", [
    {"tenant_id": None, "name": "x"},
    {"name": ""},
    {"name": "x", "permissions": ["reservations:create", "root"]},
    {"name": "x", "permissions": []},
    {"name": "x", "permissions": "admin:write"},
    {"name": "x", "expires_at": "yesterday"},
    {"name": "x", "expires_at": "2001-01-01T00:00:00Z"},
    {"name": "x", "scope_filter": "workspace:eng"},
    {"name": "x", "secret": "mine"},
])
def test_create_rejects_bad_input(http: httpx.Client, api_server: ApiServer, admin_conn: Conn, body: dict[str, object]) -> None:
    tenant_id = create_tenant(http, api_server)
    response = http.post("/v1/admin/api-keys", headers=admin_headers(api_server), json={"tenant_id": tenant_id, **body})
    expect_error(response, 400, "INVALID_REQUEST")
    assert admin_conn.execute("SELECT count(*) FROM cycles.api_keys WHERE tenant_id = %s",
                              (tenant_id,)).fetchone() == (0,)
    one_audit_row(admin_conn, response)


def test_patch_and_revoke(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    tenant_id = create_tenant(http, api_server)
    key = create_key(http, api_server, tenant_id, ["balances:read"])
    admin = admin_headers(api_server)
    path = f"/v1/admin/api-keys/{key['key_id']}"
    patched = http.patch(path, headers=admin, json={
        "name": "renamed", "description": "d", "permissions": ["budgets:read", "admin:read"],
        "scope_filter": ["workspace:ops"], "metadata": {"k": "v"}})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["name"], body["description"], body["permissions"], body["scope_filter"], body["metadata"]) == (
        "renamed", "d", ["budgets:read", "admin:read"], ["workspace:ops"], {"k": "v"})
    changed = admin_conn.execute("SELECT count(*) FROM cycles.events WHERE tenant_id = %s AND event_type ="
                                 " 'api_key.permissions_changed'", (tenant_id,)).fetchone()
    assert changed == (1,)
    for patch in ({}, {"permissions": ["nope"]}, {"expires_at": "2099-01-01T00:00:00Z"}, {"status": "REVOKED"},
                  {"tenant_id": "x"}, {"name": ""}, {"metadata": "x"}):
        expect_error(http.patch(path, headers=admin, json=patch), 400, "INVALID_REQUEST")
    assert http.get(path, headers=admin).json() == body
    revoked = http.delete(path, headers=admin, params={"reason": "rotated"})
    assert revoked.status_code == 200
    assert (revoked.json()["status"], revoked.json()["revoked_reason"]) == ("REVOKED", "rotated")
    expect_error(http.delete(path, headers=admin), 409, "INVALID_TRANSITION")
    expect_error(http.patch(path, headers=admin, json={"name": "again"}), 409, "INVALID_TRANSITION")
    expect_error(http.delete("/v1/admin/api-keys/key_missing", headers=admin), 404, "NOT_FOUND")
    expect_error(http.get("/v1/balances", headers={"X-Cycles-API-Key": key["key_secret"]},
                          params={"tenant": tenant_id}), 401, "UNAUTHORIZED")
    audit = one_audit_row(admin_conn, revoked)
    assert (audit["operation"], audit["resource_id"], audit["tenant_id"]) == (
        "revokeApiKey", key["key_id"], tenant_id)


def test_list_search_and_status(http: httpx.Client, api_server: ApiServer) -> None:
    tenant_id = create_tenant(http, api_server)
    marker = unique("Needle")
    target = create_key(http, api_server, tenant_id, name=marker)
    create_key(http, api_server, tenant_id)
    admin = admin_headers(api_server)
    found = http.get("/v1/admin/api-keys", headers=admin, params={"search": marker.lower()}).json()["keys"]
    assert [key["key_id"] for key in found] == [target["key_id"]]
    http.delete(f"/v1/admin/api-keys/{target['key_id']}", headers=admin)
    revoked = http.get("/v1/admin/api-keys", headers=admin, params={"tenant_id": tenant_id, "status": "REVOKED"})
    assert [key["key_id"] for key in revoked.json()["keys"]] == [target["key_id"]]
    expect_error(http.get("/v1/admin/api-keys", headers=admin, params={"status": "LOST"}), 400, "INVALID_REQUEST")
