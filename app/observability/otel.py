"""Optional OpenTelemetry trace export (CYCLES_OTEL_ENABLED=true).

Off by default, and then nothing of OpenTelemetry is imported. On, each HTTP
request becomes a SERVER span (the caller's child when it sent a valid
traceparent) with a CLIENT span per database call, exported over OTLP/HTTP
in batches. The exporter is configured by the standard variables
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME,
OTEL_TRACES_SAMPLER...). The span's trace id is the request's trace id
(app.tracing), the one in X-Cycles-Trace-Id, the logs and the ledger, also
when the server generated it. Needs the ``otel`` extra:
``pip install 'cycles-authority[otel]'``.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from app.config import ConfigError, Settings
from app.tracing import RequestIds

INSTALL_HINT: Final = "pip install 'cycles-authority[otel]'"

# The trace id the next root span must carry (set per request, read by the id generator).
_next_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("cycles_trace_id", default=None)


def check_available(settings: Settings) -> None:
    """ConfigError unless the OpenTelemetry packages are importable (when enabled)."""
    if not settings.otel_enabled:
        return
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"CYCLES_OTEL_ENABLED is true but OpenTelemetry is not installed ({exc.name}): {INSTALL_HINT}"
        ) from None


class Tracing:
    """The tracer of this process and the spans of one request."""

    def __init__(self) -> None:
        from opentelemetry import context, trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

        class RequestTraceIds(RandomIdGenerator):
            """Root spans take the request's trace id."""

            def generate_trace_id(self) -> int:
                return _next_trace_id.get() or super().generate_trace_id()

        self._context = context
        self._trace = trace
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "cycles"})
        self.provider = TracerProvider(resource=resource, id_generator=RequestTraceIds())
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("cycles")

    def start_request(self, method: str, ids: RequestIds) -> tuple[Any, Any]:
        """The SERVER span of a request, made current; (span, token to end it).
        Named by its route once routing has found it (end_request)."""
        trace = self._trace
        parent = None
        if ids.parent_span_id is not None:
            remote = trace.SpanContext(
                int(ids.trace_id, 16), int(ids.parent_span_id, 16), is_remote=True,
                trace_flags=trace.TraceFlags(ids.trace_flags))
            parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        else:
            _next_trace_id.set(int(ids.trace_id, 16))
        span = self.tracer.start_span(
            method, context=parent, kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "cycles.request_id": ids.request_id})
        token = self._context.attach(trace.set_span_in_context(span))
        return span, token

    def end_request(self, span: Any, token: Any, route: str, status: int) -> None:
        span.update_name(f"{span.name} {route}")
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end()
        self._context.detach(token)

    @contextmanager
    def db_span(self, call: str) -> Iterator[None]:
        with self.tracer.start_as_current_span(
                f"cycles.{call}", kind=self._trace.SpanKind.CLIENT,
                attributes={"db.system": "postgresql", "db.operation.name": call}):
            yield

    def shutdown(self) -> None:
        """Export what is still buffered."""
        self.provider.shutdown()


def start(settings: Settings) -> Tracing | None:
    if not settings.otel_enabled:
        return None
    check_available(settings)
    return Tracing()
