"""Low-level clients: one method per runtime endpoint, never raising on an
HTTP status (the caller inspects the ``CyclesResponse``).

Bodies may be the request Structs of ``cycles_sdk.wire`` or plain dicts; a dict
is converted to the Struct first, so a malformed request fails locally with the
same message the server would give, before anything is sent. Every POST sends
``X-Idempotency-Key`` equal to the body's key.

These primitives do not retry or journal on their own: the ``@cycles``
decorator and ``stream_reservation`` own the full reserve-execute-commit
lifecycle and its recovery (see ``cycles_sdk.settlement``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from cycles_sdk.config import CyclesConfig
from cycles_sdk.journal import Journal
from cycles_sdk.response import CyclesResponse
from cycles_sdk.settlement import flush_journal, replay_journal
from cycles_sdk.streaming import AsyncStreamReservation, StreamReservation, StreamUsage
from cycles_sdk.wire import (
    SUBJECT_FIELDS,
    Action,
    Amount,
    CommitRequest,
    DecisionRequest,
    EventCreateRequest,
    ReleaseRequest,
    ReservationCreateRequest,
    ReservationExtendRequest,
    Subject,
)

S = TypeVar("S", bound=msgspec.Struct)
Body = msgspec.Struct | Mapping[str, Any]


def _as_struct(body: Body, kind: type[S]) -> S:
    if isinstance(body, kind):
        return body
    return msgspec.convert(body, kind)


def _encode(body: Body, kind: type[msgspec.Struct]) -> tuple[bytes, str]:
    request = _as_struct(body, kind)
    key: str = getattr(request, "idempotency_key")  # noqa: B009 (every request Struct has one)
    return msgspec.json.encode(request), key


def _response(raw: httpx.Response) -> CyclesResponse:
    try:
        body = msgspec.json.decode(raw.content) if raw.content else None
    except msgspec.DecodeError:
        body = None
    return CyclesResponse(raw.status_code, body, {k.lower(): v for k, v in raw.headers.items()})


def _query(filters: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in filters.items() if v is not None}


def _check_balance_filters(filters: Mapping[str, Any]) -> None:
    if not any(filters.get(name) for name in SUBJECT_FIELDS):
        raise ValueError("get_balances needs at least one subject filter: " + ", ".join(SUBJECT_FIELDS))


class _Base:
    def __init__(self, config: CyclesConfig) -> None:
        self._config = config
        self._journal: Journal | None = None
        self._journal_lock = threading.Lock()

    @property
    def config(self) -> CyclesConfig:
        return self._config

    @property
    def journal(self) -> Journal | None:
        """The on-disk settlement journal of this server and principal (None when disabled)."""
        if not self._config.journal_enabled:
            return None
        with self._journal_lock:
            if self._journal is None:
                self._journal = Journal.for_config(self._config)
            return self._journal

    def _headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"X-Cycles-API-Key": self._config.api_key, "Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["X-Idempotency-Key"] = idempotency_key
        return headers

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self._config.read_timeout, connect=self._config.connect_timeout)

    def default_subject(self) -> dict[str, str]:
        return {name: value for name in SUBJECT_FIELDS if (value := getattr(self._config, name))}


class CyclesClient(_Base):
    """Synchronous client. Use as a context manager or call ``close()``.

    ``transport`` is handed to httpx (useful to route through a proxy transport)."""

    def __init__(self, config: CyclesConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(config)
        self._http = httpx.Client(base_url=config.base_url, timeout=self._timeout(), transport=transport)

    def __enter__(self) -> CyclesClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, *, body: bytes | None = None, key: str | None = None,
              params: Mapping[str, str] | None = None) -> CyclesResponse:
        try:
            raw = self._http.request(method, path, content=body, headers=self._headers(key), params=params)
        except httpx.TransportError as error:
            return CyclesResponse(-1, transport_error=f"{type(error).__name__}: {error}")
        return _response(raw)

    def create_reservation(self, request: Body) -> CyclesResponse:
        body, key = _encode(request, ReservationCreateRequest)
        return self._send("POST", "/v1/reservations", body=body, key=key)

    def commit_reservation(self, reservation_id: str, request: Body) -> CyclesResponse:
        body, key = _encode(request, CommitRequest)
        return self._send("POST", f"/v1/reservations/{quote(reservation_id, safe='')}/commit", body=body, key=key)

    def release_reservation(self, reservation_id: str, request: Body) -> CyclesResponse:
        body, key = _encode(request, ReleaseRequest)
        return self._send("POST", f"/v1/reservations/{quote(reservation_id, safe='')}/release", body=body, key=key)

    def extend_reservation(self, reservation_id: str, request: Body) -> CyclesResponse:
        body, key = _encode(request, ReservationExtendRequest)
        return self._send("POST", f"/v1/reservations/{quote(reservation_id, safe='')}/extend", body=body, key=key)

    def decide(self, request: Body) -> CyclesResponse:
        body, key = _encode(request, DecisionRequest)
        return self._send("POST", "/v1/decide", body=body, key=key)

    def create_event(self, request: Body) -> CyclesResponse:
        body, key = _encode(request, EventCreateRequest)
        return self._send("POST", "/v1/events", body=body, key=key)

    def get_reservation(self, reservation_id: str) -> CyclesResponse:
        return self._send("GET", f"/v1/reservations/{quote(reservation_id, safe='')}")

    def list_reservations(self, **filters: Any) -> CyclesResponse:
        return self._send("GET", "/v1/reservations", params=_query(filters))

    def get_balances(self, **filters: Any) -> CyclesResponse:
        _check_balance_filters(filters)
        return self._send("GET", "/v1/balances", params=_query(filters))

    # --- lifecycle helpers ---------------------------------------------------

    def replay_journal(self) -> int:
        """Settle every journaled settlement now (one pass). Returns how many are left."""
        return replay_journal(self)

    def flush(self, timeout: float | None = None) -> int:
        """Replay the journal until it is empty or ``timeout`` seconds (default
        ``retry_flush_timeout``) have passed; unresolved records stay on disk.
        Returns how many are left."""
        return flush_journal(self, self._config.retry_flush_timeout if timeout is None else timeout)

    def stream_reservation(
        self, *, action: Action | Mapping[str, Any], estimate: Amount | Mapping[str, Any] | int,
        subject: Subject | Mapping[str, Any] | None = None, unit: str = "USD_MICROCENTS", ttl_ms: int = 120_000,
        grace_period_ms: int | None = None, overage_policy: str = "ALLOW_IF_AVAILABLE",
        cost_fn: Callable[[StreamUsage], int] | None = None, metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None, raise_on_commit_failure: bool = False,
    ) -> StreamReservation:
        """A context manager that reserves on enter, heartbeats, and commits the
        streamed usage on a clean exit (releases if the body raised)."""
        return StreamReservation(
            self, action=action, estimate=estimate, subject=subject, unit=unit, ttl_ms=ttl_ms,
            grace_period_ms=grace_period_ms, overage_policy=overage_policy, cost_fn=cost_fn,
            metadata=metadata, idempotency_key=idempotency_key, raise_on_commit_failure=raise_on_commit_failure)


class AsyncCyclesClient(_Base):
    """Asynchronous client. Use with ``async with`` or call ``aclose()``."""

    def __init__(self, config: CyclesConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(config)
        self._http = httpx.AsyncClient(base_url=config.base_url, timeout=self._timeout(), transport=transport)

    async def __aenter__(self) -> AsyncCyclesClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def flush(self, timeout: float | None = None) -> int:
        """:meth:`CyclesClient.flush` without blocking the event loop (the
        replay runs in a worker thread on a synchronous client of its own)."""
        def replay() -> int:
            with CyclesClient(self._config) as client:
                return client.flush(timeout)

        return await asyncio.to_thread(replay)

    async def _send(self, method: str, path: str, *, body: bytes | None = None, key: str | None = None,
                    params: Mapping[str, str] | None = None) -> CyclesResponse:
        try:
            raw = await self._http.request(method, path, content=body, headers=self._headers(key), params=params)
        except httpx.TransportError as error:
            return CyclesResponse(-1, transport_error=f"{type(error).__name__}: {error}")
        return _response(raw)

    async def create_reservation(self, request: Body) -> CyclesResponse:
        body, key = _encode(request, ReservationCreateRequest)
        return await self._send("POST", "/v1/reservations", body=body, key=key)

    async def commit_reservation(self, reservation_id: str, request: Body) -> CyclesResponse:
        body, key = _encode(request, CommitRequest)
        return await self._send(
            "POST", f"/v1/reservations/{quote(reservation_id, safe='')}/commit", body=body, key=key)

    async def release_reservation(self, reservation_id: str, request: Body) -> CyclesResponse:
        body, key = _encode(request, ReleaseRequest)
        return await self._send(
            "POST", f"/v1/reservations/{quote(reservation_id, safe='')}/release", body=body, key=key)

    async def extend_reservation(self, reservation_id: str, request: Body) -> CyclesResponse:
        body, key = _encode(request, ReservationExtendRequest)
        return await self._send(
            "POST", f"/v1/reservations/{quote(reservation_id, safe='')}/extend", body=body, key=key)

    async def decide(self, request: Body) -> CyclesResponse:
        body, key = _encode(request, DecisionRequest)
        return await self._send("POST", "/v1/decide", body=body, key=key)

    async def create_event(self, request: Body) -> CyclesResponse:
        body, key = _encode(request, EventCreateRequest)
        return await self._send("POST", "/v1/events", body=body, key=key)

    async def get_reservation(self, reservation_id: str) -> CyclesResponse:
        return await self._send("GET", f"/v1/reservations/{quote(reservation_id, safe='')}")

    async def list_reservations(self, **filters: Any) -> CyclesResponse:
        return await self._send("GET", "/v1/reservations", params=_query(filters))

    async def get_balances(self, **filters: Any) -> CyclesResponse:
        _check_balance_filters(filters)
        return await self._send("GET", "/v1/balances", params=_query(filters))

    def stream_reservation(
        self, *, action: Action | Mapping[str, Any], estimate: Amount | Mapping[str, Any] | int,
        subject: Subject | Mapping[str, Any] | None = None, unit: str = "USD_MICROCENTS", ttl_ms: int = 120_000,
        grace_period_ms: int | None = None, overage_policy: str = "ALLOW_IF_AVAILABLE",
        cost_fn: Callable[[StreamUsage], int] | None = None, metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None, raise_on_commit_failure: bool = False,
    ) -> AsyncStreamReservation:
        """The ``async with`` form of :meth:`CyclesClient.stream_reservation`."""
        return AsyncStreamReservation(
            self, action=action, estimate=estimate, subject=subject, unit=unit, ttl_ms=ttl_ms,
            grace_period_ms=grace_period_ms, overage_policy=overage_policy, cost_fn=cost_fn,
            metadata=metadata, idempotency_key=idempotency_key, raise_on_commit_failure=raise_on_commit_failure)
