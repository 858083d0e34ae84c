"""Group commit of concurrent reserves made with one API key.

Reserves that charge one shared budget (a tenant-level budget every request
of the tenant draws from) serialise on its row lock, which each transaction
holds until its commit, WAL flush included. This batcher applies concurrent
reserves of one key (so of one tenant) in one transaction instead
(cycles.reserve_batch): the lock is taken and the commit flushed once per
batch, while each request keeps its own outcome, response and idempotency.

Per process and per key: a reserve that finds none of its key in flight is
sent at once, alone, with the plain cycles.reserve call (no added latency at
low concurrency); the ones that arrive while a call is in flight wait, and
are sent together as soon as it returns (at most MAX_BATCH at a time).

The machinery (Batcher) is not specific to reserves: app.settle_batcher
groups commits and releases with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg_pool import PoolTimeout

from app.db import Database
from app.errors import UNAVAILABLE_SQLSTATES, ApiError, refusal

logger = logging.getLogger("cycles.api")

# cycles.reserve_batch takes at most 64 (the subtransaction ids PostgreSQL
# caches per backend); fewer keep one batch's hold on a shared row short.
MAX_BATCH: Final = 32
# Calls of one key in flight at once, per process: one, so that everything
# that arrives meanwhile joins the next batch (two measured no faster: the
# batches only get smaller, and a tenant's batches wait for each other's
# budget locks anyway).
MAX_FLIGHTS: Final = 1

# The two arrays travel in binary (text[], cast to jsonb[] by the server):
# as text, every element of an array literal is escaped quote by quote,
# which cost the server more CPU than the rest of the batch's requests.
RESERVE_BATCH_SQL: Final = (
    "SELECT o_item, o_response::text, o_sqlstate, o_message, o_detail"
    " FROM cycles.reserve_batch(p_api_key => %(key)s, p_requests => %(requests)b::jsonb[],"
    " p_ctxs => %(ctxs)b::jsonb[])")

# A batch that failed with one of these (or without a SQLSTATE: the
# connection broke) is answered with that failure for every request in it, as
# each would have got alone: the database is away or busy (503 in
# app.errors). Any other failure rolled the batch back, so its requests are
# made again one by one, each getting exactly its own outcome.


def item_refusal(sqlstate: str, message: str | None, detail: str | None) -> ApiError:
    """The error a refused item of a batch answers with: exactly what
    app.errors makes of the same SQLSTATE and DETAIL raised by a single call."""
    refused = refusal(sqlstate, message, detail)
    if refused is None:
        logger.error("internal error: unknown SQLSTATE %s from a batch: %s", sqlstate, message)
        return ApiError(500, "INTERNAL_ERROR", "internal server error")
    return refused


def _fails_batch_wide(exc: psycopg.Error) -> bool:
    return exc.sqlstate is None or exc.sqlstate.startswith(UNAVAILABLE_SQLSTATES)


def _text(value: Any) -> str | None:
    """A text column (loaded as bytes by app.db) as str."""
    if value is None:
        return None
    return bytes(value).decode()


@dataclass
class _Item:
    sql: str  # the single call, made with params and the key
    params: dict[str, str]
    future: asyncio.Future[bytes]


@dataclass
class _Lane:
    """The calls of one key: how many are in flight, and who waits."""

    flights: int = 0
    waiting: deque[_Item] = field(default_factory=deque)


class Batcher:
    """Per-process group commit of one kind of call, keyed by API key secret
    (a key belongs to exactly one tenant). At most ``max_flights`` calls of
    one key are in flight at a time; whatever arrives meanwhile waits for the
    next. A batch is ``batch_sql`` with the key as %(key)s and, for each name
    in ``fields``, the items' params of that name as an array %(<name>s)s; it
    answers one row per item as cycles.reserve_batch does."""

    def __init__(self, database: Database, batch_sql: str, fields: Sequence[str], kind: str,
                 max_batch: int = MAX_BATCH, max_flights: int = MAX_FLIGHTS) -> None:
        self._database = database
        self._batch_sql = batch_sql
        self._fields = tuple(fields)
        self._kind = kind
        self._max_batch = max(1, min(max_batch, 64))
        self._max_flights = max(1, max_flights)
        self._lanes: dict[str, _Lane] = {}
        self._flights: set[asyncio.Task[None]] = set()

    async def call(self, api_key: str, sql: str, params: dict[str, str]) -> bytes:
        """The response body of the single call ``sql`` with these params and
        the key; a refusal or failure raises what the single call would
        (ApiError for a refusal decided inside a batch, psycopg.Error or
        PoolTimeout otherwise)."""
        lane = self._lanes.get(api_key)
        if lane is None:
            lane = self._lanes[api_key] = _Lane()
        if lane.flights < self._max_flights and not lane.waiting:
            lane.flights += 1
            try:
                return await self._single(api_key, sql, params)
            finally:
                # Also when this request was cancelled: the ones that queued
                # behind it are sent by a task of their own.
                lane.flights -= 1
                self._take_off(api_key, lane)
        item = _Item(sql, params, asyncio.get_running_loop().create_future())
        lane.waiting.append(item)
        return await item.future

    def _take_off(self, api_key: str, lane: _Lane) -> None:
        """After a flight: send what waits, as batches, while there is room."""
        while lane.waiting and lane.flights < self._max_flights:
            batch: list[_Item] = []
            while lane.waiting and len(batch) < self._max_batch:
                item = lane.waiting.popleft()
                if not item.future.done():  # its client went away while it waited
                    batch.append(item)
            if batch:
                lane.flights += 1
                task = asyncio.create_task(self._fly(api_key, lane, batch), name=f"cycles-{self._kind}-batch")
                self._flights.add(task)
                task.add_done_callback(self._flights.discard)
        if lane.flights == 0 and not lane.waiting:
            del self._lanes[api_key]

    async def _fly(self, api_key: str, lane: _Lane, batch: list[_Item]) -> None:
        try:
            await self._send(api_key, batch)
        finally:
            lane.flights -= 1
            self._take_off(api_key, lane)

    async def _single(self, api_key: str, sql: str, params: dict[str, str]) -> bytes:
        return await self._database.fetch_json(sql, {**params, "key": api_key})

    async def _send(self, api_key: str, batch: list[_Item]) -> None:
        """Resolves every item of the batch; never raises but for cancellation."""
        if len(batch) == 1:
            await self._one_by_one(api_key, batch)
            return
        try:
            rows = await self._fetch_batch(api_key, batch)
        except (psycopg.Error, PoolTimeout) as exc:
            if isinstance(exc, PoolTimeout) or _fails_batch_wide(exc):
                for item in batch:
                    _settle(item, exc=exc)
                return
            logger.warning("%s batch of %d failed (%s: %s); making its requests one by one",
                           self._kind, len(batch), exc.sqlstate, exc)
            await self._one_by_one(api_key, batch)
            return
        except asyncio.CancelledError:
            for item in batch:
                item.future.cancel()
            raise
        except Exception as exc:  # a bug: each request reports it as its own internal error
            for item in batch:
                _settle(item, exc=exc)
            return
        for item, row in zip(batch, rows, strict=True):
            response, sqlstate, message, detail = row[1], row[2], row[3], row[4]
            if response is not None:
                _settle(item, body=bytes(response))
            else:
                _settle(item, exc=item_refusal(_text(sqlstate) or "", _text(message), _text(detail)))

    async def _one_by_one(self, api_key: str, batch: list[_Item]) -> None:
        for item in batch:
            if item.future.done():
                continue
            try:
                body = await self._single(api_key, item.sql, item.params)
            except asyncio.CancelledError:
                item.future.cancel()
                raise
            except Exception as exc:
                _settle(item, exc=exc)
            else:
                _settle(item, body=body)

    async def _fetch_batch(self, api_key: str, batch: list[_Item]) -> list[tuple[Any, ...]]:
        params: dict[str, Any] = {f"{name}s": [item.params[name] for item in batch] for name in self._fields}
        params["key"] = api_key
        async with self._database.pool.connection(timeout=self._database.pool_timeout_s) as conn:
            cursor = await conn.execute(self._batch_sql, params)
            rows: list[tuple[Any, ...]] = await cursor.fetchall()
        if [row[0] for row in rows] != list(range(1, len(batch) + 1)):
            raise RuntimeError(f"the {self._kind} batch answered {len(rows)} rows for {len(batch)} requests")
        return rows

    async def aclose(self) -> None:
        """Lets batches in flight finish (their requests are being answered)."""
        while self._flights:
            await asyncio.gather(*self._flights, return_exceptions=True)


class ReserveBatcher(Batcher):
    """Per-process batcher of live reserves (cycles.reserve_batch)."""

    def __init__(self, database: Database, reserve_sql: str, max_batch: int = MAX_BATCH,
                 max_flights: int = MAX_FLIGHTS) -> None:
        super().__init__(database, RESERVE_BATCH_SQL, ("request", "ctx"), "reserve", max_batch, max_flights)
        self._reserve_sql = reserve_sql

    async def reserve(self, api_key: str, request: str, ctx: str) -> bytes:
        """The response body of cycles.reserve for this request (see Batcher.call)."""
        return await self.call(api_key, self._reserve_sql, {"request": request, "ctx": ctx})


def _settle(item: _Item, body: bytes | None = None, exc: BaseException | None = None) -> None:
    if item.future.done():
        return
    if exc is not None:
        item.future.set_exception(exc)
    else:
        assert body is not None
        item.future.set_result(body)
