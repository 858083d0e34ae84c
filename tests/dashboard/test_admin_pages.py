"""API keys and the audit log, in the browser and over HTTP."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.sync_api import Page

from tests.api.provision import funded_tenant, new_api_key, new_tenant, reserve_body
from tests.dashboard.helpers import browser_login, http_login, screenshot
from tests.server import ApiServer

Conn = psycopg.Connection[Any]


@pytest.fixture
def admin(dashboard_server: ApiServer) -> Iterator[tuple[httpx.Client, str]]:
    with httpx.Client(base_url=dashboard_server.base_url, timeout=30) as client:
        yield client, http_login(client, dashboard_server.admin_key)


def test_create_a_key_shows_its_secret_once_and_it_works(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, api: httpx.Client, artifacts: Path,
) -> None:
    tenant = funded_tenant(db_conn)
    browser_login(page, dashboard_server.admin_key)
    page.goto(f"/dashboard/api-keys?tenant_id={tenant.tenant_id}")
    page.click("summary:has-text('Create a key')")
    page.fill("input[name=name]", "from the dashboard")
    page.check("input[name=permissions][value='reservations:create']")
    page.check("input[name=permissions][value='reservations:commit']")
    page.click('[data-testid="create-key"]')
    secret = page.locator('[data-testid="created-secret"]').inner_text().strip()
    assert secret
    screenshot(page, artifacts, "api-keys-created")
    reserved = api.post("/v1/reservations", json=reserve_body(tenant), headers={"X-Cycles-API-Key": secret})
    assert reserved.status_code == 200, reserved.text
    permissions = db_conn.execute(
        "SELECT permissions FROM cycles.api_keys WHERE tenant_id = %s AND name = 'from the dashboard'",
        (tenant.tenant_id,)).fetchone()
    assert permissions == (["reservations:create", "reservations:commit"],)
    # Shown once: the list (and a reload) never carries it again.
    page.goto(f"/dashboard/api-keys?tenant_id={tenant.tenant_id}")
    assert secret not in page.content()
    screenshot(page, artifacts, "api-keys")


def test_revoke_a_key(page: Page, dashboard_server: ApiServer, db_conn: Conn, api: httpx.Client) -> None:
    tenant = new_tenant(db_conn)
    key_id = db_conn.execute(
        "SELECT key_id FROM cycles.api_keys WHERE tenant_id = %s", (tenant.tenant_id,)).fetchone()
    assert key_id is not None
    browser_login(page, dashboard_server.admin_key)
    page.goto(f"/dashboard/api-keys?tenant_id={tenant.tenant_id}")
    page.locator(f'tr[data-testid="key-row"][data-id="{key_id[0]}"] [data-testid="revoke"]').click()
    assert key_id[0] in page.locator('[data-testid="question"]').inner_text()
    page.click('[data-testid="confirm"]')
    page.wait_for_selector('[data-testid="notice"]')
    row = page.locator(f'tr[data-testid="key-row"][data-id="{key_id[0]}"]')
    assert row.locator('[data-testid="key-status"]').inner_text() == "REVOKED"
    refused = api.get("/v1/balances", params={"tenant": tenant.tenant_id}, headers=tenant.headers())
    assert refused.status_code == 401
    audited = db_conn.execute(
        "SELECT status FROM cycles.audit_logs WHERE operation = 'revokeApiKey' AND resource_id = %s",
        (key_id[0],)).fetchall()
    assert audited == [(200,)]


def test_audit_log_shows_dashboard_actions_and_exports_csv(
    page: Page, dashboard_server: ApiServer, db_conn: Conn, artifacts: Path,
) -> None:
    tenant = funded_tenant(db_conn)
    browser_login(page, dashboard_server.admin_key)
    page.goto(f"/dashboard/budgets?tenant_id={tenant.tenant_id}")
    page.locator(f'tr[data-testid="budget-row"][data-scope="{tenant.scope}"] [data-testid="freeze"]').click()
    page.click('[data-testid="confirm"]')
    page.wait_for_selector('[data-testid="notice"]')
    page.goto(f"/dashboard/audit?tenant_id={tenant.tenant_id}")
    operations = page.locator('[data-testid="audit-operation"]').all_inner_texts()
    assert "freezeBudget" in operations and "listBudgets" in operations
    screenshot(page, artifacts, "audit")
    with page.expect_download() as download_info:
        page.click('[data-testid="export-csv"]')
    path = download_info.value.path()
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    assert {row["tenant_id"] for row in rows} == {tenant.tenant_id}
    freeze = [row for row in rows if row["operation"] == "freezeBudget"]
    assert len(freeze) == 1 and freeze[0]["status"] == "200" and freeze[0]["actor_type"] == "admin"


def test_csv_export_pages_through_the_log_and_defuses_formulas(
    admin: tuple[httpx.Client, str], db_conn: Conn,
) -> None:
    client, _ = admin
    tenant = new_tenant(db_conn)
    for i in range(130):  # more than one export page of 100
        db_conn.execute("SELECT cycles.record_audit_failure(p_ctx => '{}'::jsonb, p_operation => %s, p_status => 400,"
                        " p_error_code => 'INVALID_REQUEST', p_message => 'x', p_resource_type => 'budget',"
                        " p_resource_id => %s, p_tenant_id => %s)",
                        ("createBudget", "=HYPERLINK(\"x\")" if i == 0 else f"r{i}", tenant.tenant_id))
    answer = client.get(
        "/dashboard/audit/export.csv", params={"tenant_id": tenant.tenant_id, "operation": "createBudget"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(rows) == 130
    assert "'=HYPERLINK(\"x\")" in {row["resource_id"] for row in rows}
    as_json = client.get(
        "/dashboard/audit/export.json", params={"tenant_id": tenant.tenant_id, "operation": "createBudget"})
    assert as_json.status_code == 200 and as_json.headers["content-type"].startswith("application/json")
    logs = as_json.json()["logs"]
    assert len(logs) == 130 and len({log["log_id"] for log in logs}) == 130
    assert {log["log_id"] for log in logs} == {row["log_id"] for row in rows}
    assert "=HYPERLINK(\"x\")" in {log["resource_id"] for log in logs}  # JSON is data, left as it is


def test_admin_pages_refuse_tenant_sessions(dashboard_server: ApiServer, db_conn: Conn) -> None:
    tenant = funded_tenant(db_conn)
    reader = new_api_key(db_conn, tenant.tenant_id, ["admin:read", "admin:write"])
    with httpx.Client(base_url=dashboard_server.base_url, timeout=30) as client:
        csrf = http_login(client, reader)
        assert "/dashboard/api-keys" not in client.get("/dashboard/").text  # not offered
        keys = client.get("/dashboard/api-keys")
        assert keys.status_code == 200 and 'data-testid="key-row"' not in keys.text
        assert "admin key" in keys.text
        created = client.post("/dashboard/api-keys/create", data={
            "tenant_id": tenant.tenant_id, "name": "sneaky", "csrf_token": csrf})
        assert 'data-testid="created-secret"' not in created.text
        assert db_conn.execute("SELECT count(*) FROM cycles.api_keys WHERE name = 'sneaky'").fetchone() == (0,)
        audit = client.get("/dashboard/audit")
        assert 'data-testid="audit-row"' not in audit.text
        export = client.get("/dashboard/audit/export.csv")
        assert export.status_code == 303 and "error=" in export.headers["location"]
