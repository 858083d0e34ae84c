"""``@cycles``: reserve before the call, heartbeat during it, commit after it.

- Denied reservation: the typed exception is raised and the function never runs.
- ``dry_run=True``: the function does not run; a ``DryRunResult`` is returned.
- The function raises: the reservation is released and the exception re-raised.
- The function returns: the actual (``actual`` or, if allowed, the estimate)
  is settled through ``cycles_sdk.settlement`` (journal, same-key retries,
  event fallback). A reservation is never released after the work ran.
- No actual is known after the work ran (``actual`` raised or returned None
  and the estimate may not stand in): nothing is settled, ``MissingActualError``
  is raised and the reservation is left to expire.

Works on plain and ``async def`` functions; the wrapper has the same
signature for type checkers (ParamSpec).
"""

from __future__ import annotations

import functools
import inspect
import time
import uuid
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

import msgspec
from msgspec import UNSET

from cycles_sdk.client import AsyncCyclesClient, CyclesClient
from cycles_sdk.config import CyclesConfig
from cycles_sdk.context import CyclesContext, CyclesMetrics, _current
from cycles_sdk.exceptions import MissingActualError
from cycles_sdk.heartbeat import TaskHeartbeat, ThreadHeartbeat
from cycles_sdk.lifecycle import (
    dry_run_result,
    release,
    release_async,
    reserve,
    reserve_async,
    settlement_record,
)
from cycles_sdk.settlement import settle, settle_async, start_background_replay
from cycles_sdk.wire import SUBJECT_FIELDS, ReservationCreateRequest, ReservationCreateResponse

P = ParamSpec("P")
R = TypeVar("R")

_default_client: CyclesClient | AsyncCyclesClient | None = None
_default_config: CyclesConfig | None = None
_lazy_clients: dict[bool, CyclesClient | AsyncCyclesClient] = {}


def set_default_client(client: CyclesClient | AsyncCyclesClient | None) -> None:
    global _default_client
    _default_client = client


def set_default_config(config: CyclesConfig | None) -> None:
    """Clients for ``@cycles`` without ``client=`` are then created from it on first use."""
    global _default_config
    _default_config = config
    _lazy_clients.clear()


def _resolve_client(explicit: CyclesClient | AsyncCyclesClient | None, is_async: bool) -> Any:
    client = explicit or _default_client
    if client is None:
        if _default_config is None:
            raise ValueError("no Cycles client: pass client=, or call set_default_client or set_default_config")
        if is_async not in _lazy_clients:
            _lazy_clients[is_async] = AsyncCyclesClient(_default_config) if is_async \
                else CyclesClient(_default_config)
        client = _lazy_clients[is_async]
    if is_async and not isinstance(client, AsyncCyclesClient):
        raise TypeError("an async function needs an AsyncCyclesClient")
    if not is_async and not isinstance(client, CyclesClient):
        raise TypeError("a sync function needs a CyclesClient")
    return client


def _value(spec: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return spec(*args, **kwargs) if callable(spec) else spec


class _Guard:
    """Everything the decorator was given, resolved per call."""

    def __init__(self, function: Callable[..., Any], settings: dict[str, Any]) -> None:
        self.function = function
        self.s = settings
        if settings["actual"] is None and not settings["use_estimate_if_actual_not_provided"]:
            raise ValueError("actual is required when use_estimate_if_actual_not_provided is False")

    def request(self, client: CyclesClient | AsyncCyclesClient, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> ReservationCreateRequest:
        s = self.s
        defaults = client.default_subject()
        subject: dict[str, Any] = {}
        for name in SUBJECT_FIELDS:
            value = _value(s[name], args, kwargs) or defaults.get(name)
            if value:
                subject[name] = value
        dimensions = _value(s["dimensions"], args, kwargs)
        if dimensions:
            subject["dimensions"] = dimensions
        action: dict[str, Any] = {
            "kind": _value(s["action_kind"], args, kwargs) or "unknown",
            "name": _value(s["action_name"], args, kwargs) or self.function.__qualname__,
        }
        tags = _value(s["action_tags"], args, kwargs)
        if tags:
            action["tags"] = list(tags)
        body: dict[str, Any] = {
            "idempotency_key": str(uuid.uuid4()), "subject": subject, "action": action,
            "estimate": {"unit": s["unit"], "amount": _value(s["estimate"], args, kwargs)},
            "ttl_ms": s["ttl_ms"], "overage_policy": s["overage_policy"],
        }
        if s["grace_period_ms"] is not None:
            body["grace_period_ms"] = s["grace_period_ms"]
        if s["dry_run"]:
            body["dry_run"] = True
        return msgspec.convert(body, ReservationCreateRequest)

    def context(self, request: ReservationCreateRequest, answer: ReservationCreateResponse) -> CyclesContext:
        def given(value: Any) -> Any:
            return None if value is UNSET else value

        return CyclesContext(
            reservation_id=cast(str, answer.reservation_id), estimate=request.estimate.amount,
            decision=answer.decision, caps=given(answer.caps), expires_at_ms=given(answer.expires_at_ms),
            affected_scopes=answer.affected_scopes, scope_path=given(answer.scope_path),
            reserved=given(answer.reserved), balances=given(answer.balances))

    def actual(self, request: ReservationCreateRequest, result: Any) -> tuple[int, bool]:
        """The amount to settle, and whether it is the estimate standing in."""
        spec = self.s["actual"]
        try:
            value = spec(result) if callable(spec) else spec
        except Exception as error:
            raise MissingActualError(f"the actual amount could not be computed: {error!r}") from error
        if value is None:
            if not self.s["use_estimate_if_actual_not_provided"]:
                raise MissingActualError("the guarded work ran but returned no actual amount")
            return request.estimate.amount, True
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MissingActualError(f"the actual amount must be a non-negative integer, got {value!r}")
        return value, False

    def record(self, request: ReservationCreateRequest, context: CyclesContext, actual: int,
               latency_ms: int, estimated: bool) -> Any:
        metrics = (context.metrics or CyclesMetrics()).as_wire()
        metrics.setdefault("latency_ms", latency_ms)
        metadata = dict(context.commit_metadata or {})
        if estimated:
            metadata.setdefault("actual_source", "estimate")
        return settlement_record(request, context.reservation_id, actual, metrics, metadata or None)


def cycles(
    estimate: int | Callable[..., int],
    *,
    actual: int | Callable[[Any], int | None] | None = None,
    action_kind: str | Callable[..., str | None] | None = None,
    action_name: str | Callable[..., str | None] | None = None,
    action_tags: list[str] | Callable[..., list[str] | None] | None = None,
    unit: str = "USD_MICROCENTS",
    ttl_ms: int = 60_000,
    grace_period_ms: int | None = None,
    overage_policy: str = "ALLOW_IF_AVAILABLE",
    dry_run: bool = False,
    tenant: str | Callable[..., str | None] | None = None,
    workspace: str | Callable[..., str | None] | None = None,
    app: str | Callable[..., str | None] | None = None,
    workflow: str | Callable[..., str | None] | None = None,
    agent: str | Callable[..., str | None] | None = None,
    toolset: str | Callable[..., str | None] | None = None,
    dimensions: dict[str, str] | Callable[..., dict[str, str] | None] | None = None,
    client: CyclesClient | AsyncCyclesClient | None = None,
    use_estimate_if_actual_not_provided: bool = True,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Guard a function with a Cycles reservation (see the module docstring).

    ``estimate`` and the subject/action fields may be callables taking the
    function's arguments; ``actual`` may be a callable taking its result.
    With ``dry_run=True`` the call returns a ``DryRunResult`` instead of R.
    """
    settings = dict(locals())

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        guard = _Guard(function, settings)
        if inspect.iscoroutinefunction(function):
            return cast(Callable[P, R], _async_wrapper(guard, function))
        return _sync_wrapper(guard, function)

    return decorate


def _sync_wrapper(guard: _Guard, function: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        client: CyclesClient = _resolve_client(guard.s["client"], False)
        start_background_replay(client.config)
        request = guard.request(client, args, kwargs)
        answer = reserve(client, request)
        if request.dry_run is True:
            return cast(R, dry_run_result(answer))
        context = guard.context(request, answer)
        token = _current.set(context)
        remaining = answer.remaining_ttl_ms if isinstance(answer.remaining_ttl_ms, int) else None
        heartbeat = ThreadHeartbeat(client, context, guard.s["ttl_ms"], remaining).start()
        started = time.monotonic()
        try:
            result = function(*args, **kwargs)
        except BaseException:
            heartbeat.stop()
            _current.reset(token)
            release(client, context.reservation_id, "guarded_method_failed")
            raise
        latency_ms = int((time.monotonic() - started) * 1000)
        heartbeat.stop()
        _current.reset(token)
        amount, estimated = guard.actual(request, result)
        settle(client, guard.record(request, context, amount, latency_ms, estimated))
        return result

    return wrapper


def _async_wrapper(guard: _Guard, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        client: AsyncCyclesClient = _resolve_client(guard.s["client"], True)
        start_background_replay(client.config)
        request = guard.request(client, args, kwargs)
        answer = await reserve_async(client, request)
        if request.dry_run is True:
            return dry_run_result(answer)
        context = guard.context(request, answer)
        token = _current.set(context)
        remaining = answer.remaining_ttl_ms if isinstance(answer.remaining_ttl_ms, int) else None
        heartbeat = TaskHeartbeat(client, context, guard.s["ttl_ms"], remaining).start()
        started = time.monotonic()
        try:
            result = await function(*args, **kwargs)
        except BaseException:
            await heartbeat.stop()
            _current.reset(token)
            await release_async(client, context.reservation_id, "guarded_method_failed")
            raise
        latency_ms = int((time.monotonic() - started) * 1000)
        await heartbeat.stop()
        _current.reset(token)
        amount, estimated = guard.actual(request, result)
        await settle_async(client, guard.record(request, context, amount, latency_ms, estimated))
        return result

    return wrapper


def stream_reservation(*, client: CyclesClient | AsyncCyclesClient | None = None, **options: Any) -> Any:
    """``client.stream_reservation(**options)`` on the given or default client:
    a ``StreamReservation`` for a ``CyclesClient`` (``with``), an
    ``AsyncStreamReservation`` for an ``AsyncCyclesClient`` (``async with``)."""
    chosen = client or _default_client
    if chosen is None:
        chosen = _resolve_client(None, False)
    return chosen.stream_reservation(**options)
