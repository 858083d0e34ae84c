"""Audit log and bulk actions over REST: exactly one audit row per admin
request (success or failure, every endpoint), admin-on-behalf-of runtime
calls audited, GET /v1/admin/audit/logs filters, and the bulk endpoints."""

from __future__ import annotations

import httpx

from tests.api.admin.helpers import (
    admin_headers,
    create_budget,
    create_key,
    create_tenant,
    expect_error,
    one_audit_row,
)
from tests.api.conftest import ApiServer
from tests.api.provision import USD, Conn, Tenant, reserve_body, unique


def test_every_admin_endpoint_writes_one_row_on_success_and_on_failure(
    http: httpx.Client, api_server: ApiServer, admin_conn: Conn,
) -> None:
    tenant_id = create_tenant(http, api_server)
    key_id = create_key(http, api_server, tenant_id)["key_id"]
    scope = f"tenant:{tenant_id}"
    create_budget(http, api_server, tenant_id, scope, 100)
    admin = admin_headers(api_server)
    target = {"scope": scope, "unit": USD}
    calls = [
        ("createTenant", "POST", "/v1/admin/tenants", {}, {"tenant_id": unique("aud-"), "name": "x"},
         {"tenant_id": "BAD", "name": "x"}),
        ("listTenants", "GET", "/v1/admin/tenants", {}, None, None),
        ("getTenant", "GET", f"/v1/admin/tenants/{tenant_id}", {}, None, None),
        ("updateTenant", "PATCH", f"/v1/admin/tenants/{tenant_id}", {}, {"name": "n"}, {"name": ""}),
        ("bulkActionTenants", "POST", "/v1/admin/tenants/bulk-action", {},
         {"filter": {"search": unique("none-")}, "action": "SUSPEND", "idempotency_key": unique("k")},
         {"filter": {}, "action": "SUSPEND", "idempotency_key": "k"}),
        ("createApiKey", "POST", "/v1/admin/api-keys", {}, {"tenant_id": tenant_id, "name": "x"},
         {"tenant_id": tenant_id, "name": "x", "permissions": ["nope"]}),
        ("listApiKeys", "GET", "/v1/admin/api-keys", {"tenant_id": tenant_id}, None, None),
        ("getApiKey", "GET", f"/v1/admin/api-keys/{key_id}", {}, None, None),
        ("updateApiKey", "PATCH", f"/v1/admin/api-keys/{key_id}", {}, {"name": "y"}, {"status": "ACTIVE"}),
        ("createBudget", "POST", "/v1/admin/budgets", {},
         {"tenant_id": tenant_id, "scope": f"{scope}/agent:a", "unit": USD, "allocated": {"amount": 1, "unit": USD}},
         {"tenant_id": tenant_id, "scope": "bad", "unit": USD, "allocated": {"amount": 1, "unit": USD}}),
        ("listBudgets", "GET", "/v1/admin/budgets", {"tenant_id": tenant_id}, None, None),
        ("lookupBudget", "GET", "/v1/admin/budgets/lookup", target, None, None),
        ("updateBudget", "PATCH", "/v1/admin/budgets", target, {"metadata": {}}, {"metadata": 1}),
        ("freezeBudget", "POST", "/v1/admin/budgets/freeze", target, {}, {"colour": 1}),
        ("unfreezeBudget", "POST", "/v1/admin/budgets/unfreeze", target, {}, {"colour": 1}),
        ("fundBudget", "POST", "/v1/admin/budgets/fund", {**target, "tenant_id": tenant_id},
         {"operation": "CREDIT", "amount": {"amount": 1, "unit": USD}, "idempotency_key": unique("f")},
         {"operation": "CREDIT", "amount": {"amount": -1, "unit": USD}, "idempotency_key": "f"}),
        ("bulkActionBudgets", "POST", "/v1/admin/budgets/bulk-action", {},
         {"filter": {"tenant_id": tenant_id}, "action": "CREDIT", "amount": {"amount": 1, "unit": USD},
          "idempotency_key": unique("b")},
         {"filter": {"tenant_id": tenant_id}, "action": "CREDIT", "idempotency_key": "b"}),
        ("listAuditLogs", "GET", "/v1/admin/audit/logs", {"tenant_id": tenant_id}, None, None),
        ("revokeApiKey", "DELETE", f"/v1/admin/api-keys/{key_id}", {}, None, None),
    ]
    for operation, method, path, params, good, bad in calls:
        response = http.request(method, path, params=params, headers=admin, json=good)
        assert response.status_code < 300, (operation, response.text)
        audit = one_audit_row(admin_conn, response)
        assert (audit["operation"], audit["status"], audit["error_code"]) == (
            operation, response.status_code, None)
        if bad is not None:
            refused = http.request(method, path, params=params, headers=admin, json=bad)
            expect_error(refused, 400, "INVALID_REQUEST")
            failure = one_audit_row(admin_conn, refused)
            assert (failure["operation"], failure["status"], failure["error_code"]) == (
                operation, 400, "INVALID_REQUEST")
        unauthenticated = http.request(method, path, params=params, json=good)
        expect_error(unauthenticated, 401, "UNAUTHORIZED")
        unauth_row = one_audit_row(admin_conn, unauthenticated)
        assert (unauth_row["operation"], unauth_row["tenant_id"]) == (operation, "__unauth__")


def test_admin_on_behalf_of_runtime_calls_are_audited(
    http: httpx.Client, api_server: ApiServer, admin_conn: Conn,
) -> None:
    tenant_id = create_tenant(http, api_server)
    secret = create_key(http, api_server, tenant_id)["key_secret"]
    create_budget(http, api_server, tenant_id, f"tenant:{tenant_id}", 10_000)
    tenant = Tenant(tenant_id, secret)
    reserved = http.post("/v1/reservations", headers=tenant.headers(), json=reserve_body(
        tenant, 100, subject={"tenant": tenant_id}))
    assert reserved.status_code == 200, reserved.text
    reservation_id = reserved.json()["reservation_id"]
    own = http.get(f"/v1/reservations/{reservation_id}", headers=tenant.headers())
    assert own.status_code == 200
    assert admin_conn.execute("SELECT count(*) FROM cycles.audit_logs WHERE request_id = %s",
                              (own.headers["x-request-id"],)).fetchone() == (0,)
    admin = admin_headers(api_server)
    got = http.get(f"/v1/reservations/{reservation_id}", headers=admin)
    listed = http.get("/v1/reservations", headers=admin, params={"tenant": tenant_id})
    released = http.post(f"/v1/reservations/{reservation_id}/release", headers=admin,
                         json={"idempotency_key": unique("rel-")})
    for response, operation in ((got, "getReservation"), (listed, "listReservations"),
                                (released, "releaseReservation")):
        assert response.status_code == 200, response.text
        audit = one_audit_row(admin_conn, response)
        assert (audit["operation"], audit["actor_type"], audit["tenant_id"]) == (
            operation, "admin_on_behalf_of", tenant_id)
    missing = http.get("/v1/reservations/res_missing", headers=admin)
    expect_error(missing, 404, "NOT_FOUND")
    failure = one_audit_row(admin_conn, missing)
    assert (failure["operation"], failure["actor_type"], failure["status"]) == (
        "getReservation", "admin_on_behalf_of", 404)
    again = http.post(f"/v1/reservations/{reservation_id}/release", headers=admin, json={"idempotency_key": ""})
    expect_error(again, 400, "INVALID_REQUEST")
    assert one_audit_row(admin_conn, again)["operation"] == "releaseReservation"


def test_audit_log_listing_over_rest(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    tenant_id = create_tenant(http, api_server)
    admin = admin_headers(api_server)
    expect_error(http.get(f"/v1/admin/tenants/{tenant_id}x", headers=admin), 404, "TENANT_NOT_FOUND")
    http.get(f"/v1/admin/tenants/{tenant_id}", headers=admin)
    logs = http.get("/v1/admin/audit/logs", headers=admin, params={"tenant_id": tenant_id}).json()["logs"]
    assert [log["operation"] for log in logs] == ["getTenant", "createTenant"]
    assert {"log_id", "timestamp", "tenant_id", "operation", "status", "request_id", "trace_id"} <= set(logs[0])
    failures = http.get("/v1/admin/audit/logs", headers=admin,
                        params={"tenant_id": f"{tenant_id}x", "status_min": "400"}).json()["logs"]
    assert [(log["operation"], log["error_code"]) for log in failures] == [("getTenant", "TENANT_NOT_FOUND")]
    page = http.get("/v1/admin/audit/logs", headers=admin, params={"tenant_id": tenant_id, "limit": "1"}).json()
    assert page["has_more"]
    second = http.get("/v1/admin/audit/logs", headers=admin,
                      params={"tenant_id": tenant_id, "cursor": page["next_cursor"]}).json()
    assert [log["operation"] for log in second["logs"]] == ["createTenant"]
    for params in ({"status": "200", "status_min": "100"}, {"status": "99"}, {"from": "nope"}, {"limit": "0"}):
        expect_error(http.get("/v1/admin/audit/logs", headers=admin, params=params), 400, "INVALID_REQUEST")


def test_bulk_actions_over_rest(http: httpx.Client, api_server: ApiServer, admin_conn: Conn) -> None:
    marker = unique("blk")
    ids = [create_tenant(http, api_server, f"{marker}-{i}") for i in range(3)]
    create_budget(http, api_server, ids[0], f"tenant:{ids[0]}", 100)
    admin = admin_headers(api_server)
    body = {"filter": {"search": marker}, "action": "SUSPEND", "expected_count": 4, "idempotency_key": marker}
    mismatch = http.post("/v1/admin/tenants/bulk-action", headers=admin, json=body)
    expect_error(mismatch, 409, "COUNT_MISMATCH")
    assert admin_conn.execute("SELECT count(*) FROM cycles.tenants WHERE tenant_id LIKE %s AND status = 'ACTIVE'",
                              (f"{marker}%",)).fetchone() == (3,)
    done = http.post("/v1/admin/tenants/bulk-action", headers=admin, json={**body, "expected_count": 3})
    assert done.status_code == 200, done.text
    assert done.json() == {"action": "SUSPEND", "total_matched": 3, "succeeded": [{"id": i} for i in ids],
                           "failed": [], "skipped": [], "idempotency_key": marker}
    replay = http.post("/v1/admin/tenants/bulk-action", headers=admin, json={**body, "expected_count": 3})
    assert replay.json() == done.json()
    expect_error(http.post("/v1/admin/tenants/bulk-action", headers=admin,
                           json={"filter": {"search": marker}, "action": "SUSPEND"}), 400, "INVALID_REQUEST")
    funded = http.post("/v1/admin/budgets/bulk-action", headers=admin, json={
        "filter": {"tenant_id": ids[0]}, "action": "CREDIT", "amount": {"amount": 5, "unit": USD},
        "idempotency_key": marker, "expected_count": 1, "reason": "bonus"})
    assert funded.status_code == 200, funded.text
    assert funded.json()["total_matched"] == 1 and len(funded.json()["succeeded"]) == 1
    assert admin_conn.execute("SELECT allocated FROM cycles.budgets WHERE tenant_id = %s",
                              (ids[0],)).fetchone() == (105,)
    audit = one_audit_row(admin_conn, funded)
    assert (audit["operation"], audit["tenant_id"]) == ("bulkActionBudgets", ids[0])
    expect_error(http.post("/v1/admin/budgets/bulk-action", headers=admin, json={
        "filter": {"tenant_id": ids[0]}, "action": "CREDIT", "idempotency_key": "x"}), 400, "INVALID_REQUEST")
