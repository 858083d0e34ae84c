"""Tracing: the W3C traceparent's trace id is the request's everywhere, and
with CYCLES_OTEL_ENABLED the server exports spans over OTLP/HTTP (received
here by a minimal OTLP endpoint, no collector needed)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from app.config import ConfigError, Settings
from app.observability import otel
from app.tracing import parse_traceparent
from tests.api.provision import funded_tenant, reserve_body
from tests.server import ROOT, ApiServer, running_server

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


class _Receiver(BaseHTTPRequestHandler):
    spans: list[Span]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Otlp:
    port: int
    spans: list[Span]


@pytest.fixture(scope="module")
def otlp() -> Iterator[Otlp]:
    spans: list[Span] = []
    handler = type("Receiver", (_Receiver,), {"spans": spans})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Otlp(server.server_address[1], spans)
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def traced_server(ops_server: ApiServer, otlp: Otlp) -> Iterator[ApiServer]:
    with running_server(ops_server.conninfo, CYCLES_OTEL_ENABLED="true",
                        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp.port}", OTEL_BSP_SCHEDULE_DELAY="50",
                        OTEL_SERVICE_NAME="cycles-test") as server:
        yield server


def _wait_for(spans: list[Span], trace_id: str, count: int) -> list[Span]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [span for span in list(spans) if span.trace_id.hex() == trace_id]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {count} spans of trace {trace_id} arrived: {[s.name for s in spans]}")


def test_traceparent_is_honoured_and_echoed(ops_http: httpx.Client) -> None:
    response = ops_http.get("/v1/reservations/res_x", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert response.headers["x-cycles-trace-id"] == TRACE
    assert response.json()["trace_id"] == TRACE
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-01") == (TRACE, PARENT, 1)
    assert parse_traceparent(f"00-{TRACE}-{'0' * 16}-01") is None
    assert parse_traceparent(f"00-{'0' * 32}-{PARENT}-01") is None


def test_spans_continue_the_callers_trace(
        traced_server: ApiServer, otlp: Otlp, ops_conn: psycopg.Connection[Any]) -> None:
    tenant = funded_tenant(ops_conn)
    with httpx.Client(base_url=traced_server.base_url) as http:
        response = http.post("/v1/reservations", json=reserve_body(tenant), headers=tenant.headers(
            traceparent=f"00-{TRACE}-{PARENT}-01"))
    assert response.status_code == 200
    spans = {span.name: span for span in _wait_for(otlp.spans, TRACE, 2)}
    server_span = spans["POST /v1/reservations"]
    assert server_span.kind == Span.SPAN_KIND_SERVER
    assert server_span.parent_span_id.hex() == PARENT
    attributes = {item.key: item.value for item in server_span.attributes}
    assert attributes["http.route"].string_value == "/v1/reservations"
    assert attributes["http.response.status_code"].int_value == 200
    assert attributes["cycles.request_id"].string_value == response.headers["x-request-id"]
    db_span = spans["cycles.reserve"]
    assert db_span.kind == Span.SPAN_KIND_CLIENT and db_span.parent_span_id == server_span.span_id


def test_a_generated_trace_id_is_the_spans_trace_id(traced_server: ApiServer, otlp: Otlp) -> None:
    with httpx.Client(base_url=traced_server.base_url) as http:
        response = http.get("/v1/reservations/res_unknown")
    trace_id = response.headers["x-cycles-trace-id"]
    (span,) = _wait_for(otlp.spans, trace_id, 1)
    assert span.name == "GET /v1/reservations/{reservation_id}" and span.parent_span_id == b""


def test_without_the_extra_start_up_fails_in_one_line(tmp_path: Path) -> None:
    # A package named opentelemetry that cannot be imported, first on the path.
    blocked = tmp_path / "opentelemetry"
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ImportError('not installed', name='opentelemetry')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "CYCLES_OTEL_ENABLED": "true",
           "CYCLES_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "cycles"), "serve"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr == (
        "cycles: error: CYCLES_OTEL_ENABLED is true but OpenTelemetry is not installed (opentelemetry):"
        " pip install 'cycles-authority[otel]'\n")
    assert not (tmp_path / "data").exists()


def test_disabled_tracing_imports_nothing() -> None:
    assert otel.start(Settings(otel_enabled=False)) is None
    otel.check_available(Settings(otel_enabled=False))
    with pytest.raises(ConfigError):
        Settings.from_env({"CYCLES_OTEL_ENABLED": "sometimes"})
