"""GET /v1/auth/introspect: what the presented API key is and may do."""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, Response, get

from app.api.request_parsing import api_key_caller
from app.api.sql_call import respond

INTROSPECT_SQL: Final = "SELECT cycles.introspect(p_api_key => %(key)s)::text"


@get("/v1/auth/introspect")
async def introspect(request: Request[Any, Any, Any]) -> Response[bytes]:
    caller = api_key_caller(request)
    return await respond(request, INTROSPECT_SQL, {"key": caller.api_key})


ROUTES: Final = [introspect]
