"""Every runtime endpoint against a key holding exactly one permission, for
each of the 27 values of the spec's Permission enum: allowed exactly when
that permission grants the endpoint's requirement (the permission itself;
admin:read for a *:read requirement; admin:write for a *:write one), and a
refusal is a 403 that changes nothing. Revoked and expired keys get 401
everywhere.

Requirements: reservations:create (reserve, dry_run, decide),
reservations:commit (commit; POST /v1/events, which charges like a commit),
reservations:release, reservations:extend, reservations:list (list and get),
balances:read (GET /v1/balances), events:read (GET /v1/events)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.api.checks import assert_error
from tests.api.provision import (
    USD,
    Tenant,
    event_body,
    funded_tenant,
    new_api_key,
    reserve_body,
    tenant_state,
    unique,
)

PERMISSIONS = [
    "reservations:create", "reservations:commit", "reservations:release", "reservations:extend",
    "reservations:list", "balances:read", "budgets:read", "budgets:write", "policies:read", "policies:write",
    "webhooks:read", "webhooks:write", "events:read", "admin:read", "admin:write",
    "admin:tenants:read", "admin:tenants:write", "admin:budgets:read", "admin:budgets:write",
    "admin:policies:read", "admin:policies:write", "admin:apikeys:read", "admin:apikeys:write",
    "admin:webhooks:read", "admin:webhooks:write", "admin:events:read", "admin:audit:read",
]


@dataclass(frozen=True)
class Endpoint:
    name: str
    required: str
    # (http, tenant, key, reservation_id) -> response
    send: Callable[[httpx.Client, Tenant, str, str], httpx.Response]
    needs_reservation: bool = False
    refusal: str = "FORBIDDEN"


def _h(key: str) -> dict[str, str]:
    return {"X-Cycles-API-Key": key}


ENDPOINTS = [
    Endpoint("reserve", "reservations:create",
             lambda http, t, k, _: http.post("/v1/reservations", json=reserve_body(t), headers=_h(k))),
    Endpoint("dry_run", "reservations:create",
             lambda http, t, k, _: http.post("/v1/reservations", json=reserve_body(t, dry_run=True), headers=_h(k))),
    Endpoint("decide", "reservations:create",
             lambda http, t, k, _: http.post("/v1/decide", json=reserve_body(t), headers=_h(k))),
    Endpoint("commit", "reservations:commit",
             lambda http, t, k, r: http.post(f"/v1/reservations/{r}/commit", headers=_h(k), json={
                 "idempotency_key": unique("c-"), "actual": {"unit": USD, "amount": 10}}), needs_reservation=True),
    Endpoint("release", "reservations:release",
             lambda http, t, k, r: http.post(f"/v1/reservations/{r}/release", headers=_h(k),
                                             json={"idempotency_key": unique("r-")}), needs_reservation=True),
    Endpoint("extend", "reservations:extend",
             lambda http, t, k, r: http.post(f"/v1/reservations/{r}/extend", headers=_h(k), json={
                 "idempotency_key": unique("x-"), "extend_by_ms": 1000}), needs_reservation=True),
    Endpoint("list", "reservations:list",
             lambda http, t, k, _: http.get("/v1/reservations", headers=_h(k))),
    Endpoint("get", "reservations:list",
             lambda http, t, k, r: http.get(f"/v1/reservations/{r}", headers=_h(k)), needs_reservation=True),
    Endpoint("balances", "balances:read",
             lambda http, t, k, _: http.get("/v1/balances", params={"tenant": t.tenant_id}, headers=_h(k))),
    Endpoint("create_event", "reservations:commit",
             lambda http, t, k, _: http.post("/v1/events", json=event_body(t), headers=_h(k))),
    Endpoint("list_events", "events:read",
             lambda http, t, k, _: http.get("/v1/events", headers=_h(k)), refusal="INSUFFICIENT_PERMISSIONS"),
]


def grants(permission: str, required: str) -> bool:
    """The spec's rule: the permission itself, or a wildcard of the same kind.
    So admin:read grants balances:read and events:read but not
    reservations:list; admin:write grants no runtime endpoint (none requires a
    *:write); granular admin:* permissions grant nothing on the runtime plane."""
    return (permission == required
            or (permission == "admin:read" and required.endswith(":read"))
            or (permission == "admin:write" and required.endswith(":write")))


def _reservation(http: httpx.Client, tenant: Tenant) -> str:
    response = http.post("/v1/reservations", json=reserve_body(tenant, amount=100), headers=tenant.headers())
    assert response.status_code == 200, response.text
    reservation_id: str = response.json()["reservation_id"]
    return reservation_id


@pytest.fixture(scope="module")
def keyed_tenant(admin_conn: Any) -> tuple[Tenant, dict[str, str]]:
    """One funded tenant (its own key holds every runtime permission) and one
    key per Permission value holding only that permission."""
    tenant = funded_tenant(admin_conn)
    runtime = ["reservations:create", "reservations:commit", "reservations:release", "reservations:extend",
               "reservations:list", "balances:read"]
    tenant = Tenant(tenant.tenant_id, new_api_key(admin_conn, tenant.tenant_id, runtime))
    return tenant, {p: new_api_key(admin_conn, tenant.tenant_id, [p]) for p in PERMISSIONS}


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_each_permission_alone(
    endpoint: Endpoint, http: httpx.Client, admin_conn: Any, keyed_tenant: tuple[Tenant, dict[str, str]],
) -> None:
    tenant, keys = keyed_tenant
    shared = _reservation(http, tenant) if endpoint.needs_reservation else ""
    allowed = [p for p in PERMISSIONS if grants(p, endpoint.required)]
    assert endpoint.required in allowed
    for permission in PERMISSIONS:
        if permission in allowed:
            target = _reservation(http, tenant) if endpoint.needs_reservation else shared
            response = endpoint.send(http, tenant, keys[permission], target)
            assert response.status_code in (200, 201), (permission, response.status_code, response.text)
        else:
            before = tenant_state(admin_conn, tenant.tenant_id)
            response = endpoint.send(http, tenant, keys[permission], shared)
            document = assert_error(response, 403, endpoint.refusal)
            assert document["details"]["required_permission"] == endpoint.required, (permission, document)
            assert tenant_state(admin_conn, tenant.tenant_id) == before, permission


@pytest.mark.parametrize("state", ["revoked", "expired"])
def test_revoked_and_expired_keys_are_unauthorized_everywhere(
    state: str, http: httpx.Client, admin_conn: Any,
) -> None:
    tenant = funded_tenant(admin_conn)
    reservation_id = _reservation(http, tenant)
    key = new_api_key(admin_conn, tenant.tenant_id, PERMISSIONS)
    if state == "revoked":
        admin_conn.execute(
            "UPDATE cycles.api_keys SET status = 'REVOKED', revoked_at = clock_timestamp()"
            " WHERE key_hash = cycles._hash_secret(%s)", (key,))
    else:
        admin_conn.execute(
            "UPDATE cycles.api_keys SET created_at = clock_timestamp() - interval '2 days',"
            " expires_at = clock_timestamp() - interval '1 day' WHERE key_hash = cycles._hash_secret(%s)", (key,))
    before = tenant_state(admin_conn, tenant.tenant_id)
    for endpoint in ENDPOINTS:
        assert_error(endpoint.send(http, tenant, key, reservation_id), 401, "UNAUTHORIZED")
    assert tenant_state(admin_conn, tenant.tenant_id) == before
