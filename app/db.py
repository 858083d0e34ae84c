"""The connection pool, and the one way handlers talk to PostgreSQL.

Connections are in autocommit mode: every cycles.* call is its own
transaction, opened and committed by the server around the one statement.
Handlers keep their SQL text constant, so psycopg prepares each statement
once per connection and then only binds parameters.

Results are fetched as text and loaded as raw bytes (no str round trip), so
the JSON a function built is the response body, byte for byte.

Behind a transaction pooler (CYCLES_DATABASE_POOLER=pgbouncer) consecutive
transactions of one client connection run on different server connections,
so nothing may outlive a transaction: statements are not prepared (a
statement prepared on one server connection is unknown on the next), and the
timeouts are not SET on the connection (a SET would stay on the server
connection, reach whichever client gets it next, and be missing for this
one). The timeouts then come from where the pooler's server connections are
born: ``ALTER ROLE ... SET lock_timeout`` (or PgBouncer's connect_query);
the pool checks once per connection that they are in force and warns if not.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg_pool import AsyncConnectionPool

from app.config import Settings

logger = logging.getLogger("cycles.db")


class _RawTextLoader(Loader):
    """Loads a text column as the bytes PostgreSQL sent (UTF-8)."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


@dataclass(frozen=True)
class Timeouts:
    """Bounds on how long a request may wait in the database (milliseconds;
    0 leaves the setting the connection already has)."""

    lock_ms: int
    statement_ms: int


def _configurer(timeouts: Timeouts) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]:
    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        conn.adapters.register_loader("text", _RawTextLoader)
        # A lock held by a stuck transaction must become a fast 503 (the
        # request's transaction rolls back: nothing done), not a request that
        # hangs. A value already set for the connection (conninfo options, the
        # role or the database) wins.
        for name, value in (("lock_timeout", timeouts.lock_ms), ("statement_timeout", timeouts.statement_ms)):
            if value > 0:
                await conn.execute(
                    "SELECT set_config(%(name)s, %(value)s, false) WHERE current_setting(%(name)s) = '0'",
                    {"name": name, "value": f"{value}ms"})

    return configure


TIMEOUTS_IN_FORCE_SQL = (
    "SELECT current_setting('lock_timeout') <> '0', current_setting('statement_timeout') <> '0'")


def _pooled_configurer(timeouts: Timeouts) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]:
    """Behind a transaction pooler: no session state; only a read-only look
    at whether the wanted timeouts are in force (warned about once)."""
    warned = False

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        nonlocal warned
        conn.adapters.register_loader("text", _RawTextLoader)
        if warned or (timeouts.lock_ms <= 0 and timeouts.statement_ms <= 0):
            return
        cursor = await conn.execute(TIMEOUTS_IN_FORCE_SQL)
        row = await cursor.fetchone()
        lock_set, statement_set = row if row is not None else (False, False)
        missing = [name for name, wanted, present in (
            ("lock_timeout", timeouts.lock_ms, lock_set), ("statement_timeout", timeouts.statement_ms, statement_set))
            if wanted > 0 and not present]
        if missing:
            warned = True
            logger.warning(
                "behind a transaction pooler the server does not SET %s per connection, and the database "
                "has none: set it for the server's role (ALTER ROLE ... SET %s = ...)",
                " and ".join(missing), missing[0])

    return configure


def create_pool(database_url: str, min_size: int, max_size: int, timeouts: Timeouts,
                transaction_pooler: bool = False) -> AsyncConnectionPool[Any]:
    """A pool of autocommit connections; opened by the application lifespan."""
    kwargs: dict[str, Any] = {"autocommit": True}
    if transaction_pooler:
        kwargs["prepare_threshold"] = None
    return AsyncConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max(min_size, max_size),
        kwargs=kwargs,
        configure=_pooled_configurer(timeouts) if transaction_pooler else _configurer(timeouts),
        open=False,
        name="cycles",
    )


class Database:
    """The pool of one application instance (set while the app is running).
    A request waits at most ``pool_timeout_s`` for a connection, which is
    also how soon it learns that the database is down (503)."""

    def __init__(self, database_url: str, min_size: int, max_size: int, timeouts: Timeouts,
                 pool_timeout_s: float, transaction_pooler: bool = False) -> None:
        self.database_url = database_url
        self.pool_timeout_s = pool_timeout_s
        self.pool = create_pool(database_url, min_size, max_size, timeouts, transaction_pooler)

    @classmethod
    def from_settings(cls, settings: Settings, min_size: int | None = None,
                      max_size: int | None = None) -> Database:
        """The pool the settings describe (their pool sizes unless given)."""
        assert settings.database_url is not None
        return cls(
            settings.database_url,
            settings.pool_min_size if min_size is None else min_size,
            settings.pool_max_size if max_size is None else max_size,
            Timeouts(lock_ms=settings.lock_timeout_ms, statement_ms=settings.statement_timeout_ms),
            pool_timeout_s=settings.pool_timeout_ms / 1000,
            transaction_pooler=settings.database_pooler == "pgbouncer")

    async def open(self) -> None:
        # Do not wait for the database: the process must come up (and /health
        # answer) even while PostgreSQL is still starting; /ready tells.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def fetch_json(self, sql: str, params: Mapping[str, Any]) -> bytes:
        """Run one statement returning one text value (a function's jsonb::text)."""
        async with self.pool.connection(timeout=self.pool_timeout_s) as conn:
            cursor = await conn.execute(sql, params)
            row = await cursor.fetchone()
        if row is None or row[0] is None:
            raise RuntimeError(f"statement returned no JSON: {sql}")
        result: bytes = row[0]
        return result

    async def fetch_int(self, sql: str) -> int:
        """Run one statement returning one integer."""
        async with self.pool.connection(timeout=self.pool_timeout_s) as conn:
            cursor = await conn.execute(sql)
            row = await cursor.fetchone()
        if row is None or not isinstance(row[0], int):
            raise RuntimeError(f"statement returned no integer: {sql}")
        return row[0]
