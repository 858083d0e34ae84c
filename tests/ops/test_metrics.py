"""GET /metrics on the real server: counters and histograms move by what a
workload did, labels stay bounded, database gauges match the database."""

from __future__ import annotations

import time
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import TestClient

from app.config import Settings
from app.main import create_app
from tests.api.provision import USD, create_budget, event_body, funded_tenant, new_tenant, reserve_body
from tests.ops.scrape import delta, label_values, scrape, total, value
from tests.server import ApiServer, running_server

RESERVE = "/v1/reservations"
COMMIT = "/v1/reservations/{reservation_id}/commit"
RELEASE = "/v1/reservations/{reservation_id}/release"


def test_workload_moves_request_decision_and_error_counters(
        ops_http: httpx.Client, ops_conn: psycopg.Connection[Any]) -> None:
    tenant = funded_tenant(ops_conn)
    headers = tenant.headers()
    before = scrape(ops_http)

    reservations = []
    for _ in range(3):
        response = ops_http.post(RESERVE, json=reserve_body(tenant, 1000), headers=headers)
        assert response.status_code == 200, response.text
        reservations.append(response.json()["reservation_id"])
    commit = ops_http.post(f"{RESERVE}/{reservations[0]}/commit", headers=headers, json={
        "idempotency_key": "c-" + reservations[0], "actual": {"unit": USD, "amount": 700}})
    assert commit.status_code == 200, commit.text
    release = ops_http.post(f"{RESERVE}/{reservations[1]}/release", headers=headers,
                            json={"idempotency_key": "r-" + reservations[1]})
    assert release.status_code == 200, release.text
    # Over the workspace's 100,000: a live reserve is refused, a dry run says DENY.
    refused = ops_http.post(RESERVE, json=reserve_body(tenant, 500_000), headers=headers)
    assert refused.status_code == 409 and refused.json()["error"] == "BUDGET_EXCEEDED"
    dry = ops_http.post(RESERVE, json=reserve_body(tenant, 500_000, dry_run=True), headers=headers)
    assert dry.status_code == 200 and dry.json()["decision"] == "DENY", dry.text
    decide = ops_http.post("/v1/decide", json=reserve_body(tenant, 10), headers=headers)
    assert decide.status_code == 200 and decide.json()["decision"] == "ALLOW", decide.text
    event = ops_http.post("/v1/events", json=event_body(tenant, 10), headers=headers)
    assert event.status_code == 201, event.text
    bad = ops_http.post(RESERVE, json={"bad": True}, headers=headers)
    assert bad.status_code == 400
    missing = ops_http.get("/v1/no-such-thing/res_0123456789abcdef")
    assert missing.status_code == 404
    got = ops_http.get(f"{RESERVE}/{reservations[2]}", headers=headers)
    assert got.status_code == 200

    after = scrape(ops_http)
    requests = "cycles_http_requests_total"
    assert delta(before, after, requests, method="POST", route=RESERVE, status="200") == 4
    assert delta(before, after, requests, method="POST", route=RESERVE, status="409") == 1
    assert delta(before, after, requests, method="POST", route=RESERVE, status="400") == 1
    assert delta(before, after, requests, method="POST", route=COMMIT, status="200") == 1
    assert delta(before, after, requests, method="POST", route=RELEASE, status="200") == 1
    assert delta(before, after, requests, method="POST", route="/v1/events", status="201") == 1
    assert delta(before, after, requests, method="GET", route="/v1/reservations/{reservation_id}",
                 status="200") == 1
    assert delta(before, after, requests, method="GET", route="unmatched", status="404") == 1
    # The histogram counts the same requests, and its sum is their time.
    histogram = "cycles_http_request_duration_seconds_count"
    assert delta(before, after, histogram, method="POST", route=RESERVE) == 6
    assert delta(before, after, "cycles_http_request_duration_seconds_sum", method="POST", route=RESERVE) > 0
    assert delta(before, after, "cycles_http_request_duration_seconds_bucket", method="POST", route=RESERVE,
                 status="200", le="+Inf") == 4
    # Per tenant (CYCLES_METRICS_TENANT_LABEL is on for this server).
    assert delta(before, after, requests, route=RESERVE, tenant=tenant.tenant_id) == 6

    decisions = "cycles_decisions_total"
    assert delta(before, after, decisions, operation="reserve", decision="ALLOW") == 3
    assert delta(before, after, decisions, operation="reserve", decision="DENY") == 2
    assert delta(before, after, decisions, operation="decide", decision="ALLOW") == 1
    assert delta(before, after, decisions, operation="event", decision="ALLOW") == 1
    assert delta(before, after, decisions, operation="reserve", tenant=tenant.tenant_id) == 5
    assert delta(before, after, "cycles_denials_total", operation="reserve", reason="BUDGET_EXCEEDED") == 2
    errors = "cycles_http_errors_total"
    assert delta(before, after, errors, route=RESERVE, error="BUDGET_EXCEEDED") == 1
    assert delta(before, after, errors, route=RESERVE, error="INVALID_REQUEST") == 1
    assert delta(before, after, errors, route="unmatched", error="NOT_FOUND") == 1

    # Every call that reached SQL was timed, by function.
    calls = "cycles_db_call_duration_seconds_count"
    assert delta(before, after, calls, call="reserve") == 5
    assert delta(before, after, calls, call="commit") == 1
    assert delta(before, after, calls, call="decide") == 1


def test_labels_are_bounded(ops_http: httpx.Client, ops_conn: psycopg.Connection[Any]) -> None:
    tenant = funded_tenant(ops_conn)
    reservation = ops_http.post(RESERVE, json=reserve_body(tenant), headers=tenant.headers()).json()
    ops_http.get(f"{RESERVE}/{reservation['reservation_id']}", headers=tenant.headers())
    ops_http.request("BREW", "/v1/reservations")
    # A made-up tenant in an admin path (refused) is no tenant label.
    ops_http.get("/v1/admin/tenants/made-up-tenant-42")
    ops_http.get("/v1/admin/tenants/made-up-tenant-43", headers={"X-Admin-API-Key": "wrong"})
    samples = scrape(ops_http)
    text = ops_http.get("/metrics").text
    assert reservation["reservation_id"] not in text
    assert tenant.api_key not in text and "made-up-tenant" not in text
    for route in label_values(samples, "route"):
        assert route == "unmatched" or route.startswith("/"), route
        assert "res_" not in route and ":str" not in route
    assert label_values(samples, "method") <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}
    assert "OTHER" in label_values(samples, "method")
    for status in label_values(samples, "status"):
        assert status.isdigit() and len(status) == 3


def test_database_state_gauges(ops_http: httpx.Client, ops_conn: psycopg.Connection[Any]) -> None:
    tenant = funded_tenant(ops_conn)
    create_budget(ops_conn, f"{tenant.scope}/workspace:w2", 1000)
    active_before = value(scrape(ops_http), "cycles_reservations_active")
    response = ops_http.post(RESERVE, json=reserve_body(tenant, 5, ttl_ms=600_000), headers=tenant.headers())
    assert response.status_code == 200
    samples = scrape(ops_http)
    assert value(samples, "cycles_db_state_up") == 1
    active = ops_conn.execute("SELECT count(*) FROM cycles.reservations WHERE status = 'ACTIVE'").fetchone()
    assert active is not None and value(samples, "cycles_reservations_active") == active[0]
    assert value(samples, "cycles_reservations_active") >= active_before + 1
    over, debt = ops_conn.execute(
        "SELECT count(*) FILTER (WHERE is_over_limit), count(*) FILTER (WHERE debt > 0) FROM cycles.budgets"
    ).fetchone() or (None, None)
    assert value(samples, "cycles_budgets_over_limit") == over
    assert value(samples, "cycles_budgets_in_debt") == debt
    assert value(samples, "cycles_webhook_deliveries_open", state="PENDING") >= 0
    assert value(samples, "cycles_webhook_delivery_lag_seconds") >= 0


def test_debt_shows_in_the_gauges(ops_http: httpx.Client, ops_conn: psycopg.Connection[Any]) -> None:
    tenant = new_tenant(ops_conn)
    for scope in (tenant.scope, f"{tenant.scope}/workspace:w1"):
        create_budget(ops_conn, scope, 1000, overdraft_limit=1_000_000)
    before = scrape(ops_http)
    # An event over the budget with ALLOW_WITH_OVERDRAFT books debt on both budgets.
    response = ops_http.post("/v1/events", headers=tenant.headers(), json=event_body(
        tenant, 5000, overage_policy="ALLOW_WITH_OVERDRAFT"))
    assert response.status_code == 201, response.text
    after = scrape(ops_http)
    assert value(after, "cycles_budgets_in_debt") == value(before, "cycles_budgets_in_debt") + 2


def test_sweeper_expiries_are_counted(ops_http: httpx.Client, ops_conn: psycopg.Connection[Any]) -> None:
    tenant = funded_tenant(ops_conn)
    before = value(scrape(ops_http), "cycles_reservations_expired_total")
    response = ops_http.post(RESERVE, json=reserve_body(tenant, 5, ttl_ms=1000, grace_period_ms=0),
                             headers=tenant.headers())
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if value(scrape(ops_http), "cycles_reservations_expired_total") >= before + 1:
            break
        time.sleep(0.2)
    assert value(scrape(ops_http), "cycles_reservations_expired_total") >= before + 1


def test_pool_gauges(ops_http: httpx.Client) -> None:
    samples = scrape(ops_http)
    # One worker with CYCLES_POOL_MAX_SIZE=8 (tests.server).
    assert value(samples, "cycles_db_pool_connections", state="max") == 8
    assert 1 <= value(samples, "cycles_db_pool_connections", state="open") <= 8
    assert value(samples, "cycles_db_pool_requests_total") > 0
    assert value(samples, "cycles_server_processes") == 1
    assert total(samples, "cycles_db_pool_timeouts_total") == 0


def test_metrics_token_protects_the_endpoint(ops_server: ApiServer) -> None:
    with running_server(ops_server.conninfo, CYCLES_METRICS_TOKEN="scrape-token-0123456789") as server, \
            httpx.Client(base_url=server.base_url) as http:
        refused = http.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"] == "UNAUTHORIZED"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        samples = scrape(http, Authorization="Bearer scrape-token-0123456789")
        assert value(samples, "cycles_db_state_up") == 1
        log = server.log_file.read_text()
    assert "scrape-token-0123456789" not in log


def test_metrics_can_be_turned_off() -> None:
    settings = Settings(database_url="host=/nonexistent dbname=none", pool_min_size=0, metrics_enabled=False,
                        webhooks_disabled=True)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        response = client.get("/metrics")
        assert response.status_code == 404 and response.json()["error"] == "NOT_FOUND"


def test_state_gauges_need_only_the_app_roles_rights(ops_conn: psycopg.Connection[Any]) -> None:
    """A server connecting as cycles_app (EXECUTE on the cycles.* functions,
    no table access) can read the gauges' figures: they come from a function."""
    with ops_conn.transaction():
        expected = ops_conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'ACTIVE') FROM cycles.reservations").fetchone()
        ops_conn.execute("SET LOCAL ROLE cycles_app")
        snapshot = ops_conn.execute("SELECT o_reservations_active FROM cycles.metrics_snapshot()").fetchone()
        assert snapshot == expected
        with pytest.raises(psycopg.errors.InsufficientPrivilege), ops_conn.transaction():
            ops_conn.execute("SELECT count(*) FROM cycles.reservations")
