"""Logs: one JSON line per request with the request's ids, the server's other
loggers in the same format, text on a terminal, and never a credential."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time
from typing import Any

import httpx
import psycopg

from app.config import Settings
from app.logs import REDACTED, AccessLog, JsonFormatter, TextFormatter, configure, formatter, use_json
from tests.api.provision import funded_tenant, reserve_body
from tests.ops.scrape import METRICS_TOKEN
from tests.server import ApiServer

TRACEPARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _json_lines(server: ApiServer) -> list[dict[str, Any]]:
    lines = []
    for line in server.log_file.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def _access_lines(server: ApiServer, *responses: httpx.Response) -> dict[str, dict[str, Any]]:
    """The access lines by request id, once those of ``responses`` are written
    (a line is written just after its response is sent)."""
    wanted = {response.headers["x-request-id"] for response in responses}
    deadline = time.monotonic() + 10
    while True:
        lines = {line["request_id"]: line for line in _json_lines(server) if line["logger"] == "cycles.access"}
        if wanted <= lines.keys() or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_one_json_line_per_request_with_ids_and_tenant(
        ops_server: ApiServer, ops_http: httpx.Client, ops_conn: psycopg.Connection[Any]) -> None:
    tenant = funded_tenant(ops_conn)
    traceparent = f"00-{TRACEPARENT_TRACE}-00f067aa0ba902b7-01"
    reserved = ops_http.post("/v1/reservations", json=reserve_body(tenant), headers=tenant.headers(
        traceparent=traceparent))
    assert reserved.status_code == 200
    # An empty page names no scope: the tenant is the one learnt for this key.
    empty = ops_http.get("/v1/reservations", params={"status": "COMMITTED"}, headers=tenant.headers())
    assert empty.status_code == 200 and tenant.tenant_id not in empty.text
    refused = ops_http.get("/v1/balances", params={"tenant": tenant.tenant_id},
                           headers={"X-Cycles-API-Key": tenant.api_key + "x"})
    assert refused.status_code == 401

    by_request = _access_lines(ops_server, reserved, empty, refused)
    access = list(by_request.values())
    line = by_request[reserved.headers["x-request-id"]]
    assert line["method"] == "POST" and line["path"] == "/v1/reservations" and line["status"] == 200
    assert line["route"] == "/v1/reservations" and line["level"] == "info"
    assert line["trace_id"] == TRACEPARENT_TRACE == reserved.headers["x-cycles-trace-id"]
    assert line["tenant"] == tenant.tenant_id
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["ts"].endswith("Z")
    # The tenant is remembered for the key's responses that do not name a scope.
    assert by_request[empty.headers["x-request-id"]]["tenant"] == tenant.tenant_id
    # A refused key has no tenant.
    assert "tenant" not in by_request[refused.headers["x-request-id"]]
    assert by_request[refused.headers["x-request-id"]]["status"] == 401
    # /metrics scrapes are not logged (they would drown the rest).
    assert all(entry["path"] != "/metrics" for entry in access)


def test_no_credential_is_ever_logged(
        ops_server: ApiServer, ops_http: httpx.Client, ops_conn: psycopg.Connection[Any]) -> None:
    tenant = funded_tenant(ops_conn)
    ops_http.post("/v1/reservations", json=reserve_body(tenant), headers={
        **tenant.headers(), "Authorization": "Bearer authorization-secret-123"})
    ops_http.get("/v1/admin/tenants", headers={"X-Admin-API-Key": ops_server.admin_key})
    ops_http.get("/v1/admin/tenants", headers={"X-Admin-API-Key": ops_server.admin_key + "-wrong"})
    _access_lines(ops_server, ops_http.get(f"/v1/no-route/{tenant.api_key}"))
    log = ops_server.log_file.read_text(errors="replace")
    assert tenant.api_key not in log and tenant.api_key[:-1] not in log
    assert ops_server.admin_key not in log
    assert "authorization-secret-123" not in log and METRICS_TOKEN not in log
    # The key that was a path segment shows redacted.
    assert f"/v1/no-route/{REDACTED}" in log


def test_every_server_line_is_json_when_stderr_is_not_a_terminal(ops_server: ApiServer) -> None:
    lines = [line for line in ops_server.log_file.read_text(errors="replace").splitlines() if line.strip()]
    ours = [line for line in lines if '"logger":"cycles' in line]
    assert ours
    for line in ours:
        entry = json.loads(line)
        assert {"ts", "level", "logger", "message"} <= entry.keys()


def _record(name: str, message: str, *args: Any, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, logging.WARNING, __file__, 1, message, args, exc_info)


def test_background_loggers_share_the_format() -> None:
    settings = Settings(log_format="json", admin_api_key="admin-key-for-scrubbing")
    line = formatter(settings).format(_record(
        "cycles.sweeper", "expiry sweep failed (will retry): %s", "OperationalError: admin-key-for-scrubbing",
        exc=True))
    entry = json.loads(line)
    assert entry["logger"] == "cycles.sweeper" and entry["level"] == "warning"
    assert entry["message"] == f"expiry sweep failed (will retry): OperationalError: {REDACTED}"
    assert "ValueError: boom" in entry["exc"]
    webhook = json.loads(JsonFormatter().format(_record("cycles.webhooks", "key cyc_live_AbC-12_x leaked")))
    assert webhook["message"] == f"key {REDACTED} leaked"


def test_text_on_a_terminal_and_json_elsewhere() -> None:
    primary, secondary = os.openpty()
    try:
        with os.fdopen(secondary, "w") as terminal:
            assert not use_json(Settings(log_format="auto"), terminal)
            assert use_json(Settings(log_format="json"), terminal)
        with open(os.devnull, "w") as pipe:
            assert use_json(Settings(log_format="auto"), pipe)
            assert not use_json(Settings(log_format="text"), pipe)
    finally:
        os.close(primary)
    record = _record("cycles.access", "GET /health 200 0.1ms")
    record.fields = {"status": 200, "request_id": "req_1"}
    text = TextFormatter().format(record)
    assert "WARNING cycles.access: GET /health 200 0.1ms" in text and "request_id=req_1" in text


def test_configure_sets_the_level_and_replaces_its_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        configure(Settings(log_level="error", log_format="json"))
        configure(Settings(log_level="debug", log_format="text"))
        ours = [handler for handler in root.handlers if handler not in before]
        assert len(ours) == 1 and isinstance(ours[0].formatter, TextFormatter)
        assert logging.getLogger("cycles").level == logging.DEBUG
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
        logging.getLogger("cycles").setLevel(logging.NOTSET)


def test_access_log_writer_formats_and_scrubs() -> None:
    settings = Settings(log_format="json", metrics_token="metrics-token-value")
    stream = io.StringIO()
    log = AccessLog(settings, stream)
    log.write("GET /x 200 1.0ms", {"path": "/x/metrics-token-value", "status": 200, "request_id": "req_1"})
    entry = json.loads(stream.getvalue())
    assert entry["logger"] == "cycles.access" and entry["level"] == "info" and entry["status"] == 200
    assert entry["path"] == f"/x/{REDACTED}"
    text = io.StringIO()
    AccessLog(Settings(log_format="text"), text).write("GET /x 200 1.0ms", {"status": 200, "tenant": "acme"})
    assert re.fullmatch(r"\S+ \S+ INFO cycles\.access: GET /x 200 1\.0ms status=200 tenant=acme\n", text.getvalue())
    cycles = logging.getLogger("cycles")
    try:
        cycles.setLevel(logging.WARNING)
        assert not log.enabled()
        cycles.setLevel(logging.INFO)
        assert log.enabled()
    finally:
        cycles.setLevel(logging.NOTSET)
