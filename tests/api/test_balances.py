"""GET /v1/balances: shape, filters and tenancy (protocol checks, items 4 and 5)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.checks import BALANCES_KEYS, assert_error, assert_ok
from tests.api.provision import funded_tenant, new_tenant, reserve_body


def test_balances_of_the_callers_scopes(http: httpx.Client, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    assert http.post("/v1/reservations", json=reserve_body(tenant, 1000), headers=tenant.headers()).status_code == 200
    response = http.get("/v1/balances", params={"workspace": "w1"}, headers=tenant.headers())
    document = assert_ok(response, 200, BALANCES_KEYS, {"balances"})
    by_scope = {balance["scope_path"]: balance for balance in document["balances"]}
    workspace = by_scope[f"{tenant.scope}/workspace:w1"]
    assert workspace["remaining"] == {"unit": "USD_MICROCENTS", "amount": 99_000}
    assert workspace["reserved"] == {"unit": "USD_MICROCENTS", "amount": 1000}
    everything = assert_ok(http.get(f"/v1/balances?tenant={tenant.tenant_id}&include_children=true",
                                    headers=tenant.headers()), 200, BALANCES_KEYS, {"balances"})
    assert {b["scope_path"] for b in everything["balances"]} >= {tenant.scope, f"{tenant.scope}/workspace:w1"}


def test_balances_of_another_tenant_is_403(http: httpx.Client, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    other = new_tenant(admin_conn)
    assert_error(http.get(f"/v1/balances?tenant={other.tenant_id}", headers=tenant.headers()), 403, "FORBIDDEN")
