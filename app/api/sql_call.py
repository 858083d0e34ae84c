"""The single database round trip of a request, and its response."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar import Request, Response
from litestar.enums import MediaType

from app.api.request_parsing import database


async def respond(
    request: Request[Any, Any, Any], sql: str, params: Mapping[str, Any], status: int = 200,
) -> Response[bytes]:
    """Call the function and send its JSON as the body, unchanged. A raised
    SQLSTATE propagates to the error handlers (app.errors)."""
    body = await database(request).fetch_json(sql, params)
    return Response(content=body, status_code=status, media_type=MediaType.JSON)
