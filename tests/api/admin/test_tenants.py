"""Tenants over REST: idempotent create, validation, list filters and cursor,
get, patch of properties and status, and the close cascade in one request."""

from __future__ import annotations

import httpx
import pytest

from tests.api.admin.helpers import admin_headers, create_key, create_tenant, expect_error, one_audit_row
from tests.api.checks import assert_keys
from tests.api.conftest import ApiServer
from tests.api.provision import USD, Conn, Tenant, create_budget, reserve_body, unique

TENANT_KEYS = {
    "tenant_id", "name", "status", "parent_tenant_id", "default_commit_overage_policy",
    "default_reservation_ttl_ms", "max_reservation_ttl_ms", "max_reservation_extensions", "metadata",
    "created_at", "updated_at", "suspended_at", "closed_at"}


def test_create_is_idempotent_on_id_and_name(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    tenant_id = unique("tn-")
    admin = admin_headers(api_server)
    first = http.post("/v1/admin/tenants", headers=admin, json={"tenant_id": tenant_id, "name": "Acme"})
    assert first.status_code == 201
    assert_keys(first.json(), TENANT_KEYS, {"tenant_id", "name", "status", "created_at"})
    assert first.json()["default_reservation_ttl_ms"] == 60000
    again = http.post("/v1/admin/tenants", headers=admin, json={"tenant_id": tenant_id, "name": "Acme"})
    assert again.status_code == 200 and again.json() == first.json()
    assert one_audit_row(admin_conn, again)["status"] == 200
    clash = http.post("/v1/admin/tenants", headers=admin, json={"tenant_id": tenant_id, "name": "Other"})
    expect_error(clash, 409, "DUPLICATE_RESOURCE")
    audit = one_audit_row(admin_conn, clash)
    assert (audit["tenant_id"], audit["status"], audit["error_code"]) == (tenant_id, 409, "DUPLICATE_RESOURCE")
    events = admin_conn.execute("SELECT count(*) FROM cycles.events WHERE tenant_id = %s AND event_type = "
                                "'tenant.created'", (tenant_id,)).fetchone()
    assert events == (1,)


@pytest.mark.parametrize("body", [
    {"tenant_id": "Bad Id", "name": "x"},
    {"tenant_id": "ab", "name": "x"},
    {"name": "x"},
    {"tenant_id": "ok-id-1"},
    {"tenant_id": 5, "name": "x"},
    {"tenant_id": "ok-id-2", "name": "x", "default_reservation_ttl_ms": 10},
    {"tenant_id": "ok-id-3", "name": "x", "unknown_field": 1},
    {"tenant_id": "ok-id-4", "name": "x", "default_commit_overage_policy": "SOMETIMES"},
    {"tenant_id": "ok-id-5", "name": "x", "metadata": {"a": 1}},
    [],
])
def test_create_rejects_bad_input(http: httpx.Client, api_server: ApiServer, admin_conn: Conn, body: object) -> None:
    before = admin_conn.execute("SELECT count(*) FROM cycles.tenants").fetchone()
    response = http.post("/v1/admin/tenants", headers=admin_headers(api_server), json=body)
    expect_error(response, 400, "INVALID_REQUEST")
    assert admin_conn.execute("SELECT count(*) FROM cycles.tenants").fetchone() == before
    assert one_audit_row(admin_conn, response)["error_code"] == "INVALID_REQUEST"


def test_admin_key_is_required(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    missing = http.get("/v1/admin/tenants")
    expect_error(missing, 401, "UNAUTHORIZED")
    wrong = http.get("/v1/admin/tenants", headers={"X-Admin-API-Key": "not-the-key"})
    expect_error(wrong, 401, "UNAUTHORIZED")
    for response in (missing, wrong):
        audit = one_audit_row(admin_conn, response)
        assert (audit["tenant_id"], audit["operation"], audit["status"]) == ("__unauth__", "listTenants", 401)


def test_list_filters_and_cursor(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    marker = unique("lst")
    ids = [create_tenant(http, api_server, f"{marker}-{i}") for i in range(5)]
    admin = admin_headers(api_server)
    http.patch(f"/v1/admin/tenants/{ids[0]}", headers=admin, json={"status": "SUSPENDED"})
    seen: list[str] = []
    cursor = None
    while True:
        params = {"search": marker.upper(), "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = http.get("/v1/admin/tenants", headers=admin, params=params)
        assert page.status_code == 200, page.text
        seen += [tenant["tenant_id"] for tenant in page.json()["tenants"]]
        if not page.json()["has_more"]:
            assert "next_cursor" not in page.json()
            break
        cursor = page.json()["next_cursor"]
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    suspended = http.get("/v1/admin/tenants", headers=admin, params={"search": marker, "status": "SUSPENDED"})
    assert [tenant["tenant_id"] for tenant in suspended.json()["tenants"]] == [ids[0]]
    for params in ({"status": "GONE"}, {"limit": "0"}, {"limit": "101"}, {"search": "x" * 129},
                   {"cursor": "no-such-tenant"}):
        expect_error(http.get("/v1/admin/tenants", headers=admin, params=params), 400, "INVALID_REQUEST")
    ignored = http.get("/v1/admin/tenants", headers=admin, params={"search": marker, "observe_mode": "OBSERVE",
                                                                   "sort_by": "name"})
    assert ignored.status_code == 200


def test_get_and_patch(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    tenant_id = create_tenant(http, api_server)
    admin = admin_headers(api_server)
    assert http.get(f"/v1/admin/tenants/{tenant_id}", headers=admin).json()["tenant_id"] == tenant_id
    expect_error(http.get("/v1/admin/tenants/no-such-tenant", headers=admin), 404, "TENANT_NOT_FOUND")
    patched = http.patch(f"/v1/admin/tenants/{tenant_id}", headers=admin, json={
        "name": "Renamed", "default_reservation_ttl_ms": 120000, "max_reservation_extensions": 3,
        "default_commit_overage_policy": "REJECT", "metadata": {"team": "core"}})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["name"], body["default_reservation_ttl_ms"], body["max_reservation_extensions"],
            body["default_commit_overage_policy"], body["metadata"]) == (
        "Renamed", 120000, 3, "REJECT", {"team": "core"})
    event = admin_conn.execute(
        "SELECT event_type, data FROM cycles.events WHERE tenant_id = %s AND event_type LIKE 'tenant.%%'"
        " ORDER BY seq DESC LIMIT 1", (tenant_id,)).fetchone()
    assert event is not None and event[0] == "tenant.settings_changed"
    assert set(event[1]["changed_fields"]) == {
        "name", "default_reservation_ttl_ms", "max_reservation_extensions", "default_commit_overage_policy",
        "metadata"}
    before = http.get(f"/v1/admin/tenants/{tenant_id}", headers=admin).json()
    for patch in ({}, {"status": "GONE"}, {"name": ""}, {"default_reservation_ttl_ms": 999},
                  {"max_reservation_extensions": -1}, {"tenant_id": "x"}, {"name": None}, {"metadata": []}):
        expect_error(http.patch(f"/v1/admin/tenants/{tenant_id}", headers=admin, json=patch), 400, "INVALID_REQUEST")
    assert http.get(f"/v1/admin/tenants/{tenant_id}", headers=admin).json() == before
    expect_error(http.patch("/v1/admin/tenants/no-such-tenant", headers=admin, json={"name": "x"}),
                 404, "TENANT_NOT_FOUND")


def test_status_transitions(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    tenant_id = create_tenant(http, api_server)
    admin = admin_headers(api_server)
    path = f"/v1/admin/tenants/{tenant_id}"
    suspended = http.patch(path, headers=admin, json={"status": "SUSPENDED"}).json()
    assert suspended["status"] == "SUSPENDED" and "suspended_at" in suspended
    assert http.patch(path, headers=admin, json={"status": "ACTIVE"}).json()["status"] == "ACTIVE"
    closed = http.patch(path, headers=admin, json={"status": "CLOSED"})
    assert closed.json()["status"] == "CLOSED" and "closed_at" in closed.json()
    assert http.patch(path, headers=admin, json={"status": "CLOSED"}).status_code == 200
    expect_error(http.patch(path, headers=admin, json={"status": "ACTIVE"}), 409, "INVALID_TRANSITION")
    expect_error(http.patch(path, headers=admin, json={"name": "after close"}), 409, "TENANT_CLOSED")
    assert http.get(path, headers=admin).json()["name"] != "after close"
    types = [row[0] for row in admin_conn.execute(
        "SELECT event_type FROM cycles.events WHERE tenant_id = %s ORDER BY seq", (tenant_id,))]
    assert types == ["tenant.created", "tenant.suspended", "tenant.reactivated", "tenant.closed"]


def test_close_cascades_in_one_request(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    tenant_id = create_tenant(http, api_server)
    key = create_key(http, api_server, tenant_id)
    create_budget(admin_conn, f"tenant:{tenant_id}", 100_000)
    create_budget(admin_conn, f"tenant:{tenant_id}/workspace:w1", 10_000)
    tenant = Tenant(tenant_id, key["key_secret"])
    reservation = http.post("/v1/reservations", headers=tenant.headers(), json=reserve_body(tenant, 700))
    assert reservation.status_code == 200, reservation.text
    admin = admin_headers(api_server)
    closed = http.patch(f"/v1/admin/tenants/{tenant_id}", headers=admin, json={"status": "CLOSED"})
    assert closed.status_code == 200
    request_id = closed.headers["x-request-id"]
    assert admin_conn.execute("SELECT count(*) FROM cycles.reservations WHERE tenant_id = %s AND status = 'ACTIVE'",
                              (tenant_id,)).fetchone() == (0,)
    assert admin_conn.execute("SELECT count(*) FROM cycles.api_keys WHERE tenant_id = %s AND status = 'ACTIVE'",
                              (tenant_id,)).fetchone() == (0,)
    assert admin_conn.execute("SELECT count(*), sum(reserved) FROM cycles.budgets WHERE tenant_id = %s"
                              " AND status <> 'CLOSED'", (tenant_id,)).fetchone() == (0, None)
    assert admin_conn.execute("SELECT bool_and(reserved = 0) FROM cycles.budgets WHERE tenant_id = %s",
                              (tenant_id,)).fetchone() == (True,)
    correlations = {row[0] for row in admin_conn.execute(
        "SELECT DISTINCT correlation_id FROM cycles.events WHERE request_id = %s", (request_id,))}
    assert correlations == {f"tenant_close_cascade:{tenant_id}:{request_id}"}
    assert one_audit_row(admin_conn, closed)["operation"] == "updateTenant"
    # The revoked key is refused; reads by the admin still work.
    expect_error(http.get("/v1/balances", headers=tenant.headers(), params={"tenant": tenant_id}),
                 401, "UNAUTHORIZED")
    assert http.get("/v1/admin/budgets", headers=admin, params={"tenant_id": tenant_id}).status_code == 200
    fund = http.post("/v1/admin/budgets/fund", headers=admin,
                     params={"scope": f"tenant:{tenant_id}", "unit": USD, "tenant_id": tenant_id},
                     json={"operation": "CREDIT", "amount": {"amount": 1, "unit": USD}, "idempotency_key": "k"})
    expect_error(fund, 409, "TENANT_CLOSED")
