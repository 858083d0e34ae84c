"""Reservation lifecycle over HTTP: status codes, exact response shapes, and
the HTTP mapping of every error the reservation endpoints return."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.api.checks import (
    COMMIT_KEYS,
    CREATE_KEYS,
    EXTEND_KEYS,
    LIST_KEYS,
    RELEASE_KEYS,
    SUMMARY_KEYS,
    SUMMARY_REQUIRED,
    assert_amount,
    assert_error,
    assert_keys,
    assert_ok,
)
from tests.api.provision import (
    USD,
    Tenant,
    budget,
    create_budget,
    funded_tenant,
    new_api_key,
    new_tenant,
    reservation_status,
    reserve_body,
    tenant_state,
    unique,
)


@pytest.fixture
def tenant(admin_conn: Any) -> Tenant:
    return funded_tenant(admin_conn)


def reserve(http: httpx.Client, tenant: Tenant, amount: int = 1000, **fields: Any) -> dict[str, Any]:
    response = http.post("/v1/reservations", json=reserve_body(tenant, amount, **fields), headers=tenant.headers())
    return assert_ok(response, 200, CREATE_KEYS, {"decision", "affected_scopes"})


def commit_body(amount: int, unit: str = USD, **fields: Any) -> dict[str, Any]:
    return {"idempotency_key": unique("c-"), "actual": {"unit": unit, "amount": amount}, **fields}


def test_create_is_200_with_the_exact_shape(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    # protocol checks, items 13 and 14
    created = reserve(http, tenant, 1000)
    assert created["decision"] == "ALLOW"
    assert created["reservation_id"]
    assert created["affected_scopes"] == [tenant.scope, f"{tenant.scope}/workspace:w1"]
    assert created["scope_path"] == f"{tenant.scope}/workspace:w1"
    assert_amount(created["reserved"], USD, 1000)
    assert isinstance(created["expires_at_ms"], int)
    assert "caps" not in created
    for scope in created["affected_scopes"]:
        assert budget(admin_conn, scope)["reserved"] == 1000


def test_commit_release_replay_and_finalized(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    # protocol checks, items 15-17
    reservation_id = reserve(http, tenant, 1000)["reservation_id"]
    body = commit_body(600, metadata={"run": 1}, metrics={"tokens_input": 10, "model_version": "m1"})
    first = http.post(f"/v1/reservations/{reservation_id}/commit", json=body, headers=tenant.headers())
    committed = assert_ok(first, 200, COMMIT_KEYS, {"status", "charged"})
    assert committed["status"] == "COMMITTED"
    assert_amount(committed["charged"], USD, 600)
    assert_amount(committed["released"], USD, 400)
    workspace = budget(admin_conn, f"{tenant.scope}/workspace:w1")
    assert (workspace["spent"], workspace["reserved"]) == (600, 0)

    state = tenant_state(admin_conn, tenant.tenant_id)
    replay = http.post(f"/v1/reservations/{reservation_id}/commit", json=body, headers=tenant.headers())
    assert replay.status_code == 200
    assert replay.content == first.content
    assert tenant_state(admin_conn, tenant.tenant_id) == state

    mismatch = dict(body, actual={"unit": USD, "amount": 700})
    assert_error(http.post(f"/v1/reservations/{reservation_id}/commit", json=mismatch, headers=tenant.headers()),
                 409, "IDEMPOTENCY_MISMATCH")
    for operation, follow_up in [
        ("commit", commit_body(10)),
        ("release", {"idempotency_key": unique("r-")}),
        ("extend", {"idempotency_key": unique("e-"), "extend_by_ms": 1000}),
    ]:
        response = http.post(f"/v1/reservations/{reservation_id}/{operation}", json=follow_up,
                             headers=tenant.headers())
        assert_error(response, 409, "RESERVATION_FINALIZED")
    assert tenant_state(admin_conn, tenant.tenant_id) == state


def test_release_returns_the_estimate(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    # protocol checks, item 18
    before = budget(admin_conn, tenant.scope)
    reservation_id = reserve(http, tenant, 700)["reservation_id"]
    body = {"idempotency_key": unique("r-"), "reason": "not needed"}
    response = http.post(f"/v1/reservations/{reservation_id}/release", json=body, headers=tenant.headers())
    released = assert_ok(response, 200, RELEASE_KEYS, {"status", "released"})
    assert released["status"] == "RELEASED"
    assert_amount(released["released"], USD, 700)
    assert budget(admin_conn, tenant.scope) == before
    replay = http.post(f"/v1/reservations/{reservation_id}/release", json=body, headers=tenant.headers())
    assert replay.content == response.content


def test_extend_moves_the_deadline(http: httpx.Client, tenant: Tenant) -> None:
    # protocol checks, item 37
    created = reserve(http, tenant, 10)
    body = {"idempotency_key": unique("e-"), "extend_by_ms": 30_000}
    response = http.post(f"/v1/reservations/{created['reservation_id']}/extend", json=body,
                         headers=tenant.headers())
    extended = assert_ok(response, 200, EXTEND_KEYS, {"status", "expires_at_ms"})
    assert extended["status"] == "ACTIVE"
    assert extended["expires_at_ms"] == created["expires_at_ms"] + 30_000
    replay = http.post(f"/v1/reservations/{created['reservation_id']}/extend", json=body,
                       headers=tenant.headers())
    assert replay.json()["expires_at_ms"] == extended["expires_at_ms"]


def test_eleventh_extension_is_409(http: httpx.Client, tenant: Tenant) -> None:
    # protocol checks, item 38 (tenant default: 10 extensions)
    reservation_id = reserve(http, tenant, 10)["reservation_id"]
    for _ in range(10):
        response = http.post(f"/v1/reservations/{reservation_id}/extend",
                             json={"idempotency_key": unique("e-"), "extend_by_ms": 1000}, headers=tenant.headers())
        assert response.status_code == 200, response.text
    response = http.post(f"/v1/reservations/{reservation_id}/extend",
                         json={"idempotency_key": unique("e-"), "extend_by_ms": 1000}, headers=tenant.headers())
    assert_error(response, 409, "MAX_EXTENSIONS_EXCEEDED")


@pytest.mark.parametrize(("method", "suffix", "body"), [
    ("POST", "/commit", commit_body(1)),
    ("POST", "/release", {"idempotency_key": "k"}),
    ("POST", "/extend", {"idempotency_key": "k", "extend_by_ms": 1000}),
    ("GET", "", None),
])
def test_unknown_reservation_is_404(
    http: httpx.Client, tenant: Tenant, method: str, suffix: str, body: dict[str, Any] | None,
) -> None:
    # protocol checks, item 19
    response = http.request(method, f"/v1/reservations/res_doesnotexist{suffix}", json=body,
                            headers=tenant.headers())
    assert_error(response, 404, "NOT_FOUND")


@pytest.mark.parametrize(("method", "suffix", "body"), [
    ("POST", "/commit", commit_body(1)),
    ("POST", "/release", {"idempotency_key": "k"}),
    ("POST", "/extend", {"idempotency_key": "k", "extend_by_ms": 1000}),
    ("GET", "", None),
])
def test_another_tenants_reservation_is_403(
    http: httpx.Client, admin_conn: Any, tenant: Tenant, method: str, suffix: str, body: dict[str, Any] | None,
) -> None:
    # protocol checks, item 3
    reservation_id = reserve(http, tenant, 10)["reservation_id"]
    other = funded_tenant(admin_conn)
    response = http.request(method, f"/v1/reservations/{reservation_id}{suffix}", json=body,
                            headers=other.headers())
    assert_error(response, 403, "FORBIDDEN")
    assert reservation_status(admin_conn, reservation_id) == "ACTIVE"


def test_commit_in_another_unit_is_unit_mismatch(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    # protocol checks, item 20
    reservation_id = reserve(http, tenant, 10)["reservation_id"]
    response = http.post(f"/v1/reservations/{reservation_id}/commit", json=commit_body(5, "TOKENS"),
                         headers=tenant.headers())
    assert_error(response, 400, "UNIT_MISMATCH")
    assert reservation_status(admin_conn, reservation_id) == "ACTIVE"


def test_reserve_replay_and_mismatch(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    # protocol checks, item 21
    body = reserve_body(tenant, 100)
    first = http.post("/v1/reservations", json=body, headers=tenant.headers())
    assert first.status_code == 200
    state = tenant_state(admin_conn, tenant.tenant_id)
    replay = http.post("/v1/reservations", json=body, headers=tenant.headers())
    assert replay.json()["reservation_id"] == first.json()["reservation_id"]
    assert tenant_state(admin_conn, tenant.tenant_id) == state
    changed = dict(body, estimate={"unit": USD, "amount": 101})
    assert_error(http.post("/v1/reservations", json=changed, headers=tenant.headers()), 409, "IDEMPOTENCY_MISMATCH")


def test_over_budget_is_409_and_changes_nothing(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    # protocol checks, items 8 and 24
    before = tenant_state(admin_conn, tenant.tenant_id)
    for amount in (100_001, 2**63 - 1):
        response = http.post("/v1/reservations", json=reserve_body(tenant, amount), headers=tenant.headers())
        assert_error(response, 409, "BUDGET_EXCEEDED")
    assert tenant_state(admin_conn, tenant.tenant_id)["budgets"] == before["budgets"]


def test_wrong_unit_is_unit_mismatch_with_details(http: httpx.Client, tenant: Tenant) -> None:
    # protocol checks, item 26
    response = http.post("/v1/reservations", json=reserve_body(tenant, 5, "TOKENS"), headers=tenant.headers())
    body = assert_error(response, 400, "UNIT_MISMATCH")
    assert USD in body["details"]["expected_units"]


def test_no_budget_is_404(http: httpx.Client, admin_conn: Any) -> None:
    # protocol checks, item 27
    tenant = new_tenant(admin_conn)
    response = http.post("/v1/reservations", json=reserve_body(tenant), headers=tenant.headers())
    assert_error(response, 404, "NOT_FOUND")


def test_subject_of_another_tenant_is_403(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    # protocol checks, item 2
    other = funded_tenant(admin_conn)
    before = tenant_state(admin_conn, other.tenant_id)
    body = reserve_body(tenant, subject={"tenant": other.tenant_id, "workspace": "w1"})
    assert_error(http.post("/v1/reservations", json=body, headers=tenant.headers()), 403, "FORBIDDEN")
    assert tenant_state(admin_conn, other.tenant_id) == before


def test_dry_run_changes_nothing(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    # protocol checks, item 29
    before = tenant_state(admin_conn, tenant.tenant_id)["budgets"]
    allowed = reserve(http, tenant, 100, dry_run=True)
    assert allowed["decision"] == "ALLOW"
    assert not {"reservation_id", "expires_at_ms", "remaining_ttl_ms"} & set(allowed)
    denied = reserve(http, tenant, 10**9, dry_run=True)
    assert denied["decision"] == "DENY"
    assert denied["reason_code"] == "BUDGET_EXCEEDED"
    assert tenant_state(admin_conn, tenant.tenant_id)["budgets"] == before


def test_commit_over_estimate_with_reject_is_409(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    # protocol checks, item 31
    reservation_id = reserve(http, tenant, 100, overage_policy="REJECT")["reservation_id"]
    response = http.post(f"/v1/reservations/{reservation_id}/commit", json=commit_body(150),
                         headers=tenant.headers())
    assert_error(response, 409, "BUDGET_EXCEEDED")
    assert reservation_status(admin_conn, reservation_id) == "ACTIVE"


def test_overdraft_and_debt(http: httpx.Client, admin_conn: Any) -> None:
    # protocol checks, items 34-36
    tenant = new_tenant(admin_conn)
    create_budget(admin_conn, tenant.scope, 1_000, overdraft_limit=500)
    too_much = reserve(http, tenant, 1000, overage_policy="ALLOW_WITH_OVERDRAFT")["reservation_id"]
    response = http.post(f"/v1/reservations/{too_much}/commit", json=commit_body(1600), headers=tenant.headers())
    assert_error(response, 409, "OVERDRAFT_LIMIT_EXCEEDED")
    assert reservation_status(admin_conn, too_much) == "ACTIVE"

    response = http.post(f"/v1/reservations/{too_much}/commit", json=commit_body(1400), headers=tenant.headers())
    assert_amount(assert_ok(response, 200, COMMIT_KEYS, {"status", "charged"})["charged"], USD, 1400)
    assert budget(admin_conn, tenant.scope)["debt"] == 400
    response = http.post("/v1/reservations", json=reserve_body(tenant, 1), headers=tenant.headers())
    # debt within the overdraft limit: the spec leaves the code open
    assert response.status_code == 409
    assert response.json()["error"] in ("DEBT_OUTSTANDING", "BUDGET_EXCEEDED")

    # Lowering the limit below the debt puts the scope over its limit.
    admin_conn.execute("SELECT cycles.update_budget(p_scope => %s, p_unit => %s, p_patch => %s)",
                       (tenant.scope, USD, '{"overdraft_limit": 100}'))
    response = http.post("/v1/reservations", json=reserve_body(tenant, 1), headers=tenant.headers())
    assert_error(response, 409, "OVERDRAFT_LIMIT_EXCEEDED")


def test_debt_without_overdraft_is_debt_outstanding(http: httpx.Client, admin_conn: Any) -> None:
    tenant = new_tenant(admin_conn)
    create_budget(admin_conn, tenant.scope, 1_000)
    # Debt with no overdraft allowance and not flagged over the limit: a state
    # the reservation path must report as DEBT_OUTSTANDING. Set directly,
    # keeping the remaining identity.
    admin_conn.execute(
        "UPDATE cycles.budgets SET debt = 10, remaining = remaining - 10 WHERE scope = %s", (tenant.scope,))
    response = http.post("/v1/reservations", json=reserve_body(tenant, 1), headers=tenant.headers())
    assert_error(response, 409, "DEBT_OUTSTANDING")


@pytest.mark.parametrize(("function", "error"), [
    ("freeze_budget", "BUDGET_FROZEN"), ("close_budget", "BUDGET_CLOSED"),
])
def test_frozen_and_closed_budgets_are_409(
    http: httpx.Client, admin_conn: Any, tenant: Tenant, function: str, error: str,
) -> None:
    admin_conn.execute(f"SELECT cycles.{function}(p_scope => %s, p_unit => %s)",
                       (f"{tenant.scope}/workspace:w1", USD))
    assert_error(http.post("/v1/reservations", json=reserve_body(tenant), headers=tenant.headers()), 409, error)


def test_closed_tenant_is_409(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    """The window between a tenant's CLOSED flip and the revocation of its
    keys: mutations answer 409 TENANT_CLOSED."""
    admin_conn.execute(
        "UPDATE cycles.tenants SET status = 'CLOSED', closed_at = clock_timestamp() WHERE tenant_id = %s",
        (tenant.tenant_id,))
    assert_error(http.post("/v1/reservations", json=reserve_body(tenant), headers=tenant.headers()),
                 409, "TENANT_CLOSED")


def test_key_without_permission_is_403(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    reader = Tenant(tenant.tenant_id, new_api_key(admin_conn, tenant.tenant_id, ["balances:read"]))
    assert_error(http.post("/v1/reservations", json=reserve_body(reader), headers=reader.headers()),
                 403, "FORBIDDEN")


def test_expired_reservation_is_410(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    # protocol checks, item 40: ttl 1000, grace 0, then the sweeper expires it
    created = reserve(http, tenant, 250, ttl_ms=1000, grace_period_ms=0)
    reservation_id = created["reservation_id"]
    deadline = time.monotonic() + 20
    while reservation_status(admin_conn, reservation_id) != "EXPIRED":
        assert time.monotonic() < deadline, "the sweeper never expired the reservation"
        time.sleep(0.2)
    assert budget(admin_conn, tenant.scope)["reserved"] == 0
    for operation, body in [("commit", commit_body(1)), ("release", {"idempotency_key": unique("r-")}),
                            ("extend", {"idempotency_key": unique("e-"), "extend_by_ms": 1000})]:
        response = http.post(f"/v1/reservations/{reservation_id}/{operation}", json=body,
                             headers=tenant.headers())
        assert_error(response, 410, "RESERVATION_EXPIRED")
    assert_error(http.get(f"/v1/reservations/{reservation_id}", headers=tenant.headers()),
                 410, "RESERVATION_EXPIRED")
    listed = http.get("/v1/reservations?status=EXPIRED", headers=tenant.headers())
    assert [row["reservation_id"] for row in listed.json()["reservations"]] == [reservation_id]


def test_get_and_list(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    # protocol checks, items 44 and 47
    body = reserve_body(tenant, 300, metadata={"run": "r1"},
                        subject=tenant.subject(workspace="w1", dimensions={"team": "blue"}))
    reservation_id = http.post("/v1/reservations", json=body, headers=tenant.headers()).json()["reservation_id"]
    http.post(f"/v1/reservations/{reservation_id}/commit", json=commit_body(200), headers=tenant.headers())

    detail = assert_ok(http.get(f"/v1/reservations/{reservation_id}", headers=tenant.headers()), 200,
                       SUMMARY_KEYS, SUMMARY_REQUIRED | {"committed", "finalized_at_ms"})
    assert detail["status"] == "COMMITTED"
    assert detail["subject"]["dimensions"] == {"team": "blue"}
    assert detail["metadata"] == {"run": "r1"}
    assert_amount(detail["committed"], USD, 200)

    listed = assert_ok(http.get("/v1/reservations", params={"idempotency_key": body["idempotency_key"]},
                                headers=tenant.headers()), 200, LIST_KEYS, {"reservations"})
    assert [row["reservation_id"] for row in listed["reservations"]] == [reservation_id]
    for row in listed["reservations"]:
        assert_keys(row, SUMMARY_KEYS, SUMMARY_REQUIRED)
    active = http.get("/v1/reservations?status=ACTIVE", headers=tenant.headers()).json()
    assert all(row["status"] == "ACTIVE" for row in active["reservations"])


def test_list_pages(http: httpx.Client, tenant: Tenant) -> None:
    # protocol checks, item 45
    ids = {reserve(http, tenant, 1)["reservation_id"] for _ in range(5)}
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = assert_ok(http.get("/v1/reservations", params=params, headers=tenant.headers()), 200,
                         LIST_KEYS, {"reservations"})
        assert len(page["reservations"]) <= 2
        seen += [row["reservation_id"] for row in page["reservations"]]
        if not page.get("has_more"):
            assert "next_cursor" not in page
            break
        cursor = page["next_cursor"]
    assert sorted(seen) == sorted(ids)


@pytest.mark.parametrize("query", ["from=not-a-date", "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z"])
def test_list_time_window_errors(http: httpx.Client, tenant: Tenant, query: str) -> None:
    # protocol checks, item 46
    assert_error(http.get(f"/v1/reservations?{query}", headers=tenant.headers()), 400, "INVALID_REQUEST")


def test_list_for_another_tenant_is_403(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    other = new_tenant(admin_conn)
    response = http.get(f"/v1/reservations?tenant={other.tenant_id}", headers=tenant.headers())
    assert_error(response, 403, "FORBIDDEN")
