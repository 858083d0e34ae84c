"""Reserve and release with same-key retries, shared by the decorator and
the stream helpers (sync and async)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from cycles_sdk.exceptions import ERROR_CLASSES, CyclesProtocolError
from cycles_sdk.journal import JournalRecord
from cycles_sdk.response import CyclesResponse
from cycles_sdk.settlement import new_record
from cycles_sdk.wire import Balance, Caps, ReleaseRequest, ReservationCreateRequest, ReservationCreateResponse

if TYPE_CHECKING:
    from cycles_sdk.client import AsyncCyclesClient, CyclesClient
    from cycles_sdk.config import CyclesConfig

log = logging.getLogger("cycles_sdk.lifecycle")


@dataclass(frozen=True)
class DryRunResult:
    """What a dry run would have decided; the guarded function did not run."""

    decision: str
    caps: Caps | None
    affected_scopes: list[str]
    scope_path: str | None
    reserved: int | None
    balances: list[Balance] | None
    reason_code: str | None
    retry_after_ms: int | None


def _transient(response: CyclesResponse) -> bool:
    return (response.is_transport_error or response.is_server_error or response.is_success
            or response.status == 429 or response.error_code == "LIMIT_EXCEEDED")


def _reserve_step(request: ReservationCreateRequest, response: CyclesResponse) -> ReservationCreateResponse | None:
    """The schema-valid answer, None when it is worth retrying, or raises the typed error."""
    if response.status == 200:
        answer = response.decode(ReservationCreateResponse)
        if answer is not None:
            if answer.decision == "DENY" and request.dry_run is not True:
                code = answer.reason_code if isinstance(answer.reason_code, str) else "BUDGET_EXCEEDED"
                kind = ERROR_CLASSES.get(code, CyclesProtocolError)
                raise kind("reservation denied", status=200, error_code=code, reason_code=code,
                           retry_after_ms=answer.retry_after_ms if isinstance(answer.retry_after_ms, int) else None,
                           request_id=response.request_id)
            if request.dry_run is True or isinstance(answer.reservation_id, str):
                return answer
    if _transient(response):
        return None
    raise response.to_error()


def _retry_wait(config: CyclesConfig, response: CyclesResponse, attempt: int) -> float:
    after = response.retry_after_ms if response.status == 429 else None
    return after / 1000 if after is not None else config.retry_delay(attempt)


def _give_up(response: CyclesResponse) -> CyclesProtocolError:
    return response.to_error("Create reservation did not produce a schema-valid HTTP 200 response"
                             f" ({response.error_message or 'HTTP ' + str(response.status)})")


def reserve(client: CyclesClient, request: ReservationCreateRequest) -> ReservationCreateResponse:
    config = client.config
    for attempt in range(config.attempts):
        response = client.create_reservation(request)
        answer = _reserve_step(request, response)
        if answer is not None:
            return answer
        if attempt + 1 < config.attempts:
            time.sleep(_retry_wait(config, response, attempt))
    raise _give_up(response)


async def reserve_async(client: AsyncCyclesClient, request: ReservationCreateRequest) -> ReservationCreateResponse:
    config = client.config
    for attempt in range(config.attempts):
        response = await client.create_reservation(request)
        answer = _reserve_step(request, response)
        if answer is not None:
            return answer
        if attempt + 1 < config.attempts:
            await asyncio.sleep(_retry_wait(config, response, attempt))
    raise _give_up(response)


def release(client: CyclesClient, reservation_id: str, reason: str) -> CyclesProtocolError | None:
    """Best effort (the error is returned, never raised over the caller's own exception)."""
    request = ReleaseRequest(idempotency_key=str(uuid.uuid4()), reason=reason)
    config = client.config
    for attempt in range(config.attempts):
        response = client.release_reservation(reservation_id, request)
        if response.status == 200:
            return None
        if not _transient(response):
            break
        if attempt + 1 < config.attempts:
            time.sleep(_retry_wait(config, response, attempt))
    error = response.to_error(f"release of {reservation_id} failed")
    log.warning("cycles release of %s failed: %s", reservation_id, error)
    return error


async def release_async(client: AsyncCyclesClient, reservation_id: str, reason: str) -> CyclesProtocolError | None:
    request = ReleaseRequest(idempotency_key=str(uuid.uuid4()), reason=reason)
    config = client.config
    for attempt in range(config.attempts):
        response = await client.release_reservation(reservation_id, request)
        if response.status == 200:
            return None
        if not _transient(response):
            break
        if attempt + 1 < config.attempts:
            await asyncio.sleep(_retry_wait(config, response, attempt))
    error = response.to_error(f"release of {reservation_id} failed")
    log.warning("cycles release of %s failed: %s", reservation_id, error)
    return error


def settlement_record(
    request: ReservationCreateRequest, reservation_id: str, actual: int,
    metrics: dict[str, Any] | None, metadata: dict[str, Any] | None,
) -> JournalRecord:
    """The commit, and the event that replaces it if the reservation expired,
    sharing one idempotency key."""
    key = str(uuid.uuid4())
    amount = {"unit": request.estimate.unit, "amount": actual}
    commit: dict[str, Any] = {"idempotency_key": key, "actual": amount}
    if metrics:
        commit["metrics"] = metrics
    if metadata:
        commit["metadata"] = metadata
    event: dict[str, Any] = {
        "idempotency_key": key,
        "subject": msgspec.to_builtins(request.subject),
        "action": msgspec.to_builtins(request.action),
        "actual": amount,
        "metadata": {**(metadata or {}), "recovered_reservation_id": reservation_id,
                     "recovery_reason": "commit_after_reservation_expired"},
    }
    if metrics:
        event["metrics"] = metrics
    return new_record(reservation_id, commit, event)


def dry_run_result(answer: ReservationCreateResponse) -> DryRunResult:
    def given(value: Any) -> Any:
        return None if value is msgspec.UNSET else value

    reserved = given(answer.reserved)
    return DryRunResult(
        decision=answer.decision, caps=given(answer.caps), affected_scopes=answer.affected_scopes,
        scope_path=given(answer.scope_path), reserved=None if reserved is None else reserved.amount,
        balances=given(answer.balances), reason_code=given(answer.reason_code),
        retry_after_ms=given(answer.retry_after_ms))
