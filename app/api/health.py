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
from app.db import Database
from app.errors import error_response
from app.migrate import VERSION_SQL, VERSION_TABLE_EXISTS_SQL, head_revision

READY_TIMEOUT_S: Final = 5

_UP: Final = b'{"status":"UP"}'


@get("/health")
async def health() -> Response[bytes]:
    return Response(content=_UP, media_type=MediaType.JSON)


@functools.cache
def _head() -> str:
    return head_revision()


async def _schema_revision(db: Database) -> str | None:
    """The database's migration revision, read through the request pool: ready
    means that requests would be served now, not that a fresh connection
    could be opened (after an outage the pool reconnects on its own schedule)."""
    async with db.pool.connection(timeout=READY_TIMEOUT_S) as conn:
        cursor = await conn.execute(VERSION_TABLE_EXISTS_SQL)
        exists = await cursor.fetchone()
        if exists is None or not exists[0]:
            return None
        cursor = await conn.execute(VERSION_SQL)
        row = await cursor.fetchone()
    return None if row is None else str(row[0])


@get("/ready")
async def ready(request: Request[Any, Any, Any]) -> Response[bytes]:
    head = _head()
    try:
        current = await asyncio.wait_for(_schema_revision(database(request)), timeout=READY_TIMEOUT_S + 1)
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
