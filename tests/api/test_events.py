"""POST /v1/events: 201, its exact shape, and its errors (protocol checks, items 41-43)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.checks import EVENT_KEYS, assert_amount, assert_error, assert_ok
from tests.api.provision import USD, Tenant, budget, event_body, funded_tenant, new_tenant, tenant_state


@pytest.fixture
def tenant(admin_conn: Any) -> Tenant:
    return funded_tenant(admin_conn)


def test_event_is_201_and_applied_once(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    body = event_body(tenant, 500, metrics={"latency_ms": 12}, client_time_ms=1_700_000_000_000)
    response = http.post("/v1/events", json=body, headers=tenant.headers())
    created = assert_ok(response, 201, EVENT_KEYS, {"status", "event_id"})
    assert created["status"] == "APPLIED"
    assert budget(admin_conn, tenant.scope)["spent"] == 500
    replay = http.post("/v1/events", json=body, headers=tenant.headers())
    assert replay.status_code == 201
    assert replay.json()["event_id"] == created["event_id"]
    assert budget(admin_conn, tenant.scope)["spent"] == 500


def test_event_over_remaining(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    before = tenant_state(admin_conn, tenant.tenant_id)
    rejected = http.post("/v1/events", json=event_body(tenant, 200_000, overage_policy="REJECT"),
                         headers=tenant.headers())
    assert_error(rejected, 409, "BUDGET_EXCEEDED")
    assert tenant_state(admin_conn, tenant.tenant_id) == before
    capped = http.post("/v1/events", json=event_body(tenant, 200_000), headers=tenant.headers())
    document = assert_ok(capped, 201, EVENT_KEYS, {"status", "event_id"})
    assert_amount(document["charged"], USD, 100_000)
    assert budget(admin_conn, f"{tenant.scope}/workspace:w1")["is_over_limit"] is True


def test_event_errors(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    assert_error(http.post("/v1/events", json=event_body(tenant, 5, "TOKENS"), headers=tenant.headers()),
                 400, "UNIT_MISMATCH")
    nobudget = new_tenant(admin_conn)
    assert_error(http.post("/v1/events", json=event_body(nobudget), headers=nobudget.headers()), 404, "NOT_FOUND")
    other = new_tenant(admin_conn)
    body = event_body(tenant, subject={"tenant": other.tenant_id})
    assert_error(http.post("/v1/events", json=body, headers=tenant.headers()), 403, "FORBIDDEN")
