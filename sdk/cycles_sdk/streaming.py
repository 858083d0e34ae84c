"""``stream_reservation``: a reservation around streamed output.

Entering reserves (a denial raises the typed exception) and starts the
heartbeat; the body accumulates usage on ``stream.usage``. A clean exit
settles ``usage.actual_cost``, else ``cost_fn(usage)``, else the estimate,
through the journaled settlement path; an exception in the body releases the
reservation (reason ``stream_failed``) and propagates.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET

from cycles_sdk.context import CyclesContext
from cycles_sdk.exceptions import CyclesProtocolError
from cycles_sdk.heartbeat import TaskHeartbeat, ThreadHeartbeat
from cycles_sdk.lifecycle import release, release_async, reserve, reserve_async, settlement_record
from cycles_sdk.settlement import Outcome, settle, settle_async, start_background_replay
from cycles_sdk.wire import (
    Action,
    Amount,
    Caps,
    ReservationCreateRequest,
    ReservationCreateResponse,
    Subject,
)

if TYPE_CHECKING:
    from cycles_sdk.client import AsyncCyclesClient, CyclesClient
    from cycles_sdk.journal import JournalRecord


@dataclass
class StreamUsage:
    tokens_input: int = 0
    tokens_output: int = 0
    actual_cost: int | None = None
    model_version: str | None = None
    custom: dict[str, Any] | None = None

    def add_input_tokens(self, count: int) -> None:
        self.tokens_input += count

    def add_output_tokens(self, count: int) -> None:
        self.tokens_output += count

    def set_actual_cost(self, amount: int) -> None:
        self.actual_cost = amount


class _StreamBase:
    def __init__(
        self, client: CyclesClient | AsyncCyclesClient, *, action: Action | Mapping[str, Any],
        estimate: Amount | Mapping[str, Any] | int, subject: Subject | Mapping[str, Any] | None, unit: str,
        ttl_ms: int, grace_period_ms: int | None, overage_policy: str,
        cost_fn: Callable[[StreamUsage], int] | None, metadata: dict[str, Any] | None,
        idempotency_key: str | None, raise_on_commit_failure: bool,
    ) -> None:
        if isinstance(estimate, int):
            estimate = {"unit": unit, "amount": estimate}
        body: dict[str, Any] = {
            "idempotency_key": idempotency_key or str(uuid.uuid4()),
            "subject": subject if subject is not None else client.default_subject(),
            "action": action, "estimate": estimate, "ttl_ms": ttl_ms, "overage_policy": overage_policy,
        }
        if grace_period_ms is not None:
            body["grace_period_ms"] = grace_period_ms
        self._request = msgspec.convert(
            {k: msgspec.to_builtins(v) if isinstance(v, msgspec.Struct) else v for k, v in body.items()},
            ReservationCreateRequest)
        self._ttl_ms = ttl_ms
        self._cost_fn = cost_fn
        self._metadata = metadata
        self._raise_on_commit_failure = raise_on_commit_failure
        self._context: CyclesContext | None = None
        self._started = 0.0
        self.usage = StreamUsage()
        self.settlement: Outcome | None = None
        self.release_error: CyclesProtocolError | None = None

    def _enter(self, answer: ReservationCreateResponse) -> CyclesContext:
        self._context = CyclesContext(
            reservation_id=str(answer.reservation_id), estimate=self._request.estimate.amount,
            decision=answer.decision, caps=None if answer.caps is UNSET else answer.caps,
            expires_at_ms=None if answer.expires_at_ms is UNSET else answer.expires_at_ms,
            affected_scopes=answer.affected_scopes)
        self._started = time.monotonic()
        return self._context

    @property
    def context(self) -> CyclesContext:
        if self._context is None:
            raise RuntimeError("the stream reservation has not been entered")
        return self._context

    @property
    def reservation_id(self) -> str:
        return self.context.reservation_id

    @property
    def decision(self) -> str:
        return self.context.decision

    @property
    def caps(self) -> Caps | None:
        return self.context.caps

    @property
    def settlement_error(self) -> CyclesProtocolError | None:
        if self.settlement is None or self.settlement.settled:
            return None
        return self.settlement.step.error or CyclesProtocolError("settlement unresolved")

    def _record(self) -> JournalRecord:
        usage = self.usage
        if usage.actual_cost is not None:
            actual = usage.actual_cost
        elif self._cost_fn is not None:
            actual = self._cost_fn(usage)
        else:
            actual = self._request.estimate.amount
        metrics: dict[str, Any] = {"latency_ms": int((time.monotonic() - self._started) * 1000)}
        if usage.tokens_input:
            metrics["tokens_input"] = usage.tokens_input
        if usage.tokens_output:
            metrics["tokens_output"] = usage.tokens_output
        if usage.model_version:
            metrics["model_version"] = usage.model_version
        if usage.custom:
            metrics["custom"] = usage.custom
        metadata = {**(self._metadata or {}), **(self.context.commit_metadata or {})}
        return settlement_record(self._request, self.reservation_id, actual, metrics, metadata or None)

    def _check(self) -> None:
        if self._raise_on_commit_failure and self.settlement_error is not None:
            raise self.settlement_error


class StreamReservation(_StreamBase):
    _client: CyclesClient

    def __init__(self, client: CyclesClient, **options: Any) -> None:
        super().__init__(client, **options)
        self._client = client
        self._heartbeat: ThreadHeartbeat | None = None

    def __enter__(self) -> StreamReservation:
        start_background_replay(self._client.config)
        answer = reserve(self._client, self._request)
        context = self._enter(answer)
        remaining = answer.remaining_ttl_ms if isinstance(answer.remaining_ttl_ms, int) else None
        self._heartbeat = ThreadHeartbeat(self._client, context, self._ttl_ms, remaining).start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if error is not None:
            self.release_error = release(self._client, self.reservation_id, "stream_failed")
            return
        self.settlement = settle(self._client, self._record())
        self._check()


class AsyncStreamReservation(_StreamBase):
    _client: AsyncCyclesClient

    def __init__(self, client: AsyncCyclesClient, **options: Any) -> None:
        super().__init__(client, **options)
        self._client = client
        self._heartbeat: TaskHeartbeat | None = None

    async def __aenter__(self) -> AsyncStreamReservation:
        start_background_replay(self._client.config)
        answer = await reserve_async(self._client, self._request)
        context = self._enter(answer)
        remaining = answer.remaining_ttl_ms if isinstance(answer.remaining_ttl_ms, int) else None
        self._heartbeat = TaskHeartbeat(self._client, context, self._ttl_ms, remaining).start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        _tb: object) -> None:
        if self._heartbeat is not None:
            await self._heartbeat.stop()
        if error is not None:
            self.release_error = await release_async(self._client, self.reservation_id, "stream_failed")
            return
        self.settlement = await settle_async(self._client, self._record())
        self._check()
