"""GET /v1/balances: the balances of the caller's budgets matching a subject filter."""

from __future__ import annotations

from typing import Any, Final

import msgspec
from litestar import Request, Response, get

from app.api.request_parsing import (
    api_key_caller,
    bool_param,
    context_json,
    enum_param,
    int_param,
    read_query,
    text_param,
)
from app.api.sql_call import respond
from app.errors import invalid_request
from app.wire import SUBJECT_FIELDS

BALANCES_SQL: Final = (
    "SELECT cycles.balances(p_api_key => %(key)s, p_query => %(query)s::jsonb,"
    " p_ctx => %(ctx)s::jsonb)::text")

_subject_filter = text_param(128)

BALANCES_QUERY: Final = {
    "tenant": _subject_filter,
    "workspace": _subject_filter,
    "app": _subject_filter,
    "workflow": _subject_filter,
    "agent": _subject_filter,
    "toolset": _subject_filter,
    "include_children": bool_param,
    # The governance plane's spelling of the same operation.
    "scope_prefix": text_param(1024),
    "unit": enum_param("USD_MICROCENTS", "TOKENS", "CREDITS", "RISK_POINTS"),
    "limit": int_param(1, 200),
    "cursor": text_param(2048),
}


@get("/v1/balances")
async def get_balances(request: Request[Any, Any, Any]) -> Response[bytes]:
    caller = api_key_caller(request)
    query = read_query(request, BALANCES_QUERY)
    if not any(name in query for name in SUBJECT_FIELDS):
        raise invalid_request(
            "at least one subject filter is required: " + ", ".join(SUBJECT_FIELDS))
    return await respond(request, BALANCES_SQL, {
        "key": caller.api_key, "query": msgspec.json.encode(query).decode(),
        "ctx": context_json(request, caller)})


ROUTES: Final = [get_balances]
