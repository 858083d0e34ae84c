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

import asyncio
import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg import errors, pq
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
        self.transaction_pooler = transaction_pooler
        self.pool = create_pool(database_url, min_size, max_size, timeouts, transaction_pooler)
        self._statements: dict[str, _Statement] = {}
        self._connections: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], _ConnectionState] = (
            weakref.WeakKeyDictionary())

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
        statement = self._statements.get(sql)
        if statement is None and len(self._statements) < _MAX_STATEMENTS:
            statement = self._statements[sql] = _Statement.of(sql, len(self._statements))
        if statement is not None and statement.names is not None and all(
                type(value) is str and "\x00" not in value for value in params.values()):
            # Every request's call: straight on the connection (see _Statement).
            conn = await self.pool.getconn(timeout=self.pool_timeout_s)
            try:
                value = await self._run(conn, statement, [params[name] for name in statement.names])
            finally:
                await self.pool.putconn(conn)
        else:
            async with self.pool.connection(timeout=self.pool_timeout_s) as conn:
                cursor = await conn.execute(sql, params)
                row = await cursor.fetchone()
            value = None if row is None else row[0]
        if value is None:
            raise RuntimeError(f"statement returned no JSON: {sql}")
        result: bytes = value
        return result

    async def _run(self, conn: psycopg.AsyncConnection[Any], statement: _Statement, values: list[str]) -> Any:
        """The first column of the first row of ``statement`` run with these
        text values, sent and read with libpq on the connection itself.

        This is what psycopg does for the same call (parameters as text of
        unknown type, the statement prepared once per connection, errors
        raised as psycopg's exceptions), without its cursor and adapter
        layers, which cost more CPU than the rest of a request's database
        call. The connection is taken from the pool as for any call and
        returned to it after; a failure leaves it as psycopg would (broken:
        the pool replaces it)."""
        state = self._connections.get(conn)
        if state is None:
            state = self._connections[conn] = _ConnectionState(conn.info.encoding)
        pgconn = conn.pgconn
        encoding = state.encoding
        args: list[bytes | None] = [value.encode(encoding) for value in values]
        if self.transaction_pooler:
            pgconn.send_query_params(statement.text, args)
            result = await _result(pgconn)
        else:
            result = await _run_prepared(pgconn, state, statement, args)
            if result.error_field(pq.DiagnosticField.SQLSTATE) == _NO_SUCH_STATEMENT:
                # The connection's prepared statements were dropped (psycopg
                # sends DEALLOCATE ALL after a ROLLBACK or DROP it ran there):
                # nothing was executed, so prepare again and run it once more.
                state.prepared.clear()
                result = await _run_prepared(pgconn, state, statement, args)
        _check(result, pq.ExecStatus.TUPLES_OK, encoding)
        return result.get_value(0, 0) if result.ntuples and result.nfields else None

    async def fetch_int(self, sql: str) -> int:
        """Run one statement returning one integer."""
        async with self.pool.connection(timeout=self.pool_timeout_s) as conn:
            cursor = await conn.execute(sql)
            row = await cursor.fetchone()
        if row is None or not isinstance(row[0], int):
            raise RuntimeError(f"statement returned no integer: {sql}")
        return row[0]


# Calls made straight on libpq (Database._run) -------------------------------

# Statement texts are constants; a bound only against misuse (others go through psycopg).
_MAX_STATEMENTS: Final = 1000
# invalid_sql_statement_name: no prepared statement of that name on the connection.
_NO_SUCH_STATEMENT: Final = b"26000"
# psycopg's named placeholder; a statement with any other % is left to psycopg.
_PLACEHOLDER: Final = re.compile(r"%\(([A-Za-z_][A-Za-z0-9_]*)\)s")


@dataclass(frozen=True)
class _Statement:
    """A statement's text with $n placeholders, the parameter names in $n
    order (None: psycopg runs it), and its prepared statement's name."""

    text: bytes
    names: tuple[str, ...] | None
    name: bytes

    @classmethod
    def of(cls, sql: str, number: int) -> _Statement:
        names: list[str] = []

        def number_of(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        text = _PLACEHOLDER.sub(number_of, sql)
        plain = "%" not in text
        return cls(text.encode(), tuple(names) if plain else None, f"cycles_{number}".encode())


@dataclass
class _ConnectionState:
    encoding: str
    prepared: set[bytes] = field(default_factory=set)


async def _wait(pgconn: pq.abc.PGconn, writing: bool) -> None:
    """Until the connection's socket is readable (or writable)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = pgconn.socket
    if writing:
        loop.add_writer(fd, ready.set_result, None)
    else:
        loop.add_reader(fd, ready.set_result, None)
    try:
        await ready
    finally:
        if writing:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult:
    """Send what is buffered, then the last result of the command."""
    while pgconn.flush():
        await _wait(pgconn, writing=True)
    pgconn.consume_input()
    while pgconn.is_busy():
        await _wait(pgconn, writing=False)
        pgconn.consume_input()
    result = pgconn.get_result()
    if result is None:
        raise errors.InternalError("the server sent no result")
    while (following := pgconn.get_result()) is not None:
        result = following
    return result


async def _run_prepared(pgconn: pq.abc.PGconn, state: _ConnectionState, statement: _Statement,
                        args: list[bytes | None]) -> pq.abc.PGresult:
    if statement.name not in state.prepared:
        pgconn.send_prepare(statement.name, statement.text)
        _check(await _result(pgconn), pq.ExecStatus.COMMAND_OK, state.encoding)
        state.prepared.add(statement.name)
    pgconn.send_query_prepared(statement.name, args)
    return await _result(pgconn)


def _check(result: pq.abc.PGresult, expected: pq.ExecStatus, encoding: str) -> None:
    if result.status == expected:
        return
    if result.status == pq.ExecStatus.FATAL_ERROR:
        raise errors.error_from_result(result, encoding=encoding)
    raise errors.InternalError(f"unexpected result status {pq.ExecStatus(result.status).name}")
