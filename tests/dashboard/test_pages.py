"""Dashboard pages over plain HTTP: pagination, filters and refused input."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.api.provision import USD, budget, create_budget, funded_tenant, new_tenant
from tests.dashboard.helpers import http_login
from tests.server import ApiServer

Conn = psycopg.Connection[Any]
_SCOPES = re.compile(r'data-testid="budget-row" data-scope="([^"]+)"')
_NEXT = re.compile(r'href="(/dashboard/budgets\?[^"]+)" data-testid="next-page"')


@pytest.fixture
def admin(dashboard_server: ApiServer) -> Iterator[tuple[httpx.Client, str]]:
    with httpx.Client(base_url=dashboard_server.base_url, timeout=30) as client:
        yield client, http_login(client, dashboard_server.admin_key)


def test_budgets_are_paged_fifty_at_a_time(db_conn: Conn, admin: tuple[httpx.Client, str]) -> None:
    client, _ = admin
    tenant = new_tenant(db_conn)
    expected = sorted(f"{tenant.scope}/workspace:w{i:02d}" for i in range(61))
    for scope in expected:
        create_budget(db_conn, scope, 1000)
    first = client.get(f"/dashboard/budgets?tenant_id={tenant.tenant_id}")
    first_scopes = _SCOPES.findall(first.text)
    assert first_scopes == expected[:50]
    link = _NEXT.search(first.text)
    assert link is not None
    second = client.get(html.unescape(link.group(1)))
    assert _SCOPES.findall(second.text) == expected[50:]
    assert _NEXT.search(second.text) is None


def test_budget_filters(db_conn: Conn, admin: tuple[httpx.Client, str]) -> None:
    client, csrf = admin
    tenant = funded_tenant(db_conn)
    frozen = f"{tenant.scope}/workspace:w1"
    client.post("/dashboard/budgets/freeze", data={"scope": frozen, "unit": USD, "confirmed": "yes", "csrf_token": csrf})
    page = client.get(f"/dashboard/budgets?tenant_id={tenant.tenant_id}&status=FROZEN")
    assert _SCOPES.findall(page.text) == [frozen]
    page = client.get(f"/dashboard/budgets?tenant_id={tenant.tenant_id}&scope_prefix={tenant.scope}/workspace")
    assert _SCOPES.findall(page.text) == [frozen]
    page = client.get(f"/dashboard/budgets?tenant_id={tenant.tenant_id}&attention=has_debt")
    assert _SCOPES.findall(page.text) == []


def test_freeze_without_confirmation_only_asks(db_conn: Conn, admin: tuple[httpx.Client, str]) -> None:
    client, csrf = admin
    tenant = funded_tenant(db_conn)
    answer = client.post("/dashboard/budgets/freeze", data={"scope": tenant.scope, "unit": USD, "csrf_token": csrf})
    assert answer.status_code == 200
    assert 'name="confirmed" value="yes"' in answer.text and tenant.scope in answer.text
    assert budget(db_conn, tenant.scope)["status"] == "ACTIVE"


@pytest.mark.parametrize("amount", ["", "abc", "1.5", "99999999999999999999999"])
def test_bad_fund_input_is_refused_and_changes_nothing(
    db_conn: Conn, admin: tuple[httpx.Client, str], amount: str,
) -> None:
    client, csrf = admin
    tenant = funded_tenant(db_conn)
    answer = client.post("/dashboard/budgets/fund", data={
        "scope": tenant.scope, "unit": USD, "operation": "CREDIT", "amount": amount, "idempotency_key": "k1",
        "tenant_id": tenant.tenant_id, "csrf_token": csrf})
    assert answer.status_code == 303 and "error=" in answer.headers["location"]
    assert budget(db_conn, tenant.scope)["allocated"] == 1_000_000


def test_sql_refusals_are_shown_not_500(db_conn: Conn, admin: tuple[httpx.Client, str]) -> None:
    client, csrf = admin
    tenant = funded_tenant(db_conn)
    answer = client.post("/dashboard/budgets/fund", data={
        "scope": tenant.scope, "unit": USD, "operation": "DEBIT", "amount": "2000000", "idempotency_key": "k2",
        "tenant_id": tenant.tenant_id, "csrf_token": csrf}, follow_redirects=True)
    assert answer.status_code == 200
    assert "refused" in answer.text
    assert budget(db_conn, tenant.scope)["allocated"] == 1_000_000
    missing = client.post("/dashboard/reservations/release", data={
        "reservation_id": "res_does_not_exist", "confirmed": "yes", "csrf_token": csrf}, follow_redirects=True)
    assert missing.status_code == 200 and "refused" in missing.text
    odd = client.get("/dashboard/reservations?tenant=%00bad&status=NOPE&cursor=zzz")
    assert odd.status_code == 200


_RESERVATIONS = re.compile(r'data-testid="reservation-row" data-id="([^"]+)"')


def test_reservation_filters_by_subject_and_time(
    db_conn: Conn, admin: tuple[httpx.Client, str], api: httpx.Client,
) -> None:
    client, _ = admin
    tenant = funded_tenant(db_conn)
    create_budget(db_conn, f"{tenant.scope}/workspace:w2", 100_000)
    ids = {}
    for workspace in ("w1", "w2"):
        body = {"idempotency_key": f"k-{workspace}", "subject": tenant.subject(workspace=workspace),
                "action": {"kind": "llm", "name": "m"}, "estimate": {"unit": USD, "amount": 10}}
        answer = api.post("/v1/reservations", json=body, headers=tenant.headers())
        assert answer.status_code == 200, answer.text
        ids[workspace] = answer.json()["reservation_id"]
    base = f"/dashboard/reservations?tenant={tenant.tenant_id}"
    assert set(_RESERVATIONS.findall(client.get(base).text)) == set(ids.values())
    assert _RESERVATIONS.findall(client.get(f"{base}&workspace=w2").text) == [ids["w2"]]
    assert _RESERVATIONS.findall(client.get(f"{base}&from=2000-01-01T00:00Z&to=2000-01-02T00:00Z").text) == []
    assert len(_RESERVATIONS.findall(client.get(f"{base}&from=2000-01-01T00:00Z").text)) == 2
    refused = client.get(f"{base}&from=yesterday")
    assert refused.status_code == 200 and "ISO-8601" in refused.text
