"""POST /v1/decide: 200 ALLOW or DENY, never a mutation (protocol checks, items 27 and 30)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.checks import DECIDE_KEYS, assert_error, assert_ok
from tests.api.provision import Tenant, funded_tenant, new_tenant, reserve_body, tenant_state


@pytest.fixture
def tenant(admin_conn: Any) -> Tenant:
    return funded_tenant(admin_conn)


def test_decide_allow_deny_and_replay(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    before = tenant_state(admin_conn, tenant.tenant_id)["budgets"]
    body = reserve_body(tenant, 100)
    first = http.post("/v1/decide", json=body, headers=tenant.headers())
    assert assert_ok(first, 200, DECIDE_KEYS, {"decision"})["decision"] == "ALLOW"
    replay = http.post("/v1/decide", json=body, headers=tenant.headers())
    assert replay.content == first.content
    denied = assert_ok(http.post("/v1/decide", json=reserve_body(tenant, 10**9), headers=tenant.headers()),
                       200, DECIDE_KEYS, {"decision"})
    assert (denied["decision"], denied["reason_code"]) == ("DENY", "BUDGET_EXCEEDED")
    assert tenant_state(admin_conn, tenant.tenant_id)["budgets"] == before


def test_decide_errors(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    assert_error(http.post("/v1/decide", json=reserve_body(tenant, 1, "TOKENS"), headers=tenant.headers()),
                 400, "UNIT_MISMATCH")
    other = new_tenant(admin_conn)
    body = reserve_body(tenant, subject={"tenant": other.tenant_id})
    assert_error(http.post("/v1/decide", json=body, headers=tenant.headers()), 403, "FORBIDDEN")
    body = reserve_body(tenant)
    http.post("/v1/decide", json=body, headers=tenant.headers())
    changed = dict(body, estimate={"unit": "USD_MICROCENTS", "amount": 2})
    assert_error(http.post("/v1/decide", json=changed, headers=tenant.headers()), 409, "IDEMPOTENCY_MISMATCH")


def test_decide_without_budget_is_a_deny(http: httpx.Client, admin_conn: Any) -> None:
    tenant = new_tenant(admin_conn)
    response = http.post("/v1/decide", json=reserve_body(tenant), headers=tenant.headers())
    document = assert_ok(response, 200, DECIDE_KEYS, {"decision"})
    assert (document["decision"], document["reason_code"]) == ("DENY", "BUDGET_NOT_FOUND")
