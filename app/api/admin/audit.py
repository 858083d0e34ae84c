"""GET /v1/admin/audit/logs: the audit log, filtered and paged by cycles.list_audit_logs."""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, Response, get

from app.api.admin.calls import AdminCall, json_text
from app.api.request_parsing import QueryReader, int_param, read_query, text_param

LIST_SQL: Final = (
    "SELECT cycles.list_audit_logs(p_filter => %(filter)s::jsonb, p_limit => %(limit)s,"
    " p_cursor => %(cursor)s, p_ctx => %(ctx)s::jsonb)::text")

_status = int_param(100, 599)
# Filters passed to SQL as they come (IN-lists stay comma-separated strings).
FILTER_QUERY: Final[dict[str, QueryReader]] = {
    "tenant_id": text_param(128),
    "key_id": text_param(128),
    "operation": text_param(4096),
    "status": _status,
    "status_min": _status,
    "status_max": _status,
    "resource_type": text_param(4096),
    "resource_id": text_param(1024),
    "error_code": text_param(4096),
    "error_code_exclude": text_param(4096),
    "from": text_param(64),
    "to": text_param(64),
    "search": text_param(128),
    "trace_id": text_param(64),
    "request_id": text_param(256),
}
PAGE_QUERY: Final[dict[str, QueryReader]] = {"limit": int_param(1, 100), "cursor": text_param(128)}


@get("/v1/admin/audit/logs")
async def list_audit_logs(request: Request[Any, Any, Any]) -> Response[bytes]:
    async with AdminCall(request, "listAuditLogs", None) as call:
        call.authenticate(allow_tenant_key=False)
        filters = read_query(request, FILTER_QUERY)
        page = read_query(request, PAGE_QUERY)
        return await call.respond(LIST_SQL, {
            "filter": json_text(filters), "limit": page.get("limit"), "cursor": page.get("cursor"),
            "ctx": call.context()})


ROUTES: Final = [list_audit_logs]
