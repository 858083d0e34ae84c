"""Lost responses: a client that never saw the answer to a mutating request
sends it again with the same idempotency key. Whatever happened to the first
one, the effects happen exactly once (budget counters, reservations, ledger
rows, events, tenant status) and every answer to the key is the same.

Two ways of losing the answer, for every mutating endpoint that takes an
idempotency key (runtime and admin):
- discarded: the answer arrived and was thrown away; the retry must answer
  the same body, and change nothing more;
- never read: the request was written to a socket that was closed at once
  (the server may still be running it when the retry arrives); the retry
  and a second retry answer the same body, and the end state is the one a
  single request leaves (compared with the discarded case, run on an
  identical tenant).

Endpoints without an idempotency key in the protocol are retried too: the
creations named by the client (tenant, budget) answer 409
DUPLICATE_RESOURCE and change nothing; state transitions answer the same
state or a clean refusal without another effect.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest

from tests.api.provision import USD, Conn, Tenant, create_budget, new_tenant, unique
from tests.reliability.workload import without_ttl
from tests.server import ApiServer


@dataclass(frozen=True)
class Request:
    path: str
    body: dict[str, Any]
    admin: bool = False
    params: dict[str, str] | None = None


Setup = Callable[[Conn, httpx.Client, Tenant], Request]


def _funded(conn: Conn) -> Tenant:
    tenant = new_tenant(conn)
    create_budget(conn, tenant.scope, 1_000_000, overdraft_limit=50_000)
    create_budget(conn, f"{tenant.scope}/workspace:w1", 100_000, overdraft_limit=50_000)
    return tenant


def _subject(tenant: Tenant) -> dict[str, str]:
    return {"tenant": tenant.tenant_id, "workspace": "w1"}


def _reserve_request(tenant: Tenant, amount: int = 10_000, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": unique("res-"), "subject": _subject(tenant),
            "action": {"kind": "llm.completion", "name": "m"}, "estimate": {"unit": USD, "amount": amount},
            "overage_policy": "ALLOW_WITH_OVERDRAFT", **extra}


def _reservation(http: httpx.Client, tenant: Tenant) -> str:
    created = http.post("/v1/reservations", json=_reserve_request(tenant), headers=tenant.headers())
    assert created.status_code == 200, created.text
    reservation_id: str = created.json()["reservation_id"]
    return reservation_id


def _settle(kind: str, body: dict[str, Any]) -> Setup:
    def setup(conn: Conn, http: httpx.Client, tenant: Tenant) -> Request:
        return Request(f"/v1/reservations/{_reservation(http, tenant)}/{kind}", {"idempotency_key": unique(kind),
                                                                               **body})
    return setup


def _bulk_tenants(conn: Conn, http: httpx.Client, tenant: Tenant) -> Request:
    return Request("/v1/admin/tenants/bulk-action", {
        "filter": {"search": tenant.tenant_id}, "action": "SUSPEND", "expected_count": 1,
        "idempotency_key": unique("bulk-")}, admin=True)


def _bulk_budgets(conn: Conn, http: httpx.Client, tenant: Tenant) -> Request:
    return Request("/v1/admin/budgets/bulk-action", {
        "filter": {"tenant_id": tenant.tenant_id}, "action": "CREDIT", "amount": {"unit": USD, "amount": 7},
        "expected_count": 2, "idempotency_key": unique("bulk-")}, admin=True)


def _fund(operation: str, amount: int) -> Setup:
    def setup(conn: Conn, http: httpx.Client, tenant: Tenant) -> Request:
        return Request("/v1/admin/budgets/fund", {
            "operation": operation, "amount": {"unit": USD, "amount": amount}, "idempotency_key": unique("f-")},
            admin=True, params={"scope": f"{tenant.scope}/workspace:w1", "unit": USD, "tenant_id": tenant.tenant_id})
    return setup


KEYED: dict[str, Setup] = {
    "reserve": lambda conn, http, t: Request("/v1/reservations", _reserve_request(t)),
    "reserve dry_run denied": lambda conn, http, t: Request(
        "/v1/reservations", _reserve_request(t, 10_000_000, dry_run=True)),
    "decide denied": lambda conn, http, t: Request("/v1/decide", {
        k: v for k, v in _reserve_request(t, 10_000_000).items() if k != "overage_policy"}),
    "commit under estimate": _settle("commit", {"actual": {"unit": USD, "amount": 4_000}}),
    "commit over estimate": _settle("commit", {"actual": {"unit": USD, "amount": 150_000}}),
    "release": _settle("release", {"reason": "done"}),
    "extend": _settle("extend", {"extend_by_ms": 5_000}),
    "event": lambda conn, http, t: Request("/v1/events", {
        "idempotency_key": unique("evt-"), "subject": _subject(t), "action": {"kind": "tool", "name": "x"},
        "actual": {"unit": USD, "amount": 120_000}, "overage_policy": "ALLOW_WITH_OVERDRAFT"}),
    "fund CREDIT": _fund("CREDIT", 5_000),
    "fund DEBIT": _fund("DEBIT", 5_000),
    "fund REPAY_DEBT": _fund("REPAY_DEBT", 5_000),
    "fund RESET": _fund("RESET", 250_000),
    "fund RESET_SPENT": _fund("RESET_SPENT", 250_000),
    "bulk tenants SUSPEND": _bulk_tenants,
    "bulk budgets CREDIT": _bulk_budgets,
}


def _state(conn: Conn, tenant: Tenant) -> Any:
    """Everything a request could have changed for the tenant, with its id
    taken out (so two identical tenants have equal states)."""
    row = conn.execute("""
        SELECT t.status,
               (SELECT coalesce(json_agg(json_build_object(
                    'scope', b.scope, 'allocated', b.allocated, 'spent', b.spent, 'reserved', b.reserved,
                    'debt', b.debt, 'remaining', b.remaining, 'over', b.is_over_limit, 'status', b.status)
                    ORDER BY b.scope), '[]') FROM cycles.budgets AS b WHERE b.tenant_id = t.tenant_id),
               (SELECT coalesce(json_agg(json_build_object(
                    'status', r.status, 'estimate', r.estimate, 'committed', r.committed,
                    'extensions', r.extension_count) ORDER BY r.created_at_ms), '[]')
                FROM cycles.reservations AS r WHERE r.tenant_id = t.tenant_id),
               (SELECT coalesce(json_agg(json_build_object(
                    'scope', l.scope, 'operation', l.operation, 'allocated', l.allocated_delta,
                    'spent', l.spent_delta, 'reserved', l.reserved_delta, 'debt', l.debt_delta)
                    ORDER BY l.entry_id), '[]') FROM cycles.ledger_entries AS l WHERE l.tenant_id = t.tenant_id),
               (SELECT coalesce(json_agg(e.event_type ORDER BY e.seq), '[]')
                FROM cycles.events AS e WHERE e.tenant_id = t.tenant_id)
        FROM cycles.tenants AS t WHERE t.tenant_id = %s""", (tenant.tenant_id,)).fetchone()
    assert row is not None
    return json.loads(json.dumps(row).replace(tenant.tenant_id, "TENANT"))


def _headers(server: ApiServer, tenant: Tenant, request: Request) -> dict[str, str]:
    return {"X-Admin-API-Key": server.admin_key} if request.admin else tenant.headers()


def _post(http: httpx.Client, server: ApiServer, tenant: Tenant, request: Request) -> httpx.Response:
    return http.post(request.path, json=request.body, params=request.params, headers=_headers(server, tenant, request))


def _send_and_hang_up(server: ApiServer, tenant: Tenant, request: Request) -> None:
    """Writes the whole request and closes the socket without reading a byte."""
    url = urlsplit(server.base_url)
    body = json.dumps(request.body).encode()
    target = request.path + (f"?{urlencode(request.params)}" if request.params else "")
    head = "".join(f"{k}: {v}\r\n" for k, v in _headers(server, tenant, request).items())
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(f"POST {target} HTTP/1.1\r\nHost: {url.hostname}\r\n{head}Content-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def _settled_state(conn: Conn, tenant: Tenant) -> Any:
    """The tenant's state once no request is running for it any more (a
    request whose client hung up may still be finishing)."""
    state = _state(conn, tenant)
    for _ in range(50):
        time.sleep(0.05)
        again = _state(conn, tenant)
        if again == state:
            return state
        state = again
    return state


@pytest.fixture(scope="module")
def http(reliability_server: ApiServer) -> Any:
    with httpx.Client(base_url=reliability_server.base_url, timeout=30) as client:
        yield client


@pytest.mark.parametrize("name", KEYED)
def test_lost_response_then_retry_applies_once(
        name: str, reliability_server: ApiServer, reliability_conn: Conn, http: httpx.Client) -> None:
    conn, server = reliability_conn, reliability_server
    # Discarded: the first answer arrives and is dropped.
    tenant = _funded(conn)
    request = KEYED[name](conn, http, tenant)
    before = _state(conn, tenant)
    first = _post(http, server, tenant, request)
    assert 200 <= first.status_code < 300, first.text
    once = _state(conn, tenant)
    # Every one of these has an effect (a denial is recorded as an event).
    assert once != before
    for _ in range(2):
        retry = _post(http, server, tenant, request)
        assert retry.status_code == first.status_code, retry.text
        assert without_ttl(retry.json()) == without_ttl(first.json())
        assert _state(conn, tenant) == once

    # Never read: the same request (same shape, identical tenant) written to
    # a socket closed at once, then retried twice with the same key.
    twin = _funded(conn)
    twin_request = KEYED[name](conn, http, twin)
    _send_and_hang_up(server, twin, twin_request)
    answers = [_post(http, server, twin, twin_request) for _ in range(2)]
    assert [a.status_code for a in answers] == [first.status_code] * 2, [a.text for a in answers]
    assert without_ttl(answers[0].json()) == without_ttl(answers[1].json())
    assert _settled_state(conn, twin) == once


def test_changed_request_under_a_used_key_is_refused_and_changes_nothing(
        reliability_server: ApiServer, reliability_conn: Conn, http: httpx.Client) -> None:
    """The other half of idempotency: a key already used for a different
    request is IDEMPOTENCY_MISMATCH, and nothing more happens."""
    conn, server = reliability_conn, reliability_server
    for name in ("reserve", "event", "fund CREDIT", "commit under estimate"):
        tenant = _funded(conn)
        request = KEYED[name](conn, http, tenant)
        assert _post(http, server, tenant, request).status_code in (200, 201)
        once = _state(conn, tenant)
        changed = json.loads(json.dumps(request.body).replace("4000", "4001").replace("10000", "10001")
                             .replace("120000", "120001").replace("5000", "5001"))
        assert changed != request.body
        refused = _post(http, server, tenant, Request(request.path, changed, request.admin, request.params))
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "IDEMPOTENCY_MISMATCH"
        assert _state(conn, tenant) == once


def test_retried_creations_without_a_key_change_nothing(
        reliability_server: ApiServer, reliability_conn: Conn, http: httpx.Client) -> None:
    """Tenants and budgets are named by the client: a retried tenant creation
    answers 200 with the same tenant (201 the first time), a retried budget
    creation 409 DUPLICATE_RESOURCE; either way the first one stands alone."""
    conn, admin = reliability_conn, {"X-Admin-API-Key": reliability_server.admin_key}
    tenant_id = unique("lost-")
    body = {"tenant_id": tenant_id, "name": "Lost response"}
    first = http.post("/v1/admin/tenants", json=body, headers=admin)
    assert first.status_code == 201, first.text
    tenant = Tenant(tenant_id, "")
    once = _state(conn, tenant)
    again = http.post("/v1/admin/tenants", json=body, headers=admin)
    assert (again.status_code, again.json()) == (200, first.json())
    assert _state(conn, tenant) == once

    budget = {"tenant_id": tenant_id, "scope": f"tenant:{tenant_id}", "unit": USD,
              "allocated": {"unit": USD, "amount": 1_000}}
    assert http.post("/v1/admin/budgets", json=budget, headers=admin).status_code == 201
    once = _state(conn, tenant)
    again = http.post("/v1/admin/budgets", json=budget, headers=admin)
    assert (again.status_code, again.json()["error"]) == (409, "DUPLICATE_RESOURCE")
    assert _state(conn, tenant) == once


@pytest.mark.parametrize("path", ["/v1/admin/budgets/freeze", "/v1/admin/budgets/unfreeze"])
def test_retried_budget_transitions_change_nothing_more(
        path: str, reliability_server: ApiServer, reliability_conn: Conn, http: httpx.Client) -> None:
    conn, admin = reliability_conn, {"X-Admin-API-Key": reliability_server.admin_key}
    tenant = _funded(conn)
    params = {"scope": tenant.scope, "unit": USD}
    if path.endswith("unfreeze"):
        frozen = http.post("/v1/admin/budgets/freeze", params=params, headers=admin)
        assert frozen.status_code == 200, frozen.text
    first = http.post(path, params=params, headers=admin)
    assert first.status_code == 200, first.text
    once = _state(conn, tenant)
    again = http.post(path, params=params, headers=admin)
    assert again.status_code in (200, 409), again.text
    if again.status_code == 409:
        assert again.json()["error"] == "INVALID_TRANSITION"
    assert _state(conn, tenant) == once
