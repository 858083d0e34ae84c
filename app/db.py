"""The connection pool, and the one way handlers talk to PostgreSQL.

Connections are in autocommit mode: every cycles.* call is its own
transaction, opened and committed by the server around the one statement.
Handlers keep their SQL text constant, so psycopg prepares each statement
once per connection and then only binds parameters.

Results are fetched as text and loaded as raw bytes (no str round trip), so
the JSON a function built is the response body, byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg_pool import AsyncConnectionPool

# How long a request waits for a free connection before giving up (503).
CONNECTION_TIMEOUT_S = 10.0


class _RawTextLoader(Loader):
    """Loads a text column as the bytes PostgreSQL sent (UTF-8)."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_loader("text", _RawTextLoader)


def create_pool(database_url: str, min_size: int, max_size: int) -> AsyncConnectionPool[Any]:
    """A pool of autocommit connections; opened by the application lifespan."""
    return AsyncConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max(min_size, max_size),
        kwargs={"autocommit": True},
        configure=_configure,
        open=False,
        name="cycles",
    )


class Database:
    """The pool of one application instance (set while the app is running)."""

    def __init__(self, database_url: str, min_size: int, max_size: int) -> None:
        self.database_url = database_url
        self.pool = create_pool(database_url, min_size, max_size)

    async def open(self) -> None:
        # Do not wait for the database: the process must come up (and /health
        # answer) even while PostgreSQL is still starting; /ready tells.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def fetch_json(self, sql: str, params: Mapping[str, Any]) -> bytes:
        """Run one statement returning one text value (a function's jsonb::text)."""
        async with self.pool.connection(timeout=CONNECTION_TIMEOUT_S) as conn:
            cursor = await conn.execute(sql, params)
            row = await cursor.fetchone()
        if row is None or row[0] is None:
            raise RuntimeError(f"statement returned no JSON: {sql}")
        result: bytes = row[0]
        return result

    async def fetch_int(self, sql: str) -> int:
        """Run one statement returning one integer."""
        async with self.pool.connection(timeout=CONNECTION_TIMEOUT_S) as conn:
            cursor = await conn.execute(sql)
            row = await cursor.fetchone()
        if row is None or not isinstance(row[0], int):
            raise RuntimeError(f"statement returned no integer: {sql}")
        return row[0]
