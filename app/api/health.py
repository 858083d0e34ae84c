"""GET /health (the process is up) and GET /ready (the database answers and
its schema is at the migration head)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Final

import msgspec
import psycopg
from litestar import Request, Response, get
from litestar.enums import MediaType

from app.api.request_parsing import database
from app.errors import error_response
from app.migrate import current_revision, head_revision

READY_TIMEOUT_S: Final = 5

_UP: Final = b'{"status":"UP"}'


@get("/health")
async def health() -> Response[bytes]:
    return Response(content=_UP, media_type=MediaType.JSON)


@functools.cache
def _head() -> str:
    return head_revision()


def _schema_revisions(database_url: str) -> tuple[str | None, str]:
    """(current revision of the database, head revision of the code)."""
    with psycopg.connect(database_url, connect_timeout=READY_TIMEOUT_S, autocommit=True) as conn:
        return current_revision(conn), _head()


@get("/ready")
async def ready(request: Request[Any, Any, Any]) -> Response[bytes]:
    url = database(request).database_url
    try:
        current, head = await asyncio.wait_for(
            asyncio.to_thread(_schema_revisions, url), timeout=READY_TIMEOUT_S + 1)
    except (psycopg.Error, TimeoutError, OSError) as exc:
        return error_response(
            request, 503, "INTERNAL_ERROR", f"the database does not answer: {type(exc).__name__}")
    if current != head:
        details = {"expected_revision": head}
        if current is not None:
            details["schema_revision"] = current
        return error_response(
            request, 503, "INTERNAL_ERROR",
            f"the database schema is at revision {current or 'none'}, expected {head}", details)
    body = msgspec.json.encode({"status": "READY", "schema_revision": head})
    return Response(content=body, media_type=MediaType.JSON)


ROUTES: Final = [health, ready]
