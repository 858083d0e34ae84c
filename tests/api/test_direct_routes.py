"""The hot runtime routes answered directly (app.api.direct_routes) answer
exactly what the framework's route handlers answer.

A body sent with Content-Length takes the direct path; the same body sent
chunked (no Content-Length) is handed to the framework. An idempotent replay
of the first request through the second path must then be the same response,
header for header and byte for byte (the ids and the date aside)."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from litestar import Litestar

from app.api import decide, events, reservations
from app.api.direct_routes import DirectRoutes, install
from tests.api.checks import assert_error
from tests.api.conftest import ApiServer
from tests.api.provision import event_body, funded_tenant, reserve_body, unique

# Differ from one request to the next by design.
_PER_REQUEST_HEADERS = {"x-request-id", "x-cycles-trace-id", "date"}

_REMAINING_TTL = re.compile(rb'"remaining_ttl_ms": [0-9]+')

Answer = tuple[int, list[tuple[str, str]], bytes]


@pytest.fixture
def connection(api_server: ApiServer) -> Iterator[http.client.HTTPConnection]:
    url = urlsplit(api_server.base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    yield conn
    conn.close()


def post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str],
         chunked: bool = False) -> Answer:
    """One request on a kept-alive connection: (status, headers in order, body)."""
    if chunked:
        conn.request("POST", path, body=iter([body]), headers=headers, encode_chunked=True)
    else:
        conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    content = response.read()
    return response.status, response.getheaders(), content


def comparable(answer: Answer) -> tuple[int, list[tuple[str, str]], Any]:
    status, headers, body = answer
    assert dict((name.lower(), value) for name, value in headers)["content-length"] == str(len(body))
    kept = [(name.lower(), value if name.lower() != "content-length" else "n") for name, value in headers
            if name.lower() not in _PER_REQUEST_HEADERS]
    if status >= 400:
        # An error names its own request.
        document = json.loads(body)
        document.pop("request_id")
        document.pop("trace_id")
        return status, kept, document
    # A replay counts the reservation's time to live down from the moment it is made.
    return status, kept, _REMAINING_TTL.sub(b'"remaining_ttl_ms": n', body)


def key_headers(api_key: str) -> dict[str, str]:
    return {"X-Cycles-API-Key": api_key, "Content-Type": "application/json"}


def test_each_route_answers_the_same_directly_and_through_the_framework(
        connection: http.client.HTTPConnection, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    headers = key_headers(tenant.api_key)
    reserve = json.dumps(reserve_body(tenant)).encode()
    direct = post(connection, "/v1/reservations", reserve, headers)
    assert direct[0] == 200, direct
    assert comparable(post(connection, "/v1/reservations", reserve, headers, chunked=True)) == comparable(direct)
    reservation_id = json.loads(direct[2])["reservation_id"]

    calls = [
        (f"/v1/reservations/{reservation_id}/extend", {"idempotency_key": unique("ext-"), "extend_by_ms": 1000}),
        (f"/v1/reservations/{reservation_id}/commit",
         {"idempotency_key": unique("cmt-"), "actual": {"unit": "USD_MICROCENTS", "amount": 10}}),
        ("/v1/decide", {key: value for key, value in reserve_body(tenant).items()}),
        ("/v1/events", event_body(tenant)),
    ]
    for path, document in calls:
        body = json.dumps(document).encode()
        direct = post(connection, path, body, headers)
        assert direct[0] in (200, 201), (path, direct)
        framework = post(connection, path, body, headers, chunked=True)
        assert comparable(framework) == comparable(direct), path


def test_failures_of_the_call_are_the_same_error_directly_and_through_the_framework(
        connection: http.client.HTTPConnection, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    cases = [
        # Refused by the database: an unknown key, a budget too small, an unknown reservation.
        ("/v1/reservations", key_headers("cyc_live_unknown_" + "x" * 30), reserve_body(tenant)),
        ("/v1/reservations", key_headers(tenant.api_key), reserve_body(tenant, amount=10**12)),
        ("/v1/reservations/rsv_unknown/commit", key_headers(tenant.api_key),
         {"idempotency_key": unique("cmt-"), "actual": {"unit": "USD_MICROCENTS", "amount": 1}}),
        # Refused before the database: a bad body, a header that contradicts it, a bad id.
        ("/v1/reservations", key_headers(tenant.api_key), {"idempotency_key": 5}),
        ("/v1/reservations", {**key_headers(tenant.api_key), "X-Idempotency-Key": "other"}, reserve_body(tenant)),
        (f"/v1/reservations/{'r' * 200}/commit", key_headers(tenant.api_key),
         {"idempotency_key": unique("cmt-"), "actual": {"unit": "USD_MICROCENTS", "amount": 1}}),
        ("/v1/decide", {"Content-Type": "application/json"}, reserve_body(tenant)),
    ]
    for path, headers, document in cases:
        body = json.dumps(document).encode()
        direct = post(connection, path, body, headers)
        assert direct[0] >= 400, (path, direct)
        assert comparable(post(connection, path, body, headers, chunked=True)) == comparable(direct), (path, headers)


def test_a_refused_request_leaves_its_connection_usable(
        connection: http.client.HTTPConnection, admin_conn: Any, api_server: ApiServer) -> None:
    tenant = funded_tenant(admin_conn)
    headers = key_headers(tenant.api_key)
    status, _, _ = post(connection, "/v1/reservations", b'{"idempotency_key": ', headers)
    assert status == 400
    status, _, body = post(connection, "/v1/reservations", json.dumps(reserve_body(tenant)).encode(), headers)
    assert status == 200, body
    refused = httpx.post(f"{api_server.base_url}/v1/reservations", content=b"[]", headers=headers)
    assert_error(refused, 400, "INVALID_REQUEST")


def test_the_direct_routes_are_installed_with_this_litestar() -> None:
    """They rely on Litestar internals and quietly step aside when a release
    moves them (the framework then serves every route); with the Litestar
    this project installs they must be in place, or the speed is gone."""
    app = Litestar(route_handlers=[*reservations.ROUTES, *decide.ROUTES, *events.ROUTES])
    assert install(app, database=None, reserve_batcher=None, settle_batcher=None,  # type: ignore[arg-type]
                   max_body_bytes=1024) is True
    assert isinstance(app.asgi_handler.app, DirectRoutes)  # type: ignore[attr-defined]
