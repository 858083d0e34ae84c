"""Hostile input, targeted: every field of every runtime body replaced in
turn by SQL-looking strings, odd unicode, huge and non-integral numbers,
deep nesting and long strings; the same in path ids, query strings, the API
key header and the trace headers; oversized and never-ending bodies.

Whatever is sent, the answer is never a 5xx, every refusal is in the error
shape, refused requests change nothing, the correlation headers are never
an echo of something malformed, and no credential shows up in an answer,
the server log or the event stream.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from tests.api.checks import ERROR_KEYS, ERROR_REQUIRED, assert_keys
from tests.api.provision import USD, Conn, Tenant, find_nulls, funded_tenant, tenant_state
from tests.reliability.invariants import ledger_violations
from tests.server import ApiServer

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")

SQL = [
    "'; DROP TABLE cycles.budgets; --", "' OR '1'='1", "tenant:x' UNION SELECT key_hash FROM cycles.api_keys --",
    "$$; SELECT pg_sleep(10); $$", "\\'; COMMIT; DELETE FROM cycles.ledger_entries; --", "%s %(key)s {0}",
]
UNICODE = [
    "租户", "\u202eevil", "e\u0301\u0301\u0301", "\U0001f4a5" * 50, "\ufeffbom", "\u0000", "a\u2028b",
    "\ud800", "ǅ", "ß", "İ",
]
NUMBERS: list[Any] = [2**63, 2**63 - 1, -(2**63) - 1, 10**40, -1, 0, 1.5, 1e308, -0.0, True, "1"]
SHAPES: list[Any] = [None, [], {}, [[[[[]]]]], {"a": {"b": {"c": {}}}}, "x" * 60_000]
HOSTILE: list[Any] = [*SQL, *UNICODE, *NUMBERS, *SHAPES]

# What a refusal may be; 2xx only when the value is acceptable data.
ALLOWED = {200, 201, 400, 401, 403, 404, 409, 410, 413}


@pytest.fixture(scope="module")
def http(reliability_server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=reliability_server.base_url, timeout=30) as client:
        yield client


@pytest.fixture
def tenant(reliability_conn: Conn) -> Tenant:
    return funded_tenant(reliability_conn)


def check_answer(response: httpx.Response, secrets: tuple[str, ...] = ()) -> None:
    """Never a 5xx; JSON without null; ids present and well-formed; a
    refusal in the error shape; no secret echoed."""
    assert response.status_code in ALLOWED, f"{response.status_code} {response.text[:500]}"
    assert TRACE_ID.match(response.headers.get("x-cycles-trace-id", "")), response.headers
    assert response.headers.get("x-request-id", "").startswith("req_"), response.headers
    document = response.json()
    assert find_nulls(document) == []
    if response.status_code >= 400:
        assert_keys(document, ERROR_KEYS, ERROR_REQUIRED)
        assert document["trace_id"] == response.headers["x-cycles-trace-id"]
    for secret in secrets:
        assert secret not in response.text, "a credential was echoed"


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON document (objects and lists), the root excluded."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from _paths(item, (*prefix, key))


def _replaced(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(document))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def _bodies(tenant: Tenant, reservation_id: str) -> dict[str, tuple[str, dict[str, Any]]]:
    subject = {"tenant": tenant.tenant_id, "workspace": "w1", "app": "a1"}
    return {
        "reserve": ("/v1/reservations", {
            "idempotency_key": "k1", "subject": subject, "action": {"kind": "llm", "name": "m", "tags": ["t"]},
            "estimate": {"unit": USD, "amount": 10}, "ttl_ms": 60_000, "grace_period_ms": 0,
            "overage_policy": "REJECT", "dry_run": False, "metadata": {"note": "n"}}),
        "decide": ("/v1/decide", {
            "idempotency_key": "k2", "subject": subject, "action": {"kind": "llm", "name": "m"},
            "estimate": {"unit": USD, "amount": 10}, "metadata": {"note": "n"}}),
        "event": ("/v1/events", {
            "idempotency_key": "k3", "subject": subject, "action": {"kind": "tool", "name": "t"},
            "actual": {"unit": USD, "amount": 1}, "overage_policy": "REJECT", "metadata": {"note": "n"}}),
        "commit": (f"/v1/reservations/{reservation_id}/commit", {
            "idempotency_key": "k4", "actual": {"unit": USD, "amount": 1}, "metrics": {"tokens_input": 1},
            "metadata": {"note": "n"}}),
        "extend": (f"/v1/reservations/{reservation_id}/extend", {"idempotency_key": "k5", "extend_by_ms": 1000}),
        "release": (f"/v1/reservations/{reservation_id}/release", {"idempotency_key": "k6", "reason": "r"}),
    }


def test_hostile_values_in_every_field_of_every_runtime_body(
        http: httpx.Client, reliability_conn: Conn, tenant: Tenant, reliability_server: ApiServer) -> None:
    created = http.post("/v1/reservations", headers=tenant.headers(), json={
        "idempotency_key": "setup", "subject": {"tenant": tenant.tenant_id, "workspace": "w1"},
        "action": {"kind": "llm", "name": "m"}, "estimate": {"unit": USD, "amount": 50}})
    assert created.status_code == 200, created.text
    sent = 0
    for name, (path, body) in _bodies(tenant, created.json()["reservation_id"]).items():
        for field_path in _paths(body):
            for index, value in enumerate(HOSTILE):
                # A key of its own per request, so each is judged on its own.
                hostile = _replaced(body, field_path, value)
                if field_path != ("idempotency_key",):
                    hostile["idempotency_key"] = f"{name}-{'.'.join(map(str, field_path))}-{index}"
                response = http.post(path, content=json.dumps(hostile), headers={
                    **tenant.headers(), "Content-Type": "application/json"})
                check_answer(response, (tenant.api_key, reliability_server.admin_key))
                sent += 1
            # The same field under a hostile key name, next to the real one.
            for key in SQL[:2] + UNICODE[:3]:
                parent = field_path[:-1]
                response = http.post(path, json=_replaced(body, (*parent, key), 1), headers=tenant.headers())
                check_answer(response, (tenant.api_key,))
                sent += 1
    assert sent > 500
    assert ledger_violations(reliability_conn, tenant.tenant_id) == []
    # The tables the SQL-looking strings name are all still there and whole.
    assert reliability_conn.execute("SELECT count(*) FROM cycles.budgets WHERE tenant_id = %s",
                                    (tenant.tenant_id,)).fetchone() == (2,)


@pytest.mark.parametrize("depth", [64, 1_000, 20_000])
def test_deeply_nested_json_is_refused_or_stored_never_a_500(
        http: httpx.Client, reliability_conn: Conn, tenant: Tenant, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    for field in ("metadata", "action"):
        raw = (f'{{"idempotency_key":"deep-{field}-{depth}","subject":{{"tenant":"{tenant.tenant_id}"}},'
               f'"action":{{"kind":"k","name":"n"}},"estimate":{{"unit":"{USD}","amount":1}},'
               f'"{field}":{{"x":{nested}}}}}')
        response = http.post("/v1/reservations", content=raw, headers={
            **tenant.headers(), "Content-Type": "application/json"})
        check_answer(response)
    assert ledger_violations(reliability_conn, tenant.tenant_id) == []


def test_huge_integers_never_overflow_a_counter(
        http: httpx.Client, reliability_conn: Conn, tenant: Tenant, reliability_server: ApiServer) -> None:
    admin = {"X-Admin-API-Key": reliability_server.admin_key}
    params = {"scope": tenant.scope, "unit": USD, "tenant_id": tenant.tenant_id}
    for index, amount in enumerate([2**63 - 1, 2**63 - 2, 2**62, 2**63, 10**30]):
        for operation in ("CREDIT", "RESET", "REPAY_DEBT", "DEBIT", "RESET_SPENT"):
            response = http.post("/v1/admin/budgets/fund", params=params, headers=admin, json={
                "operation": operation, "amount": {"unit": USD, "amount": amount},
                "idempotency_key": f"huge-{operation}-{index}"})
            check_answer(response, (reliability_server.admin_key,))
        for path in ("/v1/reservations", "/v1/events"):
            field = "estimate" if path == "/v1/reservations" else "actual"
            response = http.post(path, headers=tenant.headers(), json={
                "idempotency_key": f"huge-{path}-{index}", "subject": {"tenant": tenant.tenant_id},
                "action": {"kind": "k", "name": "n"}, field: {"unit": USD, "amount": amount},
                "overage_policy": "ALLOW_WITH_OVERDRAFT"})
            check_answer(response)
    assert ledger_violations(reliability_conn, tenant.tenant_id) == []
    row = reliability_conn.execute(
        "SELECT min(least(allocated, spent, reserved, debt)) FROM cycles.budgets WHERE tenant_id = %s",
        (tenant.tenant_id,)).fetchone()
    assert row is not None and row[0] >= 0


@pytest.mark.parametrize("value", [*SQL, *UNICODE[:5], "x" * 5_000, "../../etc/passwd", "%2F..%2F", "a/b", " "])
def test_hostile_path_ids_and_queries(
        http: httpx.Client, reliability_conn: Conn, tenant: Tenant, reliability_server: ApiServer, value: str) -> None:
    before = tenant_state(reliability_conn, tenant.tenant_id)
    encoded = quote(value.replace("\x00", ""), safe="")
    admin = {"X-Admin-API-Key": reliability_server.admin_key}
    for method, path, headers in [
        ("GET", f"/v1/reservations/{encoded}", tenant.headers()),
        ("POST", f"/v1/reservations/{encoded}/commit", tenant.headers()),
        ("POST", f"/v1/reservations/{encoded}/release", tenant.headers()),
        ("GET", f"/v1/admin/tenants/{encoded}", admin),
        ("GET", f"/v1/admin/api-keys/{encoded}", admin),
        ("GET", f"/v1/admin/events/{encoded}", admin),
        ("GET", f"/v1/webhooks/{encoded}", tenant.headers()),
    ]:
        body = {"idempotency_key": "p", "actual": {"unit": USD, "amount": 1}} if method == "POST" else None
        check_answer(http.request(method, path, headers=headers, json=body), (tenant.api_key,))
    for path, params in [
        ("/v1/reservations", {"workspace": value, "status": value, "cursor": value, "sort_by": value}),
        ("/v1/balances", {"tenant": value, "workspace": value}),
        ("/v1/events", {"type": value}),
    ]:
        check_answer(http.get(path, params=params, headers=tenant.headers()))
    check_answer(http.get("/v1/admin/budgets", params={"tenant_id": value, "scope_prefix": value}, headers=admin))
    check_answer(http.get("/v1/admin/tenants", params={"search": value}, headers=admin))
    check_answer(http.get("/v1/admin/audit/logs", params={"tenant_id": value, "operation": value}, headers=admin))
    assert tenant_state(reliability_conn, tenant.tenant_id) == before


def _raw_request(server: ApiServer, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Sends bytes as they are (no client-side header checks) and reads the
    whole answer; returns (status, lower-cased headers, body)."""
    url = urlsplit(server.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        header_block, _, rest = data.partition(b"\r\n\r\n")
        lines = header_block.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, val = line.partition(":")
            headers[name.strip().lower()] = val.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), headers, rest


@pytest.mark.parametrize("trace_header", [
    b"X-Cycles-Trace-Id: 0123456789abcdef0123456789abcdef\r\nX-Injected: yes",
    b"traceparent: 00-0123456789abcdef0123456789abcdef-0123456789abcdef-01\r\nSet-Cookie: session=stolen",
    b"X-Cycles-Trace-Id: \xff\xfe<script>alert(1)</script>",
    b"X-Cycles-Trace-Id: " + b"a" * 8_000,
    b"traceparent: 00-" + b"f" * 32 + b"-" + b"f" * 16 + b"-01, 00-" + b"e" * 32 + b"-" + b"e" * 16 + b"-01",
    b"X-Cycles-Trace-Id: 0123456789ABCDEF0123456789ABCDEF",
    b"X-Request-Id: req_forged\r\nX-Request-Id: second",
    b"X-Cycles-Trace-Id: 0123456789abcdef0123456789abcdef\x0bX-Other: 1",
])
def test_trace_header_injection_is_never_echoed(
        reliability_server: ApiServer, tenant: Tenant, trace_header: bytes) -> None:
    url = urlsplit(reliability_server.base_url)
    body = json.dumps({"idempotency_key": "th", "subject": {"tenant": tenant.tenant_id},
                       "action": {"kind": "k", "name": "n"}, "estimate": {"unit": USD, "amount": 1},
                       "dry_run": True}).encode()
    head = (f"POST /v1/reservations HTTP/1.1\r\nHost: {url.hostname}\r\nX-Cycles-API-Key: {tenant.api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n").encode()
    status, headers, answer = _raw_request(reliability_server, head + trace_header + b"\r\n\r\n", body)
    assert status < 500, answer
    assert "x-injected" not in headers and "set-cookie" not in headers and "x-other" not in headers
    if status == 400 and not answer:
        return  # refused by the HTTP parser itself (an illegal header byte), before the app
    assert TRACE_ID.match(headers.get("x-cycles-trace-id", "")), headers
    assert headers.get("x-request-id", "").startswith("req_") and headers["x-request-id"] != "req_forged"
    assert find_nulls(json.loads(answer)) == []


def test_oversized_and_endless_bodies_are_413_and_change_nothing(
        reliability_server: ApiServer, reliability_conn: Conn, tenant: Tenant) -> None:
    before = tenant_state(reliability_conn, tenant.tenant_id)
    url = urlsplit(reliability_server.base_url)
    base = (f"POST /v1/reservations HTTP/1.1\r\nHost: {url.hostname}\r\nX-Cycles-API-Key: {tenant.api_key}\r\n"
            "Content-Type: application/json\r\n")
    # Declared far beyond the limit: refused before a byte of body is read.
    status, headers, _ = _raw_request(reliability_server, f"{base}Content-Length: 1000000000\r\n\r\n".encode())
    assert status == 413 and headers.get("connection") == "close", headers
    # Chunked, no length: refused once the limit is passed.
    chunk = b"x" * 32_768
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
    status, headers, _ = _raw_request(
        reliability_server, f"{base}Transfer-Encoding: chunked\r\n\r\n".encode(), chunks)
    assert status == 413, headers
    assert tenant_state(reliability_conn, tenant.tenant_id) == before


@pytest.mark.parametrize("key", [
    "", " ", "cyc_live_", "cyc_live_" + "A" * 5_000, "' OR '1'='1", "租户", "cyc_live_\u202e",
    "Bearer cyc_live_x", "null"])
def test_hostile_api_keys_are_401(
        reliability_server: ApiServer, tenant: Tenant, reliability_conn: Conn, key: str) -> None:
    before = tenant_state(reliability_conn, tenant.tenant_id)
    url = urlsplit(reliability_server.base_url)
    body = json.dumps({"idempotency_key": "hk", "subject": {"tenant": tenant.tenant_id},
                       "action": {"kind": "k", "name": "n"}, "estimate": {"unit": USD, "amount": 1}}).encode()
    head = (f"POST /v1/reservations HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode()
    status, headers, answer = _raw_request(
        reliability_server, head + b"X-Cycles-API-Key: " + key.encode() + b"\r\n\r\n", body)
    assert status == 401, answer
    document = json.loads(answer)
    assert document["error"] == "UNAUTHORIZED" and document["trace_id"] == headers["x-cycles-trace-id"]
    assert tenant_state(reliability_conn, tenant.tenant_id) == before


def test_no_credential_in_logs_or_events(
        http: httpx.Client, reliability_conn: Conn, reliability_server: ApiServer, tenant: Tenant) -> None:
    """Runs last in this module: everything above has been logged by now."""
    # A key that is almost right, and a failing call with the right one.
    check_answer(http.get("/v1/balances", params={"tenant": tenant.tenant_id},
                          headers={"X-Cycles-API-Key": tenant.api_key[:-1] + "x"}), (tenant.api_key,))
    check_answer(http.post("/v1/reservations", json={"bad": True}, headers=tenant.headers()), (tenant.api_key,))
    log = reliability_server.log_file.read_text(errors="replace")
    assert tenant.api_key not in log and reliability_server.admin_key not in log
    assert tenant.api_key[:-1] not in log
    leaked = reliability_conn.execute(
        "SELECT count(*) FROM cycles.events WHERE position(%(k)s IN data::text || coalesce(actor::text, '')) > 0"
        " OR position(%(a)s IN data::text || coalesce(actor::text, '')) > 0",
        {"k": tenant.api_key, "a": reliability_server.admin_key}).fetchone()
    assert leaked == (0,)
