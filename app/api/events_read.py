"""GET /v1/events: a tenant key's own budget, reservation and tenant events.

Needs events:read (checked in SQL, 403 INSUFFICIENT_PERMISSIONS otherwise).
POST /v1/events, on the same path, records usage (app.api.events).
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, Response, get

from app.api.admin.events import EVENT_FILTERS
from app.api.request_parsing import api_key_caller, context_json, read_query
from app.api.sql_call import respond

LIST_SQL: Final = (
    "SELECT cycles.list_tenant_events(p_api_key => %(key)s, p_event_type => %(event_type)s,"
    " p_category => %(category)s, p_scope => %(scope)s, p_correlation_id => %(correlation_id)s,"
    " p_from => %(from)s, p_to => %(to)s, p_cursor => %(cursor)s, p_limit => %(limit)s,"
    " p_ctx => %(ctx)s::jsonb)::text")


@get("/v1/events")
async def list_tenant_events(request: Request[Any, Any, Any]) -> Response[bytes]:
    caller = api_key_caller(request)
    query = read_query(request, EVENT_FILTERS)
    params: dict[str, Any] = {name: query.get(name) for name in EVENT_FILTERS}
    params["key"] = caller.api_key
    params["ctx"] = context_json(request, caller)
    return await respond(request, LIST_SQL, params)


ROUTES: Final = [list_tenant_events]
