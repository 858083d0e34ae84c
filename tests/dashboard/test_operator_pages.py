"""The operator pages added to the first version: tenants, policies, webhooks,
events, the reservation detail and windows, the budget tree, the overdraft
limit and the overview's month spend; in the browser (with screenshots) and
over HTTP. Every action is checked for its effect and its audit row."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.sync_api import Page

from tests.api.provision import (
    USD,
    Tenant,
    create_budget,
    funded_tenant,
    new_api_key,
    new_tenant,
    reserve_body,
    unique,
)
from tests.dashboard.helpers import browser_login, http_login, screenshot
from tests.server import ApiServer

Conn = psycopg.Connection[Any]


@pytest.fixture
def admin(dashboard_server: ApiServer) -> Iterator[tuple[httpx.Client, str]]:
    with httpx.Client(base_url=dashboard_server.base_url, timeout=30) as client:
        yield client, http_login(client, dashboard_server.admin_key)


def _audited(conn: Conn, operation: str, resource_id: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT actor_type, status FROM cycles.audit_logs WHERE operation = %s AND resource_id = %s"
        " ORDER BY created_at", (operation, resource_id)).fetchall()


def _overdraft(conn: Conn, scope: str) -> int:
    row = conn.execute("SELECT overdraft_limit FROM cycles.budgets WHERE scope = %s AND unit = %s",
                       (scope, USD)).fetchone()
    assert row is not None
    return int(row[0])


def _webhook(conn: Conn, tenant_id: str) -> str:
    row = conn.execute(
        "SELECT cycles.create_webhook(%s::jsonb, %s) -> 'subscription' ->> 'subscription_id'",
        (json.dumps({"url": "https://127.0.0.1:9/hook", "event_types": ["budget.exhausted"]}), tenant_id),
    ).fetchone()
    assert row is not None
    return str(row[0])


def _policy(conn: Conn, tenant_id: str, name: str = "cap") -> str:
    row = conn.execute(
        "SELECT cycles.create_policy(p_tenant_id => %s, p_name => %s, p_scope_pattern => %s) ->> 'policy_id'",
        (tenant_id, name, f"tenant:{tenant_id}/workspace:*")).fetchone()
    assert row is not None
    return str(row[0])


def _charge(api: httpx.Client, tenant: Tenant, amount: int, agent: str) -> str:
    reserved = api.post("/v1/reservations", json=reserve_body(
        tenant, amount=amount, subject=tenant.subject(workspace="w1", agent=agent)), headers=tenant.headers())
    assert reserved.status_code == 200, reserved.text
    reservation_id: str = reserved.json()["reservation_id"]
    committed = api.post(f"/v1/reservations/{reservation_id}/commit", json={
        "idempotency_key": unique("c-"), "actual": {"unit": USD, "amount": amount}}, headers=tenant.headers())
    assert committed.status_code == 200, committed.text
    return reservation_id


# Overview ---------------------------------------------------------------------

def test_overview_shows_the_months_spend_and_top_agents(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, api: httpx.Client, artifacts: Path,
) -> None:
    tenant = funded_tenant(db_conn)
    _charge(api, tenant, 3_000, "big-spender")
    _charge(api, tenant, 1_000, "small-spender")
    _charge(api, tenant, 500, "big-spender")
    reader = new_api_key(db_conn, tenant.tenant_id, ["admin:read"])
    browser_login(page, reader)  # the tenant's own figures: exact
    assert page.locator('[data-testid="charged-month"]').inner_text() == f"4,500 {USD}"
    assert page.locator('[data-testid="charged-today"]').inner_text() == f"4,500 {USD}"
    agents = page.locator('[data-testid="top-agent"]').all_inner_texts()
    assert [row.split("\t")[2] for row in agents] == ["big-spender", "small-spender"]
    assert page.locator('[data-testid="top-agent-charged"]').all_inner_texts() == ["3,500", "1,000"]
    assert page.locator('[data-testid="top-tenants"]').count() == 0  # the admin's view only
    page.click("text=Log out")
    browser_login(page, dashboard_server.admin_key)
    assert page.locator('[data-testid="charged-month"]').count() >= 1
    assert page.locator('[data-testid="top-tenant"]').count() >= 1
    screenshot(page, artifacts, "overview-month")


# Budgets: tree and overdraft limit -------------------------------------------------

def test_budget_tree_indents_by_depth(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, artifacts: Path,
) -> None:
    tenant = funded_tenant(db_conn)
    create_budget(db_conn, f"{tenant.scope}/workspace:w1/agent:a1", 1_000)
    create_budget(db_conn, f"{tenant.scope}/workspace:w2", 1_000)
    browser_login(page, dashboard_server.admin_key)
    page.goto(f"/dashboard/budgets?tenant_id={tenant.tenant_id}&view=tree")
    cells = page.locator('[data-testid="tree-cell"]')
    depths = [cells.nth(i).get_attribute("data-depth") for i in range(cells.count())]
    assert depths == ["0", "1", "2", "1"]
    assert page.locator('[data-testid="budget-link"]').all_inner_texts() == [
        f"tenant:{tenant.tenant_id}", "workspace:w1", "agent:a1", "workspace:w2"]
    screenshot(page, artifacts, "budgets-tree")
    page.click("a:text-is('children') >> nth=1")  # workspace:w1's subtree
    assert page.locator('[data-testid="budget-link"]').all_inner_texts() == ["agent:a1"]


def test_patch_the_overdraft_limit_after_confirmation(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, artifacts: Path,
) -> None:
    tenant = funded_tenant(db_conn)
    scope = f"{tenant.scope}/workspace:w1"
    browser_login(page, dashboard_server.admin_key)
    page.goto(f"/dashboard/budgets?tenant_id={tenant.tenant_id}&view=tree")
    row = page.locator(f'tr[data-testid="budget-row"][data-scope="{scope}"]')
    row.locator("summary", has_text="Overdraft limit").click()
    row.locator('[data-testid="overdraft-amount"]').fill("25000")
    row.locator('[data-testid="overdraft-submit"]').click()
    assert "25,000" in page.locator('[data-testid="question"]').inner_text()
    screenshot(page, artifacts, "confirm-overdraft")
    assert _overdraft(db_conn, scope) == 0  # nothing before the confirmation
    page.click('[data-testid="confirm"]')
    page.wait_for_selector('[data-testid="notice"]')
    assert "overdraft limit now 25000" in page.locator('[data-testid="notice"]').inner_text()
    assert _overdraft(db_conn, scope) == 25_000
    budget_id = db_conn.execute("SELECT budget_id::text FROM cycles.budgets WHERE scope = %s", (scope,)).fetchone()
    assert budget_id is not None
    assert _audited(db_conn, "updateBudget", budget_id[0]) == [("admin", 200)]
    assert "view=tree" in page.url  # back to the view it came from


def test_bad_overdraft_input_changes_nothing(db_conn: Conn, admin: tuple[httpx.Client, str]) -> None:
    client, csrf = admin
    tenant = funded_tenant(db_conn)
    for value in ("", "-5", "abc", "1e3", "99999999999999999999"):
        answer = client.post("/dashboard/budgets/overdraft", data={
            "scope": tenant.scope, "unit": USD, "overdraft_limit": value, "confirmed": "yes", "csrf_token": csrf})
        assert answer.status_code == 303 and "error=" in answer.headers["location"], value
    assert _overdraft(db_conn, tenant.scope) == 0


# Reservations: detail and windows ---------------------------------------------------

def test_reservation_detail_shows_the_reservation_and_its_ledger_rows(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, api: httpx.Client, artifacts: Path,
) -> None:
    tenant = funded_tenant(db_conn)
    reservation_id = _charge(api, tenant, 2_000, "detail-agent")
    browser_login(page, dashboard_server.admin_key)
    page.goto(f"/dashboard/reservations?tenant={tenant.tenant_id}")
    page.locator(f'tr[data-id="{reservation_id}"] [data-testid="reservation-link"]').click()
    assert page.locator('[data-testid="reservation-status"]').inner_text() == "COMMITTED"
    fields = page.locator('[data-testid="reservation-fields"]').inner_text()
    assert reservation_id in fields and "detail-agent" in fields
    operations = [page.locator('[data-testid="ledger-row"]').nth(i).get_attribute("data-operation")
                  for i in range(page.locator('[data-testid="ledger-row"]').count())]
    assert operations == ["RESERVE", "RESERVE", "COMMIT", "COMMIT"]  # tenant and workspace budgets
    screenshot(page, artifacts, "reservation-detail")
    assert _audited(db_conn, "dashboardReservationHistory", reservation_id) == [("admin", 200)]


def test_an_expired_reservation_still_has_a_detail_page(
    admin: tuple[httpx.Client, str], db_conn: Conn, api: httpx.Client,
) -> None:
    client, _ = admin
    tenant = funded_tenant(db_conn)
    reserved = api.post("/v1/reservations", json=reserve_body(tenant, ttl_ms=1000, grace_period_ms=0),
                        headers=tenant.headers())
    assert reserved.status_code == 200, reserved.text
    reservation_id = reserved.json()["reservation_id"]
    # The server's sweeper runs every 200 ms: wait for the expiry.
    for _ in range(100):
        if db_conn.execute("SELECT status FROM cycles.reservations WHERE reservation_id = %s",
                           (reservation_id,)).fetchone() == ("EXPIRED",):
            break
        page_wait = db_conn.execute("SELECT pg_sleep(0.1)")
        assert page_wait is not None
    detail = client.get("/dashboard/reservations/detail", params={"id": reservation_id})
    assert "RESERVATION_EXPIRED" in detail.text
    assert re.search(r'data-testid="reservation-status">EXPIRED<', detail.text)
    assert 'data-operation="EXPIRE"' in detail.text
    listed = client.get("/dashboard/reservations", params={"tenant": tenant.tenant_id, "status": "EXPIRED"})
    assert reservation_id in listed.text


def test_reservation_windows(admin: tuple[httpx.Client, str], db_conn: Conn, api: httpx.Client) -> None:
    client, _ = admin
    tenant = funded_tenant(db_conn)
    live = api.post("/v1/reservations", json=reserve_body(tenant), headers=tenant.headers()).json()["reservation_id"]
    later = api.post("/v1/reservations", json=reserve_body(tenant, ttl_ms=3_600_000),
                     headers=tenant.headers()).json()["reservation_id"]
    done = _charge(api, tenant, 100, "w")
    base = {"tenant": tenant.tenant_id}
    soon = client.get("/dashboard/reservations", params={**base, "window": "expiring_soon"}).text
    assert live in soon and later not in soon and done not in soon
    finalised = client.get("/dashboard/reservations", params={**base, "window": "finalized_hour"}).text
    assert done in finalised and live not in finalised
    today = client.get("/dashboard/reservations", params={**base, "window": "finalized_today"}).text
    assert done in today and later not in today


# Tenants ----------------------------------------------------------------------------

def test_create_suspend_and_reactivate_a_tenant(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, api: httpx.Client, artifacts: Path,
) -> None:
    tenant_id = unique("dash-").lower().replace("_", "-")[:40]
    browser_login(page, dashboard_server.admin_key)
    page.goto("/dashboard/tenants")
    page.click("summary:has-text('Create a tenant')")
    page.fill('[data-testid="create-tenant-form"] input[name=tenant_id]', tenant_id)
    page.fill('[data-testid="create-tenant-form"] input[name=name]', "Made in the dashboard")
    page.click('[data-testid="create-tenant"]')
    page.wait_for_selector('[data-testid="notice"]')
    assert page.locator('[data-testid="tenant-status"]').inner_text() == "ACTIVE"
    assert _audited(db_conn, "createTenant", tenant_id) == [("admin", 201)]
    screenshot(page, artifacts, "tenant-detail")
    key = new_api_key(db_conn, tenant_id)
    create_budget(db_conn, f"tenant:{tenant_id}", 10_000)

    page.click('[data-testid="suspend"]')
    assert tenant_id in page.locator('[data-testid="question"]').inner_text()
    screenshot(page, artifacts, "confirm-suspend")
    assert db_conn.execute("SELECT status FROM cycles.tenants WHERE tenant_id = %s", (tenant_id,)).fetchone() == (
        "ACTIVE",)
    page.click('[data-testid="confirm"]')
    page.wait_for_selector('[data-testid="notice"]')
    assert page.locator('[data-testid="tenant-status"]').inner_text() == "SUSPENDED"
    refused = api.post("/v1/reservations", json=reserve_body(Tenant(tenant_id, key), subject={"tenant": tenant_id}),
                       headers={"X-Cycles-API-Key": key})
    assert refused.status_code == 403, refused.text
    page.click('[data-testid="reactivate"]')
    page.click('[data-testid="confirm"]')
    page.wait_for_selector('[data-testid="notice"]')
    assert page.locator('[data-testid="tenant-status"]').inner_text() == "ACTIVE"
    assert _audited(db_conn, "updateTenant", tenant_id) == [("admin", 200), ("admin", 200)]
    accepted = api.post("/v1/reservations", json=reserve_body(Tenant(tenant_id, key), subject={"tenant": tenant_id}),
                        headers={"X-Cycles-API-Key": key})
    assert accepted.status_code == 200, accepted.text
    page.goto(f"/dashboard/tenants?search={tenant_id}")
    assert page.locator('[data-testid="tenant-row"]').count() == 1
    screenshot(page, artifacts, "tenants")


# Policies ---------------------------------------------------------------------------

def test_create_disable_and_edit_a_policy(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, artifacts: Path,
) -> None:
    tenant = funded_tenant(db_conn)
    browser_login(page, dashboard_server.admin_key)
    page.goto(f"/dashboard/policies?tenant_id={tenant.tenant_id}")
    page.click("summary:has-text('Create a policy')")
    form = page.locator('[data-testid="create-policy-form"]')
    form.locator("input[name=name]").fill("workspace cap")
    form.locator("input[name=scope_pattern]").fill(f"tenant:{tenant.tenant_id}/workspace:*")
    form.locator("input[name=priority]").fill("3")
    page.click('[data-testid="create-policy"]')
    page.wait_for_selector('[data-testid="notice"]')
    row = page.locator('tr[data-testid="policy-row"]')
    assert row.count() == 1
    policy_id = row.get_attribute("data-id")
    assert policy_id is not None
    assert row.locator('[data-testid="policy-priority"]').inner_text() == "3"
    row.locator('[data-testid="toggle-policy"]').click()
    page.wait_for_selector('[data-testid="notice"]')
    assert page.locator('[data-testid="policy-status"]').inner_text() == "DISABLED"
    row = page.locator('tr[data-testid="policy-row"]')
    row.locator("summary", has_text="Edit").click()
    row.locator('[data-testid="edit-priority"]').fill("9")
    row.locator('[data-testid="save-policy"]').click()
    page.wait_for_selector('[data-testid="notice"]')
    assert page.locator('[data-testid="policy-priority"]').inner_text() == "9"
    screenshot(page, artifacts, "policies")
    assert db_conn.execute("SELECT status, priority FROM cycles.policies WHERE policy_id = %s",
                           (policy_id,)).fetchone() == ("DISABLED", 9)
    assert [status for _, status in _audited(db_conn, "createPolicy", policy_id)] == [201]
    assert _audited(db_conn, "updatePolicy", policy_id) == [("admin_on_behalf_of", 200)] * 2


def test_bad_policy_input_is_refused(db_conn: Conn, admin: tuple[httpx.Client, str]) -> None:
    client, csrf = admin
    tenant = new_tenant(db_conn)
    for caps in ("not json", "[1, 2]"):
        answer = client.post("/dashboard/policies/create", data={
            "tenant_id": tenant.tenant_id, "name": "x", "scope_pattern": f"tenant:{tenant.tenant_id}",
            "caps": caps, "csrf_token": csrf})
        assert answer.status_code == 303 and "error=" in answer.headers["location"]
    answer = client.post("/dashboard/policies/create", data={
        "tenant_id": tenant.tenant_id, "name": "x", "scope_pattern": "not a pattern", "csrf_token": csrf},
        follow_redirects=True)
    assert answer.status_code == 200 and "refused" in answer.text
    assert db_conn.execute("SELECT count(*) FROM cycles.policies WHERE tenant_id = %s",
                           (tenant.tenant_id,)).fetchone() == (0,)


# Webhooks ---------------------------------------------------------------------------

def test_webhook_health_pause_resume_test_and_replay(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, artifacts: Path,
) -> None:
    tenant = funded_tenant(db_conn)
    subscription_id = _webhook(db_conn, tenant.tenant_id)
    failing = _webhook(db_conn, tenant.tenant_id)
    db_conn.execute("UPDATE cycles.webhook_subscriptions SET consecutive_failures = 3 WHERE subscription_id = %s",
                    (failing,))
    browser_login(page, dashboard_server.admin_key)
    page.goto(f"/dashboard/webhooks?tenant_id={tenant.tenant_id}")
    health = {page.locator('[data-testid="webhook-row"]').nth(i).get_attribute("data-id"):
              page.locator('[data-testid="webhook-health"]').nth(i).inner_text() for i in range(2)}
    assert health == {subscription_id: "healthy", failing: "failing (3 in a row)"}
    screenshot(page, artifacts, "webhooks")

    page.locator(f'tr[data-id="{subscription_id}"] [data-testid="webhook-link"]').click()
    page.click('[data-testid="pause"]')
    assert subscription_id in page.locator('[data-testid="question"]').inner_text()
    screenshot(page, artifacts, "confirm-pause-webhook")
    page.click('[data-testid="confirm"]')
    page.wait_for_selector('[data-testid="notice"]')
    assert page.locator('[data-testid="webhook-status"]').inner_text() == "PAUSED"
    page.click('[data-testid="resume"]')
    page.wait_for_selector('[data-testid="notice"]')
    assert page.locator('[data-testid="webhook-status"]').inner_text() == "ACTIVE"
    assert _audited(db_conn, "updateWebhookSubscription", subscription_id) == [("admin", 200)] * 2

    # The test delivery goes to 127.0.0.1, which the URL policy refuses: the
    # page says why, and the attempt is in the history.
    page.click('[data-testid="test"]')
    page.wait_for_selector('[data-testid="notice"], [data-testid="error"]')
    assert "Test delivery" in page.locator("main").inner_text()
    assert page.locator('[data-testid="delivery-row"]').count() == 1
    assert _audited(db_conn, "testWebhookSubscription", subscription_id) == [("admin", 200)]

    page.click("summary:has-text('Replay stored events')")
    page.click('[data-testid="replay"]')
    page.wait_for_selector('[data-testid="notice"]')
    assert "event(s) queued" in page.locator('[data-testid="notice"]').inner_text()
    assert _audited(db_conn, "replayWebhookEvents", subscription_id) == [("admin", 200)]
    screenshot(page, artifacts, "webhook-detail")


# Events -----------------------------------------------------------------------------

def _events(conn: Conn, tenant_id: str, correlation: str) -> None:
    """Three events, two sharing a correlation id, with trace ids."""
    conn.execute("""
        INSERT INTO cycles.events (event_id, tenant_id, event_type, category, scope, source, data, correlation_id,
                                   trace_id, created_at)
        VALUES (%(p)s || '1', %(t)s, 'reservation.denied', 'reservation', 'tenant:' || %(t)s || '/workspace:w1',
                'cycles-server', '{"reason_code": "BUDGET_EXCEEDED"}', %(c)s, repeat('a', 32),
                clock_timestamp() - interval '2 seconds'),
               (%(p)s || '2', %(t)s, 'budget.exhausted', 'budget', 'tenant:' || %(t)s, 'cycles-server', '{}',
                %(c)s, repeat('b', 32), clock_timestamp() - interval '1 second'),
               (%(p)s || '3', %(t)s, 'budget.exhausted', 'budget', 'tenant:' || %(t)s, 'cycles-server', '{}',
                'other-' || %(c)s, repeat('c', 32), clock_timestamp())""",
                 {"p": f"evt_{tenant_id}_", "t": tenant_id, "c": correlation})


_EVENT_IDS = re.compile(r'data-testid="event-row" data-id="([^"]+)"')


def test_events_filters_and_following_a_correlation(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, artifacts: Path,
) -> None:
    tenant = new_tenant(db_conn)
    correlation = unique("corr-")
    _events(db_conn, tenant.tenant_id, correlation)
    prefix = f"evt_{tenant.tenant_id}_"
    browser_login(page, dashboard_server.admin_key)
    page.goto(f"/dashboard/events?tenant_id={tenant.tenant_id}&event_type=budget.exhausted")
    ids = page.locator('[data-testid="event-row"]').evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert ids == [prefix + "3", prefix + "2"]  # newest first
    screenshot(page, artifacts, "events")
    page.locator(f'tr[data-id="{prefix}2"] [data-testid="follow-correlation"]').click()
    assert page.locator('[data-testid="following"]').inner_text() == correlation
    ids = page.locator('[data-testid="event-row"]').evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert ids == [prefix + "1", prefix + "2"]  # the correlation, in the order it happened
    screenshot(page, artifacts, "events-correlation")
    page.goto(f"/dashboard/events?trace_id={'c' * 32}&tenant_id={tenant.tenant_id}")
    assert page.locator('[data-testid="event-row"]').evaluate_all("rows => rows.map(r => r.dataset.id)") == [
        prefix + "3"]
    page.goto(f"/dashboard/events?scope=tenant:{tenant.tenant_id}/workspace&tenant_id={tenant.tenant_id}")
    assert page.locator('[data-testid="event-row"]').count() == 1
    page.goto("/dashboard/events?trace_id=XYZ")
    assert "32 lowercase hex" in page.locator('[data-testid="events-error"]').inner_text()
    audited = db_conn.execute(
        "SELECT count(*) FROM cycles.audit_logs WHERE operation = 'listEvents' AND tenant_id = %s",
        (tenant.tenant_id,)).fetchone()
    assert audited is not None and audited[0] >= 3


# Tenant sessions on the new pages ----------------------------------------------------

def test_a_tenant_session_cannot_see_or_touch_another_tenant_on_the_new_pages(
    db_conn: Conn, dashboard_server: ApiServer, api: httpx.Client,
) -> None:
    mine, other = funded_tenant(db_conn), funded_tenant(db_conn)
    other_policy, other_hook = _policy(db_conn, other.tenant_id), _webhook(db_conn, other.tenant_id)
    my_policy, my_hook = _policy(db_conn, mine.tenant_id), _webhook(db_conn, mine.tenant_id)
    _events(db_conn, other.tenant_id, unique("corr-"))
    _events(db_conn, mine.tenant_id, unique("corr-"))
    other_reservation = _charge(api, other, 100, "x")
    reader = new_api_key(db_conn, mine.tenant_id, [
        "admin:read", "admin:write", "policies:write", "admin:policies:write", "webhooks:write",
        "admin:webhooks:write", "admin:budgets:write", "events:read"])
    with httpx.Client(base_url=dashboard_server.base_url, timeout=30) as client:
        csrf = http_login(client, reader)
        home = client.get("/dashboard/").text
        assert "/dashboard/tenants" not in home  # not offered
        # Tenants: admin only.
        assert 'data-testid="tenant-row"' not in client.get("/dashboard/tenants").text
        assert other.tenant_id not in client.get(
            "/dashboard/tenants/detail", params={"tenant_id": other.tenant_id}).text.split("</h1>", 1)[1].replace(
            f"tenant_id={other.tenant_id}", "")
        answer = client.post("/dashboard/tenants/status", data={
            "tenant_id": other.tenant_id, "status": "SUSPENDED", "confirmed": "yes", "csrf_token": csrf})
        assert answer.status_code == 303 and "error=" in answer.headers["location"]
        # Policies: its own only, whatever tenant is named.
        policies = client.get("/dashboard/policies", params={"tenant_id": other.tenant_id}).text
        assert my_policy in policies and other_policy not in policies
        answer = client.post("/dashboard/policies/update", data={
            "policy_id": other_policy, "status": "DISABLED", "csrf_token": csrf})
        assert answer.status_code == 303 and "error=" in answer.headers["location"]
        # Webhooks: its own only; another tenant's is not found.
        hooks = client.get("/dashboard/webhooks", params={"tenant_id": other.tenant_id}).text
        assert my_hook in hooks and other_hook not in hooks
        detail = client.get("/dashboard/webhooks/detail", params={"id": other_hook}).text
        assert "WEBHOOK_NOT_FOUND" in detail and "https://127.0.0.1:9/hook" not in detail
        for path, data in (("/dashboard/webhooks/status", {"status": "PAUSED", "confirmed": "yes"}),
                           ("/dashboard/webhooks/test", {}), ("/dashboard/webhooks/replay", {})):
            answer = client.post(path, data={"subscription_id": other_hook, "csrf_token": csrf, **data})
            assert answer.status_code == 303 and "error=" in answer.headers["location"], path
        # Events: its own tenant's, a tenant filter is not offered or obeyed.
        events = client.get("/dashboard/events", params={"tenant_id": other.tenant_id}).text
        assert f"evt_{mine.tenant_id}_1" in events and f"evt_{other.tenant_id}_" not in events
        # Reservation detail and overdraft limit of the other tenant.
        detail = client.get("/dashboard/reservations/detail", params={"id": other_reservation}).text
        assert 'data-testid="reservation-fields"' not in detail and "NOT_FOUND" in detail
        answer = client.post("/dashboard/budgets/overdraft", data={
            "scope": other.scope, "unit": USD, "overdraft_limit": "999", "confirmed": "yes", "csrf_token": csrf})
        assert answer.status_code == 303 and "error=" in answer.headers["location"]
    state = db_conn.execute(
        "SELECT (SELECT status FROM cycles.tenants WHERE tenant_id = %(t)s),"
        " (SELECT status FROM cycles.policies WHERE policy_id = %(p)s),"
        " (SELECT status FROM cycles.webhook_subscriptions WHERE subscription_id = %(w)s),"
        " (SELECT overdraft_limit FROM cycles.budgets WHERE scope = %(s)s),"
        " (SELECT count(*) FROM cycles.webhook_deliveries WHERE subscription_id = %(w)s AND kind <> 'live')",
        {"t": other.tenant_id, "p": other_policy, "w": other_hook, "s": other.scope}).fetchone()
    assert state == ("ACTIVE", "ACTIVE", "ACTIVE", 0, 0)
    refused = db_conn.execute(
        "SELECT count(*) FROM cycles.audit_logs WHERE tenant_id = %s AND status >= 400 AND key_id IS NOT NULL",
        (mine.tenant_id,)).fetchone()
    assert refused is not None and refused[0] >= 5


# Sessions and CSRF on the new actions ------------------------------------------------

NEW_PAGES = ["/dashboard/tenants", "/dashboard/tenants/detail", "/dashboard/policies", "/dashboard/webhooks",
             "/dashboard/webhooks/detail", "/dashboard/events", "/dashboard/reservations/detail"]
NEW_ACTIONS = ["/dashboard/tenants/create", "/dashboard/tenants/status", "/dashboard/policies/create",
               "/dashboard/policies/update", "/dashboard/webhooks/status", "/dashboard/webhooks/test",
               "/dashboard/webhooks/replay", "/dashboard/budgets/overdraft"]


def test_new_pages_and_actions_need_a_session_and_the_csrf_token(
    db_conn: Conn, dashboard_server: ApiServer,
) -> None:
    tenant = funded_tenant(db_conn)
    hook, policy = _webhook(db_conn, tenant.tenant_id), _policy(db_conn, tenant.tenant_id)
    forms = {
        "/dashboard/tenants/create": {"tenant_id": unique("x-").lower().replace("_", "-")[:30], "name": "n"},
        "/dashboard/tenants/status": {"tenant_id": tenant.tenant_id, "status": "SUSPENDED", "confirmed": "yes"},
        "/dashboard/policies/create": {"tenant_id": tenant.tenant_id, "name": "n",
                                       "scope_pattern": f"tenant:{tenant.tenant_id}"},
        "/dashboard/policies/update": {"policy_id": policy, "status": "DISABLED"},
        "/dashboard/webhooks/status": {"subscription_id": hook, "status": "PAUSED", "confirmed": "yes"},
        "/dashboard/webhooks/test": {"subscription_id": hook},
        "/dashboard/webhooks/replay": {"subscription_id": hook},
        "/dashboard/budgets/overdraft": {"scope": tenant.scope, "unit": USD, "overdraft_limit": "5",
                                         "confirmed": "yes"},
    }
    with httpx.Client(base_url=dashboard_server.base_url, timeout=30) as client:
        for path in NEW_PAGES:
            answer = client.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/login", path
        for path in NEW_ACTIONS:
            answer = client.post(path, data={**forms[path], "csrf_token": "x" * 43})
            assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/login", path
        http_login(client, dashboard_server.admin_key)
        for path in NEW_PAGES:
            page = client.get(path)
            assert page.status_code == 200, path
            assert "script-src 'none'" in page.headers["content-security-policy"]
            assert "<script" not in page.text and " style=" not in page.text
        for path in NEW_ACTIONS:
            for token in (None, "wrong-" + "x" * 40):
                data = forms[path] if token is None else {**forms[path], "csrf_token": token}
                answer = client.post(path, data=data)
                assert answer.status_code == 403 and "CSRF" in answer.text, path
    state = db_conn.execute(
        "SELECT (SELECT status FROM cycles.tenants WHERE tenant_id = %(t)s),"
        " (SELECT count(*) FROM cycles.tenants WHERE tenant_id = %(n)s),"
        " (SELECT count(*) FROM cycles.policies WHERE tenant_id = %(t)s),"
        " (SELECT status FROM cycles.policies WHERE policy_id = %(p)s),"
        " (SELECT status FROM cycles.webhook_subscriptions WHERE subscription_id = %(w)s),"
        " (SELECT count(*) FROM cycles.webhook_deliveries WHERE subscription_id = %(w)s),"
        " (SELECT overdraft_limit FROM cycles.budgets WHERE scope = %(s)s)",
        {"t": tenant.tenant_id, "n": forms["/dashboard/tenants/create"]["tenant_id"], "p": policy, "w": hook,
         "s": tenant.scope}).fetchone()
    assert state == ("ACTIVE", 0, 1, "ACTIVE", "ACTIVE", 0, 0)
