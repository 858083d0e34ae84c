"""Events: the event stream filtered by type, category, tenant, scope,
correlation id, trace id and time, and "follow a correlation" (every event
sharing a correlation id, oldest first).

The admin reads through cycles.list_events (GET /v1/admin/events); a tenant
session through cycles.list_tenant_events with its own key (GET /v1/events:
its tenant's budget, reservation and tenant events, within its scope filter,
and no trace id filter, as over REST).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Final

from litestar import Request, Response, get

from app.api import events_read
from app.api.admin import events as admin_events
from app.dashboard.calls import DashboardError, admin_call, runtime_call
from app.dashboard.sessions import load_session
from app.dashboard.web import login_redirect, page_links, query_text, render

PAGE_SIZE: Final = 50
_TRACE_ID: Final = re.compile(r"[0-9a-f]{32}")
TEXT_FILTERS: Final = ("tenant_id", "event_type", "scope", "correlation_id", "trace_id", "from", "to")


def _time(raw: str | None, name: str) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise DashboardError(
            400, "INVALID_REQUEST", f"{name} must be an ISO-8601 date-time, e.g. 2026-01-01T00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@get("/events")
async def events_page(request: Request[Any, Any, Any]) -> Response[Any]:
    session = await load_session(request)
    if session is None:
        return login_redirect()
    filters: dict[str, Any] = {name: query_text(request, name) for name in TEXT_FILTERS}
    filters["category"] = query_text(request, "category", admin_events.CATEGORIES)
    if not session.is_admin:
        filters["tenant_id"] = filters["trace_id"] = None  # not filters of the tenant listing
    # Following a correlation reads it in the order it happened.
    filters["order"] = query_text(request, "order", ("asc",)) or ("asc" if filters["correlation_id"] else None)
    cursor = query_text(request, "cursor")
    page: Any = {"events": []}
    error = None
    try:
        if filters["trace_id"] is not None and not _TRACE_ID.fullmatch(filters["trace_id"]):
            raise DashboardError(400, "INVALID_REQUEST", "a trace id is 32 lowercase hex characters")
        common = {
            "event_type": filters["event_type"], "category": filters["category"], "scope": filters["scope"],
            "correlation_id": filters["correlation_id"], "from": _time(filters["from"], "from"),
            "to": _time(filters["to"], "to"), "cursor": cursor, "limit": PAGE_SIZE}
        if session.is_admin:
            page = await admin_call(request, session, "listEvents", None, admin_events.LIST_SQL, {
                **common, "tenant_id": filters["tenant_id"], "trace_id": filters["trace_id"], "request_id": None,
                "search": None, "sort_by": "timestamp" if filters["order"] else None,
                "sort_dir": filters["order"]}, tenant_id=filters["tenant_id"])
        else:
            page = await runtime_call(request, session, "listTenantEvents", events_read.LIST_SQL, common)
    except DashboardError as exc:
        error = f"{exc.error}: {exc.message}"
    return render("events.html", request, session, rows=page.get("events", []), filters=filters,
                  categories=admin_events.CATEGORIES, load_error=error,
                  **page_links("/dashboard/events", filters, page, cursor))


ROUTES: Final = [events_page]
