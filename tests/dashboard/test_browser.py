"""The dashboard in a real browser (headless Chromium): log in, watch a budget
move, fund, freeze, force-release; every page is screenshotted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import psycopg
from playwright.sync_api import Page, Response

from tests.api.provision import USD, budget, funded_tenant, new_api_key, reserve_body, unique
from tests.dashboard.helpers import browser_login, screenshot
from tests.server import ApiServer

Conn = psycopg.Connection[Any]


def _row(page: Page, scope: str) -> Any:
    return page.locator(f'tr[data-testid="budget-row"][data-scope="{scope}"]')


def _bar_value(page: Page, scope: str) -> int:
    value = _row(page, scope).locator('[data-testid="util-bar"]').get_attribute("value")
    assert value is not None
    return int(value)


def _audit_rows(conn: Conn, operation: str, scope: str) -> list[tuple[Any, ...]]:
    """The audit rows of `operation` on the USD budget at `scope` (recorded by
    "scope unit" or by the budget's ledger id, as each function does)."""
    return conn.execute(
        "SELECT actor_type, status FROM cycles.audit_logs WHERE operation = %(op)s AND resource_id IN"
        " (%(scope)s || ' ' || %(unit)s,"
        "  (SELECT budget_id::text FROM cycles.budgets WHERE scope = %(scope)s AND unit = %(unit)s))"
        " ORDER BY created_at", {"op": operation, "scope": scope, "unit": USD}).fetchall()


def test_login_shows_the_overview(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, artifacts: Path,
) -> None:
    funded_tenant(db_conn)
    page.goto("/dashboard/budgets")
    page.wait_for_url("**/dashboard/login")  # no session: the login page
    screenshot(page, artifacts, "login")
    browser_login(page, dashboard_server.admin_key)
    assert page.locator('[data-testid="who"]').inner_text() == "admin"
    assert int(page.locator('[data-testid="tenants-count"]').inner_text()) >= 1
    assert int(page.locator('[data-testid="budgets-count"]').inner_text()) >= 2
    screenshot(page, artifacts, "overview")
    # The session cookie is invisible to scripts and never sent cross-site.
    cookie = next(c for c in page.context.cookies() if c["name"] == "cycles_dashboard")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.click("text=Log out")
    page.wait_for_url("**/dashboard/login")
    page.goto("/dashboard/")
    page.wait_for_url("**/dashboard/login")


def test_budget_bar_moves_after_a_reserve_and_commit_through_the_api(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, api: httpx.Client, artifacts: Path,
) -> None:
    tenant = funded_tenant(db_conn, workspace_total=10_000)
    scope = f"{tenant.scope}/workspace:w1"
    browser_login(page, dashboard_server.admin_key)
    page.goto(f"/dashboard/budgets?tenant_id={tenant.tenant_id}")
    assert _bar_value(page, scope) == 0

    reserved = api.post("/v1/reservations", json=reserve_body(tenant, amount=4_000), headers=tenant.headers())
    assert reserved.status_code == 200, reserved.text
    page.reload()
    assert _bar_value(page, scope) == 4_000
    assert "40.0%" in _row(page, scope).locator('[data-testid="util-text"]').inner_text()

    committed = api.post(f"/v1/reservations/{reserved.json()['reservation_id']}/commit", json={
        "idempotency_key": unique("c-"), "actual": {"unit": USD, "amount": 2_500}}, headers=tenant.headers())
    assert committed.status_code == 200, committed.text
    page.reload()
    assert _bar_value(page, scope) == 2_500  # the hold is gone, the spend stays
    assert "spent 2,500" in _row(page, scope).locator('[data-testid="util-text"]').inner_text()
    screenshot(page, artifacts, "budgets")

    # The budget's chart shows the ledger's charge in today's bar.
    _row(page, scope).locator('[data-testid="budget-link"]').click()
    bars = page.locator('[data-testid="chart-bar"]')
    assert bars.count() == 30
    assert bars.nth(29).get_attribute("data-charged") == "2500"
    assert float(bars.nth(29).get_attribute("height") or 0) > 0
    assert page.locator('[data-testid="chart-total"]').inner_text() == "2,500"
    screenshot(page, artifacts, "budget-detail")
    page.click("a:text-is('hour')")
    assert page.locator('[data-testid="chart-bar"]').count() == 48
    assert page.locator('[data-testid="chart-total"]').inner_text() == "2,500"


def test_fund_a_budget(page: Page, dashboard_server: ApiServer, db_conn: Conn) -> None:
    tenant = funded_tenant(db_conn)
    scope = f"{tenant.scope}/workspace:w1"
    browser_login(page, dashboard_server.admin_key)
    page.goto(f"/dashboard/budgets?tenant_id={tenant.tenant_id}")
    row = _row(page, scope)
    row.locator("summary", has_text="Fund").click()
    row.locator('[data-testid="fund-operation"]').select_option("CREDIT")
    row.locator('[data-testid="fund-amount"]').fill("25000")
    row.locator('[data-testid="fund-submit"]').click()
    page.wait_for_selector('[data-testid="notice"]')
    assert "CREDIT 25000" in page.locator('[data-testid="notice"]').inner_text()
    assert budget(db_conn, scope)["allocated"] == 125_000
    assert _audit_rows(db_conn, "fundBudget", scope) == [("admin_on_behalf_of", 200)]

    row = _row(page, scope)
    row.locator("summary", has_text="Fund").click()
    row.locator('[data-testid="fund-operation"]').select_option("DEBIT")
    row.locator('[data-testid="fund-amount"]').fill("5000")
    row.locator('[data-testid="fund-submit"]').click()
    page.wait_for_selector('[data-testid="notice"]')
    assert budget(db_conn, scope)["allocated"] == 120_000


def test_freeze_makes_a_reserve_409_and_unfreeze_lifts_it(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, api: httpx.Client, artifacts: Path,
) -> None:
    tenant = funded_tenant(db_conn)
    scope = f"{tenant.scope}/workspace:w1"
    browser_login(page, dashboard_server.admin_key)
    page.goto(f"/dashboard/budgets?tenant_id={tenant.tenant_id}")
    _row(page, scope).locator('[data-testid="freeze"]').click()
    assert scope in page.locator('[data-testid="question"]').inner_text()
    screenshot(page, artifacts, "confirm-freeze")
    assert budget(db_conn, scope)["status"] == "ACTIVE"  # nothing before the confirmation
    page.fill("#reason", "runaway agent")
    page.click('[data-testid="confirm"]')
    page.wait_for_selector('[data-testid="notice"]')
    assert _row(page, scope).locator('[data-testid="budget-status"]').inner_text() == "FROZEN"
    assert budget(db_conn, scope)["status"] == "FROZEN"
    assert _audit_rows(db_conn, "freezeBudget", scope) == [("admin", 200)]

    refused = api.post("/v1/reservations", json=reserve_body(tenant), headers=tenant.headers())
    assert refused.status_code == 409
    assert refused.json()["error"] == "BUDGET_FROZEN"

    _row(page, scope).locator('[data-testid="unfreeze"]').click()
    page.click('[data-testid="confirm"]')
    page.wait_for_selector('[data-testid="notice"]')
    assert budget(db_conn, scope)["status"] == "ACTIVE"
    accepted = api.post("/v1/reservations", json=reserve_body(tenant), headers=tenant.headers())
    assert accepted.status_code == 200, accepted.text


def test_force_release_a_reservation(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, api: httpx.Client, artifacts: Path,
) -> None:
    tenant = funded_tenant(db_conn)
    reserved = api.post("/v1/reservations", json=reserve_body(tenant, amount=7_000), headers=tenant.headers())
    assert reserved.status_code == 200, reserved.text
    reservation_id = reserved.json()["reservation_id"]
    browser_login(page, dashboard_server.admin_key)
    page.goto(f"/dashboard/reservations?tenant={tenant.tenant_id}&status=ACTIVE")
    row = page.locator(f'tr[data-testid="reservation-row"][data-id="{reservation_id}"]')
    assert row.locator('[data-testid="reservation-status"]').inner_text() == "ACTIVE"
    screenshot(page, artifacts, "reservations")
    row.locator('[data-testid="force-release"]').click()
    assert reservation_id in page.locator('[data-testid="question"]').inner_text()
    page.click('[data-testid="confirm"]')
    page.wait_for_selector('[data-testid="notice"]')
    status = db_conn.execute(
        "SELECT status FROM cycles.reservations WHERE reservation_id = %s", (reservation_id,)).fetchone()
    assert status == ("RELEASED",)
    assert budget(db_conn, f"{tenant.scope}/workspace:w1")["reserved"] == 0
    audited = db_conn.execute(
        "SELECT actor_type, status FROM cycles.audit_logs WHERE operation = 'releaseReservation'"
        " AND resource_id = %s", (reservation_id,)).fetchall()
    assert audited == [("admin_on_behalf_of", 200)]
    # The filtered list no longer shows it as active.
    assert page.locator(f'tr[data-testid="reservation-row"][data-id="{reservation_id}"]').count() == 0


def test_tenant_login_in_the_browser_and_no_key_in_any_response(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, artifacts: Path,
) -> None:
    mine, other = funded_tenant(db_conn), funded_tenant(db_conn)
    reader = new_api_key(db_conn, mine.tenant_id, ["admin:read"])
    bodies: list[tuple[str, str]] = []

    def keep(response: Response) -> None:
        try:
            bodies.append((response.url, response.text()))
        except Exception:  # a redirect has no body to read
            bodies.append((response.url, ""))

    page.on("response", keep)
    browser_login(page, dashboard_server.admin_key)
    page.goto("/dashboard/budgets")
    page.click("text=Log out")
    browser_login(page, reader)
    assert page.locator('[data-testid="who"]').inner_text().startswith(f"tenant {mine.tenant_id}")
    page.goto("/dashboard/budgets")
    scopes = page.locator('tr[data-testid="budget-row"]').evaluate_all("rows => rows.map(r => r.dataset.scope)")
    assert scopes and all(scope.startswith(f"tenant:{mine.tenant_id}") for scope in scopes)
    assert page.locator('[data-testid="freeze"]').count() > 0
    screenshot(page, artifacts, "budgets-tenant")
    page.goto(f"/dashboard/budgets?tenant_id={other.tenant_id}")
    assert page.locator(f'tr[data-testid="budget-row"][data-scope^="tenant:{other.tenant_id}"]').count() == 0
    page.goto("/dashboard/reservations")
    page.goto("/dashboard/")
    assert len(bodies) >= 8
    for url, text in bodies:
        for secret in (dashboard_server.admin_key, reader):
            assert secret not in url and secret not in text, url
    assert all(secret not in page.url for secret in (dashboard_server.admin_key, reader))


def test_pages_fit_a_phone_screen(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, artifacts: Path,
) -> None:
    tenant = funded_tenant(db_conn)
    page.set_viewport_size({"width": 390, "height": 844})
    browser_login(page, dashboard_server.admin_key)
    for path, name in ((f"/dashboard/budgets?tenant_id={tenant.tenant_id}", "phone-budgets"),
                       ("/dashboard/", "phone-overview")):
        page.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} scrolls sideways on a phone ({width}px)"
        screenshot(page, artifacts, name)
    # Keyboard: the freeze button is reachable with Tab and works with Enter.
    page.goto(f"/dashboard/budgets?tenant_id={tenant.tenant_id}")
    freeze = _row(page, tenant.scope).locator('[data-testid="freeze"]')
    freeze.focus()
    page.keyboard.press("Enter")
    assert tenant.scope in page.locator('[data-testid="question"]').inner_text()
