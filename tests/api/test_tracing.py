"""X-Request-Id and X-Cycles-Trace-Id on every response, and the trace id
precedence rule (traceparent, then X-Cycles-Trace-Id, then generated)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.checks import assert_error, assert_ids
from tests.api.provision import funded_tenant, reserve_body

VALID_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("GET", "/health", {}, 200),
    ("GET", "/ready", {}, 200),
    ("GET", "/no/such/route", {}, 404),
    ("DELETE", "/v1/reservations", {}, 405),
    ("POST", "/v1/reservations", {"content": b"{}"}, 401),
    ("POST", "/v1/reservations", {"content": b"{nope", "headers": {"X-Cycles-API-Key": "k"}}, 400),
    ("POST", "/v1/reservations", {"content": b"x" * 70_000, "headers": {"X-Cycles-API-Key": "k"}}, 413),
    ("GET", "/v1/balances?tenant=x", {"headers": {"X-Cycles-API-Key": "not-a-key"}}, 401),
])
def test_every_response_carries_the_ids(
    http: httpx.Client, method: str, path: str, kwargs: dict[str, Any], status: int,
) -> None:
    response = http.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert_ids(response)
    if status >= 400:
        # Litestar's own errors (404, 405, 413) are in the spec's shape too.
        assert_error(response, status, response.json()["error"])


def test_each_request_gets_a_fresh_request_id(http: httpx.Client) -> None:
    ids = {http.get("/health").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def test_generated_trace_ids_differ_per_request(http: httpx.Client) -> None:
    traces = {http.get("/health").headers["x-cycles-trace-id"] for _ in range(5)}
    assert len(traces) == 5


@pytest.mark.parametrize(("headers", "expected"), [
    # protocol checks, item 48
    ({"traceparent": VALID_PARENT}, PARENT_TRACE),
    ({"X-Cycles-Trace-Id": OTHER_TRACE}, OTHER_TRACE),
    ({"traceparent": VALID_PARENT, "X-Cycles-Trace-Id": OTHER_TRACE}, PARENT_TRACE),
    # an invalid traceparent falls through to a valid X-Cycles-Trace-Id
    ({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "X-Cycles-Trace-Id": OTHER_TRACE}, OTHER_TRACE),
    ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
      "X-Cycles-Trace-Id": OTHER_TRACE}, OTHER_TRACE),
    ({"traceparent": VALID_PARENT.upper(), "X-Cycles-Trace-Id": OTHER_TRACE}, OTHER_TRACE),
    ({"traceparent": "01" + VALID_PARENT[2:], "X-Cycles-Trace-Id": OTHER_TRACE}, OTHER_TRACE),
])
def test_trace_id_precedence(http: httpx.Client, headers: dict[str, str], expected: str) -> None:
    assert http.get("/health", headers=headers).headers["x-cycles-trace-id"] == expected


@pytest.mark.parametrize("headers", [
    {"traceparent": "garbage"},
    {"traceparent": "00-xyz-abc-01"},
    {"X-Cycles-Trace-Id": "0" * 32},
    {"X-Cycles-Trace-Id": OTHER_TRACE.upper()},
    {"X-Cycles-Trace-Id": OTHER_TRACE + "00"},
    {"traceparent": "garbage", "X-Cycles-Trace-Id": "also garbage"},
])
def test_malformed_trace_headers_are_ignored_not_rejected(http: httpx.Client, headers: dict[str, str]) -> None:
    response = http.get("/health", headers=headers)
    assert response.status_code == 200
    _, trace_id = assert_ids(response)
    assert trace_id not in (OTHER_TRACE, OTHER_TRACE.lower(), "0" * 32)


def test_error_body_trace_id_equals_header_on_malformed_json(http: httpx.Client) -> None:
    # protocol checks, item 11
    response = http.post("/v1/reservations", content=b'{"idempotency_key": ', headers={
        "X-Cycles-API-Key": "k", "traceparent": VALID_PARENT})
    body = assert_error(response, 400, "INVALID_REQUEST")
    assert body["trace_id"] == PARENT_TRACE == response.headers["x-cycles-trace-id"]


def test_ids_reach_the_database(http: httpx.Client, admin_conn: Any) -> None:
    """The request and trace ids of a reserve are recorded on the reservation
    and its ledger rows: p_ctx carries them to SQL."""
    tenant = funded_tenant(admin_conn)
    response = http.post("/v1/reservations", json=reserve_body(tenant),
                         headers=tenant.headers(traceparent=VALID_PARENT))
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    row = admin_conn.execute(
        "SELECT request_id, trace_id FROM cycles.reservations WHERE reservation_id = %s",
        (response.json()["reservation_id"],)).fetchone()
    assert row == (request_id, PARENT_TRACE)
    ledger = admin_conn.execute(
        "SELECT DISTINCT request_id, trace_id, actor_type FROM cycles.ledger_entries"
        " WHERE reservation_id = %s", (response.json()["reservation_id"],)).fetchall()
    assert ledger == [(request_id, PARENT_TRACE, "api_key")]
