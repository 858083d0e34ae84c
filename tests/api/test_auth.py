"""Authentication at the HTTP edge: which header each endpoint accepts, and
what a missing or wrong credential gets (protocol checks, items 1 and 50)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.checks import RELEASE_KEYS, assert_error, assert_ok
from tests.api.conftest import ApiServer
from tests.api.provision import (
    USD,
    Tenant,
    event_body,
    funded_tenant,
    reservation_status,
    reserve_body,
    tenant_state,
    unique,
)


@pytest.fixture
def tenant(admin_conn: Any) -> Tenant:
    return funded_tenant(admin_conn)


@pytest.fixture
def reservation_id(http: httpx.Client, tenant: Tenant) -> str:
    response = http.post("/v1/reservations", json=reserve_body(tenant, 100), headers=tenant.headers())
    assert response.status_code == 200, response.text
    value: str = response.json()["reservation_id"]
    return value


def _requests(tenant: Tenant, reservation_id: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("POST", "/v1/reservations", reserve_body(tenant)),
        ("POST", f"/v1/reservations/{reservation_id}/commit",
         {"idempotency_key": unique("c-"), "actual": {"unit": USD, "amount": 1}}),
        ("POST", f"/v1/reservations/{reservation_id}/release", {"idempotency_key": unique("r-")}),
        ("POST", f"/v1/reservations/{reservation_id}/extend", {"idempotency_key": unique("e-"), "extend_by_ms": 1000}),
        ("POST", "/v1/decide", reserve_body(tenant)),
        ("POST", "/v1/events", event_body(tenant)),
        ("GET", f"/v1/balances?tenant={tenant.tenant_id}", None),
        ("GET", "/v1/reservations", None),
        ("GET", f"/v1/reservations/{reservation_id}", None),
        ("GET", "/v1/auth/introspect", None),
    ]


@pytest.mark.parametrize("headers", [
    {},
    {"X-Cycles-API-Key": ""},
    {"X-Cycles-API-Key": "cyc_live_not-a-real-key"},
    {"X-Cycles-API-Key": "k" * 600},
])
def test_missing_or_unknown_key_is_401_everywhere(
    http: httpx.Client, admin_conn: Any, tenant: Tenant, reservation_id: str, headers: dict[str, str],
) -> None:
    before = tenant_state(admin_conn, tenant.tenant_id)
    for method, path, body in _requests(tenant, reservation_id):
        response = http.request(method, path, json=body, headers=headers)
        assert_error(response, 401, "UNAUTHORIZED")
    assert tenant_state(admin_conn, tenant.tenant_id) == before


def test_revoked_key_is_401(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    key_id = admin_conn.execute(
        "SELECT key_id FROM cycles.api_keys WHERE tenant_id = %s", (tenant.tenant_id,)).fetchone()[0]
    admin_conn.execute("SELECT cycles.revoke_api_key(p_key_id => %s)", (key_id,))
    response = http.post("/v1/reservations", json=reserve_body(tenant), headers=tenant.headers())
    assert_error(response, 401, "UNAUTHORIZED")


def test_admin_key_alone_cannot_mutate_except_release(
    http: httpx.Client, api_server: ApiServer, admin_conn: Any, tenant: Tenant, reservation_id: str,
) -> None:
    admin = {"X-Admin-API-Key": api_server.admin_key}
    before = tenant_state(admin_conn, tenant.tenant_id)
    for method, path, body in _requests(tenant, reservation_id):
        if path.endswith("/release") or (method == "GET" and "/v1/reservations" in path):
            continue
        response = http.request(method, path, json=body, headers=admin)
        assert_error(response, 401, "UNAUTHORIZED")
    assert tenant_state(admin_conn, tenant.tenant_id) == before
    assert reservation_status(admin_conn, reservation_id) == "ACTIVE"


def test_admin_key_releases_on_behalf_of_the_tenant(
    http: httpx.Client, api_server: ApiServer, admin_conn: Any, tenant: Tenant, reservation_id: str,
) -> None:
    response = http.post(f"/v1/reservations/{reservation_id}/release", json={"idempotency_key": unique("r-")},
                         headers={"X-Admin-API-Key": api_server.admin_key})
    released = assert_ok(response, 200, RELEASE_KEYS, {"status", "released"})
    assert released["status"] == "RELEASED"
    actors = admin_conn.execute(
        "SELECT DISTINCT actor_type FROM cycles.ledger_entries WHERE reservation_id = %s AND operation = 'RELEASE'",
        (reservation_id,)).fetchall()
    assert actors == [("admin_on_behalf_of",)]


def test_wrong_admin_key_is_401(
    http: httpx.Client, api_server: ApiServer, admin_conn: Any, tenant: Tenant, reservation_id: str,
) -> None:
    for wrong in ("nope", api_server.admin_key + "x", api_server.admin_key[:-1]):
        headers = {"X-Admin-API-Key": wrong}
        release = http.post(f"/v1/reservations/{reservation_id}/release",
                            json={"idempotency_key": unique("r-")}, headers=headers)
        assert_error(release, 401, "UNAUTHORIZED")
        assert_error(http.get(f"/v1/reservations/{reservation_id}", headers=headers), 401, "UNAUTHORIZED")
        assert_error(http.get(f"/v1/reservations?tenant={tenant.tenant_id}", headers=headers), 401, "UNAUTHORIZED")
    assert reservation_status(admin_conn, reservation_id) == "ACTIVE"


def test_admin_key_reads_any_tenants_reservations(
    http: httpx.Client, api_server: ApiServer, tenant: Tenant, reservation_id: str,
) -> None:
    admin = {"X-Admin-API-Key": api_server.admin_key}
    detail = http.get(f"/v1/reservations/{reservation_id}", headers=admin)
    assert detail.status_code == 200, detail.text
    assert detail.json()["reservation_id"] == reservation_id
    listed = http.get(f"/v1/reservations?tenant={tenant.tenant_id}", headers=admin)
    assert listed.status_code == 200, listed.text
    assert [row["reservation_id"] for row in listed.json()["reservations"]] == [reservation_id]
    assert_error(http.get("/v1/reservations", headers=admin), 400, "INVALID_REQUEST", "tenant")


def test_api_key_wins_over_admin_key(
    http: httpx.Client, api_server: ApiServer, admin_conn: Any, reservation_id: str,
) -> None:
    """With both headers the request acts as the API key's tenant: another
    tenant's key cannot borrow the admin key's reach."""
    other = funded_tenant(admin_conn)
    response = http.get(f"/v1/reservations/{reservation_id}",
                        headers={**other.headers(), "X-Admin-API-Key": api_server.admin_key})
    assert_error(response, 403, "FORBIDDEN")


def test_introspect(http: httpx.Client, tenant: Tenant) -> None:
    response = http.get("/v1/auth/introspect", headers=tenant.headers())
    assert response.status_code == 200, response.text
    assert response.json()["tenant_id"] == tenant.tenant_id
