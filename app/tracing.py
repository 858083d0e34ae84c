"""Request and trace ids: one pair per HTTP request, echoed on every response.

The trace id comes from the caller when it sent a valid one (a W3C
``traceparent`` first, then ``X-Cycles-Trace-Id``), else it is generated. A
malformed header counts as absent: correlation headers never fail a request.
The pair is computed on first use and cached in the ASGI scope, so the route
handler, the error handlers, the response-header hook, the access log and the
OpenTelemetry span (app.observability.otel) all see the same ids. When the
trace id came from a traceparent, its parent span id and flags are kept too:
an exported span is then the caller's child.
"""

from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

from litestar.types import Message, Scope

_STATE_KEY = "cycles.ids"
_ZERO_TRACE = "0" * 32
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


class RequestIds(NamedTuple):
    request_id: str
    trace_id: str
    # From a valid traceparent only: the caller's span and its trace flags.
    parent_span_id: str | None = None
    trace_flags: int = 1


def new_trace_id() -> str:
    """16 random bytes as 32 lowercase hex; all-zero is not a valid trace id."""
    while True:
        trace_id = os.urandom(16).hex()
        if trace_id != _ZERO_TRACE:
            return trace_id


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()


def parse_traceparent(traceparent: str | None) -> tuple[str, str, int] | None:
    """(trace id, parent span id, flags) of a valid W3C traceparent, else None."""
    if traceparent is None:
        return None
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None or match[1] == _ZERO_TRACE or match[2] == "0" * 16:
        return None
    return match[1], match[2], int(match[3], 16)


def trace_id_from(traceparent: str | None, cycles_trace_id: str | None) -> str:
    """The trace id of a request, by the precedence rule: valid traceparent,
    else valid X-Cycles-Trace-Id, else a fresh one."""
    parent = parse_traceparent(traceparent)
    if parent is not None:
        return parent[0]
    if cycles_trace_id is not None:
        candidate = cycles_trace_id.strip()
        if _TRACE_ID.fullmatch(candidate) and candidate != _ZERO_TRACE:
            return candidate
    return new_trace_id()


def _first_header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def request_ids(scope: Scope | Any) -> RequestIds:
    """The ids of the request this scope belongs to (computed once)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    ids: RequestIds | None = state.get(_STATE_KEY)
    if ids is None:
        parent = parse_traceparent(_first_header(scope, b"traceparent"))
        if parent is not None:
            ids = RequestIds(new_request_id(), *parent)
        else:
            ids = RequestIds(new_request_id(), trace_id_from(None, _first_header(scope, b"x-cycles-trace-id")))
        state[_STATE_KEY] = ids
    return ids


async def add_id_headers(message: Message, scope: Scope) -> None:
    """before_send hook: put X-Request-Id and X-Cycles-Trace-Id on every
    response, including the ones Litestar produces itself (404, 405, 413...)."""
    if message["type"] != "http.response.start":
        return
    ids = request_ids(scope)
    message["headers"] = [
        *message.get("headers", ()),
        (b"x-request-id", ids.request_id.encode()),
        (b"x-cycles-trace-id", ids.trace_id.encode()),
    ]
