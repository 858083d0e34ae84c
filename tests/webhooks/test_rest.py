"""The webhook endpoints over HTTP against a real server, whose own delivery
worker posts to a real receiver on 127.0.0.1 (dev mode, private targets
allowed); a second, strict server checks the URL policy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from app.pgcluster import Cluster
from app.webhooks.signing import verify
from tests.api.provision import Tenant, create_budget, new_api_key, new_tenant, reserve_body
from tests.webhooks.receiver import Receiver
from tests.webhooks.server import Server, fresh_database, running_server

WEBHOOK_PERMISSIONS = ["webhooks:read", "webhooks:write", "reservations:create", "balances:read"]
SUBSCRIPTION_KEYS = {
    "subscription_id", "tenant_id", "name", "description", "url", "event_types", "event_categories",
    "scope_filter", "thresholds", "headers", "status", "retry_policy", "disable_after_failures",
    "consecutive_failures", "created_at", "updated_at", "last_triggered_at", "last_success_at",
    "last_failure_at", "metadata"}


@pytest.fixture(scope="module")
def dev(pg_cluster: Cluster) -> Iterator[Server]:
    conninfo = fresh_database(pg_cluster, "cycles_webhooks_dev")
    with running_server(conninfo, CYCLES_DEV_MODE="true", CYCLES_WEBHOOK_ALLOW_PRIVATE="true") as server:
        yield server


@pytest.fixture(scope="module")
def api(dev: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dev.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def conn(dev: Server) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dev.conninfo, autocommit=True) as connection:
        yield connection


@pytest.fixture
def tenant(conn: psycopg.Connection[Any]) -> Tenant:
    return new_tenant(conn, WEBHOOK_PERMISSIONS)


def admin(dev: Server) -> dict[str, str]:
    return {"X-Admin-API-Key": dev.admin_key}


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) <= {"error", "message", "request_id", "trace_id", "details"}
    error: str = body["error"]
    return error


def subscription_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM cycles.webhook_subscriptions").fetchone()
    assert row is not None
    count: int = row[0]
    return count


def test_admin_crud(api: httpx.Client, dev: Server, receiver: Receiver) -> None:
    created = api.post("/v1/admin/webhooks", headers=admin(dev), json={
        "url": receiver.url, "event_types": ["api_key.created"], "name": "ops"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"subscription", "signing_secret"} and body["signing_secret"].startswith("whsec_")
    sub = body["subscription"]
    assert set(sub) <= SUBSCRIPTION_KEYS and sub["tenant_id"] == "__system__"
    sub_id = sub["subscription_id"]
    got = api.get(f"/v1/admin/webhooks/{sub_id}", headers=admin(dev))
    assert got.status_code == 200 and got.json() == sub and "signing_secret" not in got.text
    patched = api.patch(f"/v1/admin/webhooks/{sub_id}", headers=admin(dev), json={"status": "PAUSED"})
    assert patched.status_code == 200 and patched.json()["status"] == "PAUSED"
    listed = api.get("/v1/admin/webhooks", headers=admin(dev), params={"status": "PAUSED", "limit": 100})
    assert sub_id in [s["subscription_id"] for s in listed.json()["subscriptions"]]
    assert listed.json()["has_more"] in (True, False)
    deleted = api.delete(f"/v1/admin/webhooks/{sub_id}", headers=admin(dev))
    assert deleted.status_code == 204 and deleted.content == b""
    assert error_of(api.get(f"/v1/admin/webhooks/{sub_id}", headers=admin(dev)), 404) == "WEBHOOK_NOT_FOUND"
    assert error_of(api.get("/v1/admin/webhooks"), 401) == "UNAUTHORIZED"


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/admin/webhooks?tenant_id={t}", {"event_types": ["api_key.created"]}),
    ("/v1/admin/webhooks?tenant_id={t}", {"event_types": ["budget.created"], "event_categories": ["webhook"]}),
    ("/v1/admin/webhooks", {"event_types": []}),
    ("/v1/webhooks", {"event_types": ["budget.created"], "event_categories": ["system"]}),
    ("/v1/webhooks", {"event_types": ["policy.updated"]}),
    ("/v1/webhooks", {"event_types": ["budget.created"], "surprise": 1}),
])
def test_invariants_through_rest_store_nothing(
        api: httpx.Client, dev: Server, conn: psycopg.Connection[Any], tenant: Tenant, receiver: Receiver,
        path: str, body: dict[str, Any]) -> None:
    before = subscription_count(conn)
    headers = admin(dev) if path.startswith("/v1/admin") else tenant.headers()
    response = api.post(path.format(t=tenant.tenant_id), headers=headers, json={"url": receiver.url, **body})
    assert error_of(response, 400) == "INVALID_REQUEST"
    assert subscription_count(conn) == before


def test_patch_cannot_clear_both_selectors(api: httpx.Client, tenant: Tenant, receiver: Receiver) -> None:
    sub_id = api.post("/v1/webhooks", headers=tenant.headers(), json={
        "url": receiver.url, "event_types": ["budget.created"]}).json()["subscription"]["subscription_id"]
    cleared = api.patch(f"/v1/webhooks/{sub_id}", headers=tenant.headers(), json={"event_types": []})
    assert error_of(cleared, 400) == "INVALID_REQUEST"
    category_only = api.patch(f"/v1/webhooks/{sub_id}", headers=tenant.headers(),
                              json={"event_types": [], "event_categories": ["reservation"]})
    assert category_only.status_code == 200 and category_only.json()["event_types"] == []
    widened = api.patch(f"/v1/webhooks/{sub_id}", headers=tenant.headers(), json={"event_categories": ["api_key"]})
    assert error_of(widened, 400) == "INVALID_REQUEST"


def test_tenant_plane_permissions_and_isolation(
        api: httpx.Client, dev: Server, conn: psycopg.Connection[Any], tenant: Tenant, receiver: Receiver) -> None:
    sub_id = api.post("/v1/webhooks", headers=tenant.headers(), json={
        "url": receiver.url, "event_types": ["budget.created"]}).json()["subscription"]["subscription_id"]
    other = new_tenant(conn, WEBHOOK_PERMISSIONS)
    for method, path in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/deliveries"), ("POST", "/test")]:
        response = api.request(method, f"/v1/webhooks/{sub_id}{path}", headers=other.headers(),
                               json={} if method == "PATCH" else None)
        assert error_of(response, 404) == "WEBHOOK_NOT_FOUND", (method, path)
    listed = api.get("/v1/webhooks", headers=other.headers()).json()
    assert listed == {"subscriptions": [], "has_more": False}
    no_permission = Tenant(tenant.tenant_id, new_api_key(conn, tenant.tenant_id))
    assert error_of(api.get("/v1/webhooks", headers=no_permission.headers()), 403) == "INSUFFICIENT_PERMISSIONS"
    assert error_of(api.post("/v1/webhooks", headers=no_permission.headers(), json={
        "url": receiver.url, "event_types": ["budget.created"]}), 403) == "INSUFFICIENT_PERMISSIONS"
    assert error_of(api.get("/v1/webhooks", headers=admin(dev)), 400) == "INVALID_REQUEST"
    as_admin = api.get("/v1/webhooks", headers=admin(dev), params={"tenant": tenant.tenant_id}).json()
    assert [s["subscription_id"] for s in as_admin["subscriptions"]] == [sub_id]
    mine = api.get(f"/v1/webhooks/{sub_id}/deliveries", headers=tenant.headers())
    assert mine.status_code == 200 and mine.json()["has_more"] is False
    assert error_of(api.get(f"/v1/webhooks/{sub_id}/deliveries", headers=tenant.headers(),
                            params={"from": "yesterday"}), 400) == "INVALID_REQUEST"


def test_events_arrive_signed_from_the_server_worker(
        api: httpx.Client, conn: psycopg.Connection[Any], tenant: Tenant, receiver: Receiver) -> None:
    created = api.post("/v1/webhooks", headers=tenant.headers(), json={
        "url": receiver.url, "event_types": ["reservation.denied"], "event_categories": ["budget"]}).json()
    secret = created["signing_secret"]
    create_budget(conn, tenant.scope, 1000)
    reserved = api.post("/v1/reservations", headers=tenant.headers(), json=reserve_body(tenant, 900))
    assert reserved.status_code == 200, reserved.text
    got = receiver.wait_for(2)
    for request in got:
        assert verify(request.body, secret, request.headers["x-cycles-signature"])
        assert request.headers["x-cycles-event-id"] == request.event["event_id"]
    types = [r.event["event_type"] for r in got]
    assert types[:2] == ["budget.created", "budget.threshold_crossed"], types
    assert got[1].event["data"]["threshold"] == 0.8
    sub_id = created["subscription"]["subscription_id"]
    # The worker records a delivery's outcome after the receiver has answered.
    deadline = time.monotonic() + 10
    while True:
        history = api.get(f"/v1/webhooks/{sub_id}/deliveries", headers=tenant.headers()).json()["deliveries"]
        if all(d["status"] != "PENDING" for d in history) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(history) >= 2
    assert all(d["status"] == "SUCCESS" and d["attempts"] == 1 for d in history), history


def test_probe_is_synchronous_and_counts_nothing(api: httpx.Client, dev: Server, receiver: Receiver) -> None:
    created = api.post("/v1/admin/webhooks", headers=admin(dev), json={
        "url": receiver.url, "event_types": ["api_key.created"]}).json()
    sub_id = created["subscription"]["subscription_id"]
    ok = api.post(f"/v1/admin/webhooks/{sub_id}/test", headers=admin(dev))
    assert ok.status_code == 200, ok.text
    result = ok.json()
    assert result["success"] is True and result["response_status"] == 200 and "error_message" not in result
    [probe] = receiver.received()
    assert probe.event["event_type"] == "system.webhook_test" and probe.event["event_id"] == result["event_id"]
    assert verify(probe.body, created["signing_secret"], probe.headers["x-cycles-signature"])
    receiver.status_for = lambda r: 500
    failed = api.post(f"/v1/admin/webhooks/{sub_id}/test", headers=admin(dev)).json()
    assert failed["success"] is False and failed["response_status"] == 500 and failed["error_message"]
    sub = api.get(f"/v1/admin/webhooks/{sub_id}", headers=admin(dev)).json()
    assert sub["consecutive_failures"] == 0 and sub["status"] == "ACTIVE"


def test_replay_accepts_then_conflicts_while_running(
        api: httpx.Client, dev: Server, conn: psycopg.Connection[Any], receiver: Receiver) -> None:
    tenant = new_tenant(conn)
    receiver.status_for = lambda r: 500
    sub_id = api.post(f"/v1/admin/webhooks?tenant_id={tenant.tenant_id}", headers=admin(dev), json={
        "url": receiver.url, "event_types": ["tenant.created"],
        "retry_policy": {"initial_delay_ms": 60000}}).json()["subscription"]["subscription_id"]
    too_many = api.post(f"/v1/admin/webhooks/{sub_id}/replay", headers=admin(dev), json={"max_events": 1001})
    assert error_of(too_many, 400) == "INVALID_REQUEST"
    accepted = api.post(f"/v1/admin/webhooks/{sub_id}/replay", headers=admin(dev), json={"max_events": 10})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["events_queued"] == 1 and accepted.json()["replay_id"].startswith("rpl_")
    running = api.post(f"/v1/admin/webhooks/{sub_id}/replay", headers=admin(dev), json={})
    assert error_of(running, 409) == "REPLAY_IN_PROGRESS"


@pytest.fixture(scope="module")
def strict(pg_cluster: Cluster) -> Iterator[Server]:
    conninfo = fresh_database(pg_cluster, "cycles_webhooks_strict")
    with running_server(conninfo, CYCLES_WEBHOOKS_DISABLED="true") as server:
        yield server


@pytest.mark.parametrize("url", [
    "http://hooks.example.com/x", "https://127.0.0.1/x", "https://10.0.0.8/x", "https://169.254.169.254/x",
    "https://[::1]/x", "https://localhost/x"])
def test_url_policy_refuses_plain_http_and_private_targets(strict: Server, url: str) -> None:
    with httpx.Client(base_url=strict.base_url, timeout=30) as client:
        response = client.post("/v1/admin/webhooks", headers={"X-Admin-API-Key": strict.admin_key},
                               json={"url": url, "event_types": ["api_key.created"]})
    assert error_of(response, 400) == "WEBHOOK_URL_INVALID"


def test_denials_and_expiries_arrive_signed(
        api: httpx.Client, conn: psycopg.Connection[Any], tenant: Tenant, receiver: Receiver) -> None:
    created = api.post("/v1/webhooks", headers=tenant.headers(), json={
        "url": receiver.url, "event_types": ["reservation.denied", "reservation.expired"]}).json()
    create_budget(conn, tenant.scope, 1000)
    denied = api.post("/v1/decide", headers=tenant.headers(), json=reserve_body(tenant, 10**6))
    assert denied.status_code == 200 and denied.json()["decision"] == "DENY", denied.text
    reserved = api.post("/v1/reservations", headers=tenant.headers(),
                        json=reserve_body(tenant, 10, ttl_ms=1000, grace_period_ms=0))
    assert reserved.status_code == 200, reserved.text
    got = receiver.wait_for(2)
    assert [r.event["event_type"] for r in got] == ["reservation.denied", "reservation.expired"]
    assert got[0].event["data"]["reason_code"] == "BUDGET_EXCEEDED"
    assert got[1].event["data"]["reservation_id"] == reserved.json()["reservation_id"]
    assert all(verify(r.body, created["signing_secret"], r.headers["x-cycles-signature"]) for r in got)


def test_admin_lifecycle_events_reach_a_system_subscription(
        api: httpx.Client, dev: Server, conn: psycopg.Connection[Any], receiver: Receiver) -> None:
    created = api.post("/v1/admin/webhooks", headers=admin(dev), json={
        "url": receiver.url, "event_types": ["tenant.created", "api_key.created"]}).json()
    tenant = new_tenant(conn)
    got = receiver.wait_for(2)
    assert [(r.event["event_type"], r.event["tenant_id"]) for r in got] == [
        ("tenant.created", tenant.tenant_id), ("api_key.created", tenant.tenant_id)]
    assert all(verify(r.body, created["signing_secret"], r.headers["x-cycles-signature"]) for r in got)
    api.delete(f"/v1/admin/webhooks/{created['subscription']['subscription_id']}", headers=admin(dev))
