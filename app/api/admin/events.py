"""The event stream for the admin: GET /v1/admin/events and /v1/admin/events/{event_id}.

Admin key only: a tenant key reaches SQL, which refuses it with 403
INSUFFICIENT_PERMISSIONS (and audits the attempt). Tenants read their own
events at GET /v1/events (app.api.events_read).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Final

from litestar import Request, Response, get
from litestar.params import FromPath

from app.api.admin.calls import AdminCall
from app.api.request_parsing import QueryReader, enum_param, int_param, read_query, text_param
from app.errors import invalid_request

LIST_SQL: Final = (
    "SELECT cycles.list_events(p_tenant_id => %(tenant_id)s, p_event_type => %(event_type)s,"
    " p_category => %(category)s, p_scope => %(scope)s, p_correlation_id => %(correlation_id)s,"
    " p_trace_id => %(trace_id)s, p_request_id => %(request_id)s, p_from => %(from)s, p_to => %(to)s,"
    " p_search => %(search)s, p_sort_by => %(sort_by)s, p_sort_dir => %(sort_dir)s,"
    " p_cursor => %(cursor)s, p_limit => %(limit)s, p_ctx => %(ctx)s::jsonb)::text")
GET_SQL: Final = "SELECT cycles.get_event(p_event_id => %(id)s, p_ctx => %(ctx)s::jsonb)::text"

MAX_EVENT_ID_LENGTH: Final = 128
_TRACE_ID: Final = re.compile(r"[0-9a-f]{32}")
CATEGORIES: Final = ("budget", "tenant", "api_key", "policy", "reservation", "system", "webhook")


def date_time_param(name: str, raw: str) -> datetime:
    """An ISO-8601 date-time; one without a zone is read as UTC."""
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise invalid_request(f"query parameter {name} must be an ISO-8601 date-time, got {raw[:64]!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _trace_id_param(name: str, raw: str) -> str:
    if not _TRACE_ID.fullmatch(raw):
        raise invalid_request(f"query parameter {name} must be 32 lowercase hex characters")
    return raw


# Filters shared with the tenant-scoped listing.
EVENT_FILTERS: Final[dict[str, QueryReader]] = {
    "event_type": text_param(128),
    "category": enum_param(*CATEGORIES),
    "scope": text_param(1024),
    "correlation_id": text_param(512),
    "from": date_time_param,
    "to": date_time_param,
    "cursor": text_param(128),
    "limit": int_param(1, 100),
}

LIST_QUERY: Final[dict[str, QueryReader]] = {
    **EVENT_FILTERS,
    "tenant_id": text_param(64),
    "trace_id": _trace_id_param,
    "request_id": text_param(256),
    "search": text_param(128),
    "sort_by": enum_param("event_type", "category", "scope", "tenant_id", "timestamp"),
    "sort_dir": enum_param("asc", "desc"),
}


@get("/v1/admin/events")
async def list_events(request: Request[Any, Any, Any]) -> Response[bytes]:
    async with AdminCall(request, "listEvents", None) as call:
        call.authenticate(allow_tenant_key=False)
        query = read_query(request, LIST_QUERY)
        call.tenant_id = query.get("tenant_id")
        params: dict[str, Any] = {name: query.get(name) for name in LIST_QUERY}
        return await call.respond(LIST_SQL, {**params, "ctx": call.context()})


@get("/v1/admin/events/{event_id:str}")
async def get_event(request: Request[Any, Any, Any], event_id: FromPath[str]) -> Response[bytes]:
    async with AdminCall(request, "getEvent", None) as call:
        call.authenticate(allow_tenant_key=False)
        if not event_id or len(event_id) > MAX_EVENT_ID_LENGTH or "\x00" in event_id:
            raise invalid_request(f"event_id must be 1 to {MAX_EVENT_ID_LENGTH} characters")
        call.resource_id = event_id
        return await call.respond(GET_SQL, {"id": event_id, "ctx": call.context()})


ROUTES: Final = [list_events, get_event]
