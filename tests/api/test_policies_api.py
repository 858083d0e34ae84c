"""Policies over REST and their effect on the runtime: create/list/get/patch
under both credentials, validation, tenant isolation, and caps reaching
reserve, dry_run, decide and the official client as ALLOW_WITH_CAPS."""

from __future__ import annotations

from typing import Any

import httpx
from runcycles import CyclesClient, CyclesConfig, cycles, get_cycles_context
from runcycles.models import Decision

from tests.api.checks import assert_error, assert_ok
from tests.api.conftest import ApiServer
from tests.api.provision import Tenant, funded_tenant, new_api_key, reserve_body, unique

POLICY_KEYS = {"policy_id", "name", "description", "scope_pattern", "priority", "caps", "commit_overage_policy",
               "reservation_ttl_override", "rate_limits", "status", "effective_from", "effective_until",
               "created_at", "updated_at"}
POLICY_REQUIRED = {"policy_id", "scope_pattern", "status", "created_at"}
CAPS = {"max_tokens": 4096, "max_steps_remaining": 3, "tool_allowlist": ["search"], "tool_denylist": ["shell"],
        "cooldown_ms": 100}


def admin_headers(api_server: ApiServer) -> dict[str, str]:
    return {"X-Admin-API-Key": api_server.admin_key}


def create(http: httpx.Client, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    return assert_ok(http.post("/v1/admin/policies", json=body, headers=headers), 201, POLICY_KEYS, POLICY_REQUIRED)


def policy_count(admin_conn: Any, tenant_id: str) -> int:
    row = admin_conn.execute("SELECT count(*) FROM cycles.policies WHERE tenant_id = %s", (tenant_id,)).fetchone()
    return int(row[0])


def test_tenant_key_creates_and_caps_reach_reserve_dry_run_and_decide(http: httpx.Client, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    policy = create(http, tenant.headers(), name="eng caps", scope_pattern=f"{tenant.scope}/*", priority=5,
                    caps=CAPS, reservation_ttl_override={"default_ttl_ms": 5000})
    assert policy["caps"] == CAPS and policy["priority"] == 5 and policy["status"] == "ACTIVE"

    live = http.post("/v1/reservations", json=reserve_body(tenant), headers=tenant.headers()).json()
    assert live["decision"] == "ALLOW_WITH_CAPS" and live["caps"] == CAPS
    assert live["remaining_ttl_ms"] <= 5000  # the policy's default_ttl_ms
    dry = http.post("/v1/reservations", json=reserve_body(tenant, dry_run=True), headers=tenant.headers()).json()
    assert dry["decision"] == "ALLOW_WITH_CAPS" and dry["caps"] == CAPS and "reservation_id" not in dry
    decided = http.post("/v1/decide", json=reserve_body(tenant), headers=tenant.headers())
    assert decided.status_code == 200 and decided.json()["caps"] == CAPS
    # The tenant scope itself is outside tenant:<id>/*: a plain ALLOW, no caps key.
    top = http.post("/v1/decide", json=reserve_body(tenant, subject=tenant.subject()), headers=tenant.headers())
    assert top.json()["decision"] == "ALLOW" and "caps" not in top.json()


def test_caps_reach_the_official_client(api_server: ApiServer, admin_conn: Any, http: httpx.Client) -> None:
    tenant = funded_tenant(admin_conn)
    create(http, tenant.headers(), name="client caps", scope_pattern="workspace:w1", caps=CAPS)
    seen: dict[str, Any] = {}
    with CyclesClient(CyclesConfig(base_url=api_server.base_url, api_key=tenant.api_key, tenant=tenant.tenant_id,
                                   workspace="w1", retry_enabled=False, journal_enabled=False)) as client:

        @cycles(estimate=1_000, actual=500, action_kind="llm.completion", action_name="gpt-4o", client=client)
        def guarded() -> str:
            context = get_cycles_context()
            assert context is not None
            seen["decision"] = context.decision
            seen["caps"] = context.caps
            return "done"

        assert guarded() == "done"
    assert seen["decision"] == Decision.ALLOW_WITH_CAPS
    caps = seen["caps"]
    assert caps is not None and caps.max_tokens == 4096 and caps.tool_allowlist == ["search"]
    assert caps.is_tool_allowed("search") and not caps.is_tool_allowed("shell")


def test_admin_key_acts_on_behalf_of_a_named_tenant(api_server: ApiServer, http: httpx.Client,
                                                     admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    missing = http.post("/v1/admin/policies", json={"name": "p", "scope_pattern": "agent:*"},
                        headers=admin_headers(api_server))
    assert_error(missing, 400, "INVALID_REQUEST", "tenant_id")
    policy = create(http, admin_headers(api_server), tenant_id=tenant.tenant_id, name="p", scope_pattern="agent:*")
    audit = admin_conn.execute(
        "SELECT tenant_id, actor_type FROM cycles.audit_logs WHERE operation = 'createPolicy' AND resource_id = %s",
        (policy["policy_id"],)).fetchall()
    assert audit == [(tenant.tenant_id, "admin_on_behalf_of")]
    listed = http.get("/v1/admin/policies", headers=admin_headers(api_server))
    assert_error(listed, 400, "INVALID_REQUEST", "tenant_id")
    page = http.get("/v1/admin/policies", params={"tenant_id": tenant.tenant_id}, headers=admin_headers(api_server))
    body = assert_ok(page, 200, {"policies", "has_more", "next_cursor"}, {"policies", "has_more"})
    assert [p["policy_id"] for p in body["policies"]] == [policy["policy_id"]]
    # A tenant key may not name a tenant in the body, not even its own.
    own = http.post("/v1/admin/policies", json={"tenant_id": tenant.tenant_id, "name": "q", "scope_pattern": "*"},
                    headers=tenant.headers())
    assert_error(own, 400, "INVALID_REQUEST", "tenant_id")


def test_validation_errors_change_nothing(http: httpx.Client, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    bad_bodies: list[Any] = [
        {"scope_pattern": "agent:*"},
        {"name": "p"},
        {"name": "p", "scope_pattern": "agent:*", "priority": -1},
        {"name": "p", "scope_pattern": "agent:*", "surprise": 1},
        {"name": "p", "scope_pattern": "galaxy:*"},
        {"name": "p", "scope_pattern": "agent:*", "caps": {"max_tokens": -5}},
        {"name": "p", "scope_pattern": "agent:*", "caps": {"colour": "red"}},
        {"name": "p", "scope_pattern": "agent:*", "reservation_ttl_override": {"max_ttl_ms": 10}},
        {"name": "p", "scope_pattern": "agent:*", "commit_overage_policy": "MAYBE"},
        {"name": "p", "scope_pattern": "agent:*", "effective_from": "tomorrow"},
        {"name": "p", "scope_pattern": "agent:*", "effective_from": "2030-01-01T00:00:00"},
        {"name": "p", "scope_pattern": "tenant:someone-else/*"},
        [],
    ]
    for body in bad_bodies:
        assert_error(http.post("/v1/admin/policies", json=body, headers=tenant.headers()), 400, "INVALID_REQUEST")
    assert policy_count(admin_conn, tenant.tenant_id) == 0
    create(http, tenant.headers(), name="p", scope_pattern="agent:*")
    duplicate = http.post("/v1/admin/policies", json={"name": "p", "scope_pattern": "*"}, headers=tenant.headers())
    assert_error(duplicate, 409, "DUPLICATE_RESOURCE")
    assert policy_count(admin_conn, tenant.tenant_id) == 1


def test_patch_get_and_disable(http: httpx.Client, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    policy = create(http, tenant.headers(), name="p", scope_pattern="workspace:w1", caps={"max_tokens": 7})
    path = f"/v1/admin/policies/{policy['policy_id']}"
    got = assert_ok(http.get(path, headers=tenant.headers()), 200, POLICY_KEYS, POLICY_REQUIRED)
    assert got == policy
    for bad in ({"scope_pattern": "*"}, {"priority": "high"}, {"status": "GONE"}, {"caps": {"max_tokens": 1.5}}):
        assert_error(http.patch(path, json=bad, headers=tenant.headers()), 400, "INVALID_REQUEST")
    assert http.get(path, headers=tenant.headers()).json() == policy
    cleared = assert_ok(http.patch(path, json={"caps": None, "description": "no caps"}, headers=tenant.headers()),
                        200, POLICY_KEYS, POLICY_REQUIRED)
    assert "caps" not in cleared and cleared["description"] == "no caps"
    assert http.post("/v1/decide", json=reserve_body(tenant), headers=tenant.headers()).json()["decision"] == "ALLOW"
    http.patch(path, json={"caps": {"max_tokens": 8}}, headers=tenant.headers())
    assert http.post("/v1/decide", json=reserve_body(tenant), headers=tenant.headers()).json()["caps"] == {
        "max_tokens": 8}
    disabled = http.patch(path, json={"status": "DISABLED"}, headers=tenant.headers()).json()
    assert disabled["status"] == "DISABLED"
    assert http.post("/v1/decide", json=reserve_body(tenant), headers=tenant.headers()).json()["decision"] == "ALLOW"
    assert_error(http.get("/v1/admin/policies/pol_unknown", headers=tenant.headers()), 404, "NOT_FOUND")
    assert_error(http.patch("/v1/admin/policies/pol_unknown", json={}, headers=tenant.headers()), 404, "NOT_FOUND")


def test_tenants_are_isolated(http: httpx.Client, admin_conn: Any) -> None:
    owner = funded_tenant(admin_conn)
    other = funded_tenant(admin_conn)
    policy = create(http, owner.headers(), name="mine", scope_pattern="agent:*", caps={"max_tokens": 1})
    path = f"/v1/admin/policies/{policy['policy_id']}"
    assert_error(http.get(path, headers=other.headers()), 404, "NOT_FOUND")
    assert_error(http.patch(path, json={"priority": 9}, headers=other.headers()), 404, "NOT_FOUND")
    listed = http.get("/v1/admin/policies", params={"tenant_id": owner.tenant_id}, headers=other.headers()).json()
    assert listed["policies"] == []  # tenant_id is ignored for a tenant key: its own (none)
    decided = http.post("/v1/decide", json=reserve_body(other, subject=other.subject(workspace="w1", agent="a")),
                        headers=other.headers())
    assert decided.json()["decision"] == "ALLOW"
    assert http.get(path, headers=owner.headers()).json()["priority"] == 0


def test_permissions_and_credentials(http: httpx.Client, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    reader = Tenant(tenant.tenant_id, new_api_key(admin_conn, tenant.tenant_id, ["policies:read"]))
    runtime_only = Tenant(tenant.tenant_id, new_api_key(admin_conn, tenant.tenant_id, ["reservations:create"]))
    admin_writer = Tenant(tenant.tenant_id, new_api_key(admin_conn, tenant.tenant_id, ["admin:write"]))
    body = {"name": unique("p-"), "scope_pattern": "agent:*"}
    assert_error(http.post("/v1/admin/policies", json=body, headers=reader.headers()), 403, "INSUFFICIENT_PERMISSIONS")
    assert_error(http.get("/v1/admin/policies", headers=runtime_only.headers()), 403, "INSUFFICIENT_PERMISSIONS")
    assert policy_count(admin_conn, tenant.tenant_id) == 0
    create(http, admin_writer.headers(), **body)
    assert len(http.get("/v1/admin/policies", headers=reader.headers()).json()["policies"]) == 1
    assert_error(http.get("/v1/admin/policies"), 401, "UNAUTHORIZED")
    assert_error(http.get("/v1/admin/policies", headers={"X-Admin-API-Key": "wrong"}), 401, "UNAUTHORIZED")
    assert_error(http.get("/v1/admin/policies", headers={"X-Cycles-API-Key": "cyc_live_nope"}), 401, "UNAUTHORIZED")


def test_every_request_leaves_exactly_one_audit_row(api_server: ApiServer, http: httpx.Client,
                                                    admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    calls = [
        (http.post("/v1/admin/policies", json={"name": "a", "scope_pattern": "agent:*"}, headers=tenant.headers()),
         "createPolicy", 201, None),
        (http.post("/v1/admin/policies", json={"name": "b", "scope_pattern": "galaxy:*"}, headers=tenant.headers()),
         "createPolicy", 400, "INVALID_REQUEST"),
        (http.patch("/v1/admin/policies/pol_unknown", json={}, headers=tenant.headers()),
         "updatePolicy", 404, "NOT_FOUND"),
        (http.get("/v1/admin/events", headers=tenant.headers()), "listEvents", 403, "INSUFFICIENT_PERMISSIONS"),
        (http.get("/v1/admin/events", params={"tenant_id": tenant.tenant_id}, headers=admin_headers(api_server)),
         "listEvents", 200, None),
    ]
    for response, operation, status, error in calls:
        assert response.status_code == status, response.text
        rows = admin_conn.execute(
            "SELECT operation, status, error_code FROM cycles.audit_logs WHERE request_id = %s",
            (response.headers["x-request-id"],)).fetchall()
        assert rows == [(operation, status, error)], (operation, rows)
