"""What is recorded about every HTTP request: metrics, one access-log line and
(when enabled) an OpenTelemetry span.

``RequestObserver`` wraps the application's ASGI handler, so it sees every
response, including the router's own 404 and 405. It notes the status and
the first body chunk as they are sent (every API response is one chunk) and
records after the last byte. The route label is the route template Litestar
resolved (``/v1/reservations/{reservation_id}/commit``), never the raw path.

The tenant is known when the response shows it: a tenant API key's response
names its scopes (``tenant:<id>/...``), and an admin request names the tenant
in its path. A key's tenant never changes, so it is remembered per key (by
the secret's hash, in memory, bounded) for the responses that show no scope.
"""

from __future__ import annotations

import time
from typing import Any, Final

from litestar.types import ASGIApp, Message, Receive, Send

from app.logs import AccessLog
from app.observability.metrics import Metrics, route_label
from app.observability.otel import Tracing
from app.tracing import request_ids

_API_KEY_HEADER: Final = b"x-cycles-api-key"
_TENANT_SCOPE: Final = b'"tenant:'
_TENANT_CACHE_SIZE: Final = 10_000
_NOT_LOGGED_ROUTES: Final = frozenset({"/metrics"})


def _tenant_in_body(body: bytes) -> str | None:
    start = body.find(_TENANT_SCOPE)
    if start < 0:
        return None
    start += len(_TENANT_SCOPE)
    end = start
    limit = min(len(body), start + 128)
    while end < limit and body[end] not in b'/"':
        end += 1
    return body[start:end].decode("utf-8", "replace") if end > start else None


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


class RequestObserver:
    """ASGI wrapper recording each HTTP request (metrics, access log, span)."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None, tracing: Tracing | None,
                 access_log: AccessLog | None) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing
        self.access_log = access_log
        self._tenants: dict[int, str] = {}

    def tenant(self, scope: dict[str, Any], status: int, body: bytes) -> str | None:
        path_params = scope.get("path_params")
        if path_params and "tenant_id" in path_params:
            # Only a tenant that exists and the caller may see: anyone can
            # put any string in a path, and a label per string is unbounded.
            return str(path_params["tenant_id"]) if status < 400 else None
        secret = _header(scope, _API_KEY_HEADER)
        if secret is None:
            return None
        # Remembered by the secret's hash: no secret is kept. A collision
        # (64-bit, per-process salt) would only mislabel a log line.
        key = hash(secret)
        tenant = self._tenants.get(key)
        if tenant is None and status < 300:
            tenant = _tenant_in_body(body)
            if tenant is not None:
                if len(self._tenants) >= _TENANT_CACHE_SIZE:
                    self._tenants.clear()
                self._tenants[key] = tenant
        return tenant

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        body = b""
        first_body = True

        async def observed_send(message: Message) -> None:
            nonlocal status, body, first_body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif first_body and message["type"] == "http.response.body":
                body = message.get("body", b"")
                first_body = False
            await send(message)

        span: Any = None
        token: Any = None
        if self.tracing is not None:
            ids = request_ids(scope)
            span, token = self.tracing.start_request(scope["method"], ids)
        try:
            await self.app(scope, receive, observed_send)
        finally:
            seconds = time.perf_counter() - started
            self._record(scope, status, body, seconds, span, token)

    def _record(self, scope: dict[str, Any], status: int, body: bytes, seconds: float, span: Any, token: Any) -> None:
        metrics = self.metrics
        route = route_label(scope.get("path_template"))
        tenant = self.tenant(scope, status, body)
        method: str = scope["method"]
        if metrics is not None:
            metrics.record_request(method, route, status, seconds, tenant, body)
        if span is not None and self.tracing is not None:
            self.tracing.end_request(span, token, route, status)
        access_log = self.access_log
        if access_log is not None and route not in _NOT_LOGGED_ROUTES and access_log.enabled():
            ids = request_ids(scope)
            path: str = scope["path"]
            duration_ms = round(seconds * 1000, 3)
            fields: dict[str, Any] = {
                "method": method, "path": path, "route": route, "status": status, "duration_ms": duration_ms,
                "request_id": ids.request_id, "trace_id": ids.trace_id}
            if tenant is not None:
                fields["tenant"] = tenant
            access_log.write(f"{method} {path} {status} {duration_ms}ms", fields)
