"""The event stream over REST: GET /v1/admin/events[/{event_id}] for the admin
key, GET /v1/events for a tenant key with events:read, next to POST
/v1/events on the same path."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.checks import assert_error, assert_ok
from tests.api.conftest import ApiServer
from tests.api.provision import Tenant, event_body, funded_tenant, new_api_key, reserve_body

LIST_KEYS = {"events", "has_more", "next_cursor"}
EVENT_KEYS = {"event_id", "event_type", "category", "timestamp", "tenant_id", "scope", "actor", "source", "data",
              "correlation_id", "request_id", "trace_id", "metadata"}
EVENT_REQUIRED = {"event_id", "event_type", "category", "timestamp", "tenant_id", "source"}


def admin(api_server: ApiServer) -> dict[str, str]:
    return {"X-Admin-API-Key": api_server.admin_key}


def reader_of(admin_conn: Any, tenant: Tenant, permissions: list[str] | None = None) -> Tenant:
    return Tenant(tenant.tenant_id, new_api_key(admin_conn, tenant.tenant_id, permissions or ["events:read"]))


def denied_tenant(http: httpx.Client, admin_conn: Any) -> Tenant:
    """A funded tenant with a reservation.denied event (a decide beyond its budget)."""
    tenant = funded_tenant(admin_conn)
    response = http.post("/v1/decide", json=reserve_body(tenant, amount=10**9), headers=tenant.headers())
    assert response.json()["decision"] == "DENY"
    return tenant


def test_admin_lists_and_gets_events_in_the_spec_shape(
    api_server: ApiServer, http: httpx.Client, admin_conn: Any,
) -> None:
    tenant = denied_tenant(http, admin_conn)
    page = assert_ok(http.get("/v1/admin/events", params={"tenant_id": tenant.tenant_id}, headers=admin(api_server)),
                     200, LIST_KEYS, {"events", "has_more"})
    types = [e["event_type"] for e in page["events"]]
    assert types[0] == "reservation.denied" and "tenant.created" in types and "api_key.created" in types
    denied = page["events"][0]
    assert set(denied) <= EVENT_KEYS and set(denied) >= EVENT_REQUIRED
    assert denied["category"] == "reservation" and denied["source"] == "cycles-server"
    assert denied["actor"]["type"] == "api_key" and denied["data"]["reason_code"] == "BUDGET_EXCEEDED"
    assert len(denied["trace_id"]) == 32 and denied["request_id"]
    got = assert_ok(http.get(f"/v1/admin/events/{denied['event_id']}", headers=admin(api_server)),
                    200, EVENT_KEYS, EVENT_REQUIRED)
    assert got == denied
    # The request's own ids find its events.
    by_request = http.get("/v1/admin/events", params={"request_id": denied["request_id"]}, headers=admin(api_server))
    assert [e["event_id"] for e in by_request.json()["events"]] == [denied["event_id"]]
    by_trace = http.get("/v1/admin/events", params={"trace_id": denied["trace_id"], "category": "reservation"},
                        headers=admin(api_server))
    assert [e["event_id"] for e in by_trace.json()["events"]] == [denied["event_id"]]
    assert_error(http.get("/v1/admin/events/evt_0000000000000000", headers=admin(api_server)), 404, "NOT_FOUND")


def test_admin_paging_and_bad_filters(api_server: ApiServer, http: httpx.Client, admin_conn: Any) -> None:
    tenant = denied_tenant(http, admin_conn)
    seen: list[str] = []
    params: dict[str, Any] = {"tenant_id": tenant.tenant_id, "limit": 1, "sort_dir": "asc"}
    while True:
        page = http.get("/v1/admin/events", params=params, headers=admin(api_server)).json()
        seen += [e["event_id"] for e in page["events"]]
        if not page["has_more"]:
            break
        params["cursor"] = page["next_cursor"]
    count = admin_conn.execute("SELECT count(*) FROM cycles.events WHERE tenant_id = %s",
                               (tenant.tenant_id,)).fetchone()[0]
    assert len(seen) == len(set(seen)) == count
    for bad in ({"limit": "0"}, {"limit": "101"}, {"category": "galaxy"}, {"event_type": "budget.melted"},
                {"from": "yesterday"}, {"trace_id": "XYZ"}, {"sort_by": "size"}, {"sort_dir": "up"},
                {"search": "x" * 129}, {"cursor": "evt_unknown"},
                {"from": "2030-01-02T00:00:00Z", "to": "2030-01-01T00:00:00Z"}):
        assert_error(http.get("/v1/admin/events", params=bad, headers=admin(api_server)), 400, "INVALID_REQUEST")
    # Blank values and unknown parameters are ignored.
    ok = http.get("/v1/admin/events", params={"category": "", "colour": "red", "tenant_id": tenant.tenant_id},
                  headers=admin(api_server))
    assert ok.status_code == 200 and len(ok.json()["events"]) == min(count, 50)


def test_admin_events_refuse_other_credentials(http: httpx.Client, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    strong = reader_of(admin_conn, tenant, ["admin:read", "admin:events:read", "events:read"])
    assert_error(http.get("/v1/admin/events", headers=strong.headers()), 403, "INSUFFICIENT_PERMISSIONS")
    assert_error(http.get("/v1/admin/events/evt_0000000000000000", headers=strong.headers()), 403,
                 "INSUFFICIENT_PERMISSIONS")
    assert_error(http.get("/v1/admin/events"), 401, "UNAUTHORIZED")
    assert_error(http.get("/v1/admin/events", headers={"X-Admin-API-Key": "nope"}), 401, "UNAUTHORIZED")


def test_tenant_reads_its_own_tenant_accessible_events(http: httpx.Client, admin_conn: Any) -> None:
    tenant = denied_tenant(http, admin_conn)
    other = denied_tenant(http, admin_conn)
    reader = reader_of(admin_conn, tenant)
    page = assert_ok(http.get("/v1/events", headers=reader.headers()), 200, LIST_KEYS, {"events", "has_more"})
    assert {e["tenant_id"] for e in page["events"]} == {tenant.tenant_id}
    assert {e["category"] for e in page["events"]} <= {"budget", "reservation", "tenant"}
    assert {"reservation.denied", "budget.created", "tenant.created"} <= {e["event_type"] for e in page["events"]}
    # api_key.created exists for the tenant but is admin-only.
    assert admin_conn.execute("SELECT count(*) FROM cycles.events WHERE tenant_id = %s AND category = 'api_key'",
                              (tenant.tenant_id,)).fetchone()[0] >= 2
    assert http.get("/v1/events", params={"category": "api_key"}, headers=reader.headers()).json()["events"] == []
    denied = http.get("/v1/events", params={"event_type": "reservation.denied"}, headers=reader.headers()).json()
    assert [e["data"]["reason_code"] for e in denied["events"]] == ["BUDGET_EXCEEDED"]
    scoped = http.get("/v1/events", params={"scope": f"{tenant.scope}/workspace:w1"}, headers=reader.headers())
    assert {e["scope"] for e in scoped.json()["events"]} == {f"{tenant.scope}/workspace:w1"}
    # The other tenant's event ids are not cursors here.
    other_event = admin_conn.execute("SELECT event_id FROM cycles.events WHERE tenant_id = %s LIMIT 1",
                                     (other.tenant_id,)).fetchone()[0]
    assert_error(http.get("/v1/events", params={"cursor": other_event}, headers=reader.headers()), 400,
                 "INVALID_REQUEST")


def test_tenant_events_need_events_read(http: httpx.Client, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)  # its key has the ten default permissions, not events:read
    assert_error(http.get("/v1/events", headers=tenant.headers()), 403, "INSUFFICIENT_PERMISSIONS")
    assert http.get("/v1/events", headers=reader_of(admin_conn, tenant, ["admin:read"]).headers()).status_code == 200
    assert_error(http.get("/v1/events"), 401, "UNAUTHORIZED")


def test_post_and_get_share_the_path(http: httpx.Client, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    posted = http.post("/v1/events", json=event_body(tenant), headers=tenant.headers())
    assert posted.status_code == 201 and posted.json()["status"] == "APPLIED"
    reader = reader_of(admin_conn, tenant)
    assert http.get("/v1/events", headers=reader.headers()).status_code == 200
    assert_error(http.put("/v1/events", json={}, headers=reader.headers()), 405, "INVALID_REQUEST")
