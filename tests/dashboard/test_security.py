"""The dashboard's security model, over plain HTTP: sessions, CSRF, tenant
confinement, headers, and that no key ever comes back in a response."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from tests.api.provision import create_budget, funded_tenant, new_api_key, new_tenant, reserve_body
from tests.dashboard.helpers import hidden_token, http_login
from tests.server import ApiServer

Conn = psycopg.Connection[Any]

PAGES = ["/dashboard/", "/dashboard/budgets", "/dashboard/budgets/detail", "/dashboard/reservations",
         "/dashboard/reservations/detail", "/dashboard/tenants", "/dashboard/tenants/detail", "/dashboard/policies",
         "/dashboard/webhooks", "/dashboard/webhooks/detail", "/dashboard/events", "/dashboard/api-keys",
         "/dashboard/audit", "/dashboard/audit/export.json", "/dashboard/audit/export.csv"]
ACTIONS = ["/dashboard/budgets/fund", "/dashboard/budgets/freeze", "/dashboard/budgets/unfreeze",
           "/dashboard/reservations/release", "/dashboard/api-keys/create", "/dashboard/api-keys/revoke",
           "/dashboard/budgets/overdraft", "/dashboard/tenants/create", "/dashboard/tenants/status",
           "/dashboard/policies/create", "/dashboard/policies/update", "/dashboard/webhooks/status",
           "/dashboard/webhooks/test", "/dashboard/webhooks/replay", "/dashboard/logout"]


@pytest.fixture
def client(dashboard_server: ApiServer) -> httpx.Client:
    with httpx.Client(base_url=dashboard_server.base_url, timeout=30) as fresh:
        yield fresh


def _status(conn: Conn, scope: str) -> str:
    row = conn.execute("SELECT status FROM cycles.budgets WHERE scope = %s", (scope,)).fetchone()
    assert row is not None
    return str(row[0])


def _reserve(api: httpx.Client, key: str, body: dict[str, Any]) -> str:
    answer = api.post("/v1/reservations", json=body, headers={"X-Cycles-API-Key": key})
    assert answer.status_code == 200, answer.text
    reservation_id: str = answer.json()["reservation_id"]
    return reservation_id


def test_without_a_session_every_page_and_action_redirects_to_login_and_does_nothing(
    client: httpx.Client, db_conn: Conn, api: httpx.Client,
) -> None:
    tenant = funded_tenant(db_conn)
    reservation_id = _reserve(api, tenant.api_key, reserve_body(tenant))
    key_row = db_conn.execute("SELECT key_id FROM cycles.api_keys WHERE tenant_id = %s", (tenant.tenant_id,)).fetchone()
    assert key_row is not None
    key_id = str(key_row[0])
    for path in PAGES:
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/login", path
    forms = {
        "/dashboard/budgets/fund": {"scope": tenant.scope, "unit": "USD_MICROCENTS", "operation": "CREDIT",
                                    "amount": "5", "idempotency_key": "k-nosession", "tenant_id": tenant.tenant_id},
        "/dashboard/budgets/freeze": {"scope": tenant.scope, "unit": "USD_MICROCENTS", "confirmed": "yes"},
        "/dashboard/reservations/release": {"reservation_id": reservation_id, "confirmed": "yes"},
        "/dashboard/api-keys/create": {"tenant_id": tenant.tenant_id, "name": "no-session"},
        "/dashboard/api-keys/revoke": {"key_id": key_id, "confirmed": "yes"},
    }
    for path in ACTIONS:
        answer = client.post(path, data={**forms.get(path, {}), "csrf_token": "x" * 43})
        assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/login", path
    # A made-up session cookie is no session either.
    client.cookies.set("cycles_dashboard", "A" * 43, path="/dashboard")
    assert client.get("/dashboard/budgets").status_code == 303
    assert client.post("/dashboard/budgets/freeze", data=forms["/dashboard/budgets/freeze"]).status_code == 303
    assert _status(db_conn, tenant.scope) == "ACTIVE"
    allocated = db_conn.execute(
        "SELECT allocated FROM cycles.budgets WHERE scope = %s", (tenant.scope,)).fetchone()
    assert allocated == (1_000_000,)
    status = db_conn.execute(
        "SELECT status FROM cycles.reservations WHERE reservation_id = %s", (reservation_id,)).fetchone()
    assert status == ("ACTIVE",)
    keys = db_conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'ACTIVE') FROM cycles.api_keys WHERE tenant_id = %s",
        (tenant.tenant_id,)).fetchone()
    assert keys == (1, 1)


def test_actions_need_the_sessions_csrf_token(
    client: httpx.Client, db_conn: Conn, dashboard_server: ApiServer,
) -> None:
    tenant = funded_tenant(db_conn)
    csrf = http_login(client, dashboard_server.admin_key)
    form = {"scope": tenant.scope, "unit": "USD_MICROCENTS", "confirmed": "yes"}
    for token in (None, "", "wrong-" + "x" * 40, csrf[:-1]):
        data = form if token is None else {**form, "csrf_token": token}
        answer = client.post("/dashboard/budgets/freeze", data=data)
        assert answer.status_code == 403, token
        assert "CSRF" in answer.text
        assert _status(db_conn, tenant.scope) == "ACTIVE"
    # Another session's token does not fit this one.
    with httpx.Client(base_url=dashboard_server.base_url) as other:
        other_csrf = http_login(other, dashboard_server.admin_key)
    assert other_csrf != csrf
    assert client.post("/dashboard/budgets/freeze", data={**form, "csrf_token": other_csrf}).status_code == 403
    assert _status(db_conn, tenant.scope) == "ACTIVE"
    # The right token works (the control).
    answer = client.post("/dashboard/budgets/freeze", data={**form, "csrf_token": csrf})
    assert answer.status_code == 303 and "notice=" in answer.headers["location"]
    assert _status(db_conn, tenant.scope) == "FROZEN"


def test_login_form_needs_its_same_site_cookie(client: httpx.Client, dashboard_server: ApiServer) -> None:
    form = client.get("/dashboard/login")
    token = hidden_token(form.text, "login_token")
    client.cookies.clear()
    answer = client.post("/dashboard/login", data={"login_token": token, "api_key": dashboard_server.admin_key})
    assert answer.status_code == 403
    assert "cycles_dashboard=" not in answer.headers.get("set-cookie", "")


def _failed_logins(conn: Conn) -> int:
    row = conn.execute(
        "SELECT count(*) FROM cycles.audit_logs WHERE operation = 'dashboardLogin' AND status >= 400").fetchone()
    assert row is not None
    return int(row[0])


def test_bad_keys_get_no_session(client: httpx.Client, db_conn: Conn) -> None:
    tenant = new_tenant(db_conn)  # default permissions: no admin:read
    failed_before = _failed_logins(db_conn)
    for key, message in ((tenant.api_key, "admin:read"), ("cyc_live_not-a-key", "Unknown"), ("", "Enter")):
        form = client.get("/dashboard/login")
        answer = client.post("/dashboard/login", data={
            "login_token": hidden_token(form.text, "login_token"), "api_key": key})
        assert answer.status_code == 401
        assert message in answer.text
        assert "cycles_dashboard" not in client.cookies
        assert client.get("/dashboard/budgets").status_code == 303
    # The two refused keys are audited (the empty form never reached SQL).
    assert _failed_logins(db_conn) == failed_before + 2


def test_session_cookie_is_httponly_samesite_strict_and_pages_carry_a_strict_csp(
    client: httpx.Client, dashboard_server: ApiServer,
) -> None:
    form = client.get("/dashboard/login")
    assert "script-src 'none'" in form.headers["content-security-policy"]
    answer = client.post("/dashboard/login", data={
        "login_token": hidden_token(form.text, "login_token"), "api_key": dashboard_server.admin_key})
    cookies = [value for name, value in answer.headers.multi_items() if name == "set-cookie"]
    session_cookie = next(c for c in cookies if c.startswith("cycles_dashboard="))
    attributes = {part.strip().lower() for part in session_cookie.split(";")}
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/dashboard" in attributes
    for path in PAGES[:-2]:
        page = client.get(path)
        assert page.status_code == 200, path
        policy = page.headers["content-security-policy"]
        assert "script-src 'none'" in policy and "default-src 'none'" in policy
        assert "unsafe-inline" not in policy
        assert page.headers["x-frame-options"] == "DENY"
        assert "<script" not in page.text and " style=" not in page.text


def test_logout_ends_the_session_on_the_server(client: httpx.Client, dashboard_server: ApiServer, db_conn: Conn) -> None:
    csrf = http_login(client, dashboard_server.admin_key)
    stolen = client.cookies.get("cycles_dashboard")
    assert stolen
    assert client.post("/dashboard/logout", data={"csrf_token": csrf}).status_code == 303
    with httpx.Client(base_url=dashboard_server.base_url) as replay:
        replay.cookies.set("cycles_dashboard", stolen, path="/dashboard")
        assert replay.get("/dashboard/budgets").status_code == 303
    audited = db_conn.execute(
        "SELECT count(*) FROM cycles.audit_logs WHERE operation = 'dashboardLogout'").fetchone()
    assert audited is not None and audited[0] >= 1


def test_a_tenant_login_sees_and_touches_only_its_tenant(
    client: httpx.Client, db_conn: Conn, api: httpx.Client,
) -> None:
    mine, other = funded_tenant(db_conn), funded_tenant(db_conn)
    other_reservation = _reserve(api, other.api_key, reserve_body(other))
    reader = new_api_key(db_conn, mine.tenant_id, ["admin:read", "admin:write"])
    csrf = http_login(client, reader)

    overview = client.get("/dashboard/")
    assert f"tenant {mine.tenant_id}" in overview.text and other.tenant_id not in overview.text
    for query in ("", f"?tenant_id={other.tenant_id}", f"?scope_prefix=tenant:{other.tenant_id}"):
        page = client.get(f"/dashboard/budgets{query}")
        assert page.status_code == 200
        # No row of the other tenant (the filter box may echo what was typed).
        assert f'data-scope="tenant:{other.tenant_id}' not in page.text
    assert f"tenant:{mine.tenant_id}" in client.get("/dashboard/budgets").text
    detail = client.get("/dashboard/budgets/detail", params={"scope": other.scope, "unit": "USD_MICROCENTS"})
    assert "BUDGET_NOT_FOUND" in detail.text and 'data-testid="spend-chart"' not in detail.text
    listing = client.get(f"/dashboard/reservations?tenant={other.tenant_id}")
    assert listing.status_code == 200
    assert other_reservation not in listing.text

    answer = client.post("/dashboard/budgets/freeze", data={
        "scope": other.scope, "unit": "USD_MICROCENTS", "confirmed": "yes", "csrf_token": csrf})
    assert answer.status_code == 303 and "error=" in answer.headers["location"]
    assert _status(db_conn, other.scope) == "ACTIVE"
    answer = client.post("/dashboard/budgets/fund", data={
        "scope": other.scope, "unit": "USD_MICROCENTS", "operation": "DEBIT", "amount": "5",
        "idempotency_key": "k-cross", "tenant_id": other.tenant_id, "csrf_token": csrf})
    assert answer.status_code == 303 and "error=" in answer.headers["location"]
    answer = client.post("/dashboard/reservations/release", data={
        "reservation_id": other_reservation, "confirmed": "yes", "csrf_token": csrf})
    assert answer.status_code == 303 and "error=" in answer.headers["location"]
    state = db_conn.execute(
        "SELECT (SELECT status FROM cycles.reservations WHERE reservation_id = %s),"
        " (SELECT allocated FROM cycles.budgets WHERE scope = %s)", (other_reservation, other.scope)).fetchone()
    assert state == ("ACTIVE", 1_000_000)
    # The refusals are audited with the key's identity.
    refused = db_conn.execute(
        "SELECT count(*) FROM cycles.audit_logs WHERE operation = 'freezeBudget' AND status >= 400"
        " AND key_id IS NOT NULL AND resource_id = %s", (f"{other.scope} USD_MICROCENTS",)).fetchone()
    assert refused is not None and refused[0] >= 1


def test_no_key_ever_appears_in_a_response(
    client: httpx.Client, db_conn: Conn, dashboard_server: ApiServer, api: httpx.Client,
) -> None:
    tenant = funded_tenant(db_conn)
    create_budget(db_conn, f"{tenant.scope}/workspace:w2", 10)
    _reserve(api, tenant.api_key, reserve_body(tenant))
    reader = new_api_key(db_conn, tenant.tenant_id, ["admin:read"])
    seen: list[httpx.Response] = []

    def keep(response: httpx.Response) -> None:
        response.read()
        seen.append(response)

    client.event_hooks["response"] = [keep]
    for key in (dashboard_server.admin_key, reader):
        csrf = http_login(client, key)
        for path in [*PAGES, f"/dashboard/budgets?tenant_id={tenant.tenant_id}",
                     f"/dashboard/reservations?tenant={tenant.tenant_id}"]:
            client.get(path)
        client.post("/dashboard/budgets/freeze", data={
            "scope": tenant.scope, "unit": "USD_MICROCENTS", "csrf_token": csrf})
        client.post("/dashboard/logout", data={"csrf_token": csrf})
    assert len(seen) > 15
    for response in seen:
        for secret in (dashboard_server.admin_key, reader):
            assert secret not in response.text, response.url
            assert secret not in str(response.url)
            assert all(secret not in value for _, value in response.headers.multi_items())
