"""Lease heartbeat: extend the reservation before it expires while work runs.

Policy ``warn``: every failure is appended to ``CyclesContext.heartbeat_failures``
and logged with the reservation id and disposition; transient failures
(transport, 5xx, 429, malformed 2xx) retry the same extend with the same
idempotency key; a terminal answer (404, 410, RESERVATION_FINALIZED,
MAX_EXTENSIONS_EXCEEDED, TENANT_CLOSED, any other understood 4xx) stops the
heartbeat. Heartbeat failure never cancels the work and never suppresses the
final settlement.

Scheduling: the next beat is due at ``remaining_ttl_ms`` (from the last
reserve/extend answer, else derived from ``expires_at_ms``) minus a safety
margin of three round trips, and never later than half the remaining lease, so a
lost beat still leaves half the lease to retry in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Literal

from cycles_sdk.context import CyclesContext, HeartbeatFailure
from cycles_sdk.journal import now_ms
from cycles_sdk.response import CyclesResponse
from cycles_sdk.wire import ReservationExtendRequest, ReservationExtendResponse

if TYPE_CHECKING:
    from cycles_sdk.client import AsyncCyclesClient, CyclesClient

log = logging.getLogger("cycles_sdk.heartbeat")

MIN_DELAY_MS = 50


def next_delay_ms(remaining_ms: int, rtt_ms: int) -> int:
    return max(MIN_DELAY_MS, min(remaining_ms // 2, remaining_ms - 3 * rtt_ms))


def _retry_delay_ms(remaining_ms: int) -> int:
    return max(MIN_DELAY_MS, min(1000, remaining_ms // 4))


class _Beat:
    """The decision logic shared by the thread and task forms."""

    def __init__(self, context: CyclesContext, ttl_ms: int, remaining_ms: int | None) -> None:
        self.context = context
        self.ttl_ms = ttl_ms
        self.remaining_ms = remaining_ms if remaining_ms is not None else self._derived_remaining()
        self.rtt_ms = 0
        self.key = str(uuid.uuid4())
        self.stopped = False

    def _derived_remaining(self) -> int:
        if self.context.expires_at_ms is None:
            return self.ttl_ms
        return max(0, self.context.expires_at_ms - now_ms())

    def request(self) -> ReservationExtendRequest:
        return ReservationExtendRequest(idempotency_key=self.key, extend_by_ms=self.ttl_ms)

    def handle(self, response: CyclesResponse, rtt_ms: int) -> int | None:
        """Digest one extend answer; the delay before the next request, or None to stop."""
        self.rtt_ms = rtt_ms
        rid = self.context.reservation_id
        extended = response.decode(ReservationExtendResponse) if response.status == 200 else None
        if extended is not None:
            self.context.update_expires_at_ms(extended.expires_at_ms)
            remaining = extended.remaining_ttl_ms
            self.remaining_ms = remaining if isinstance(remaining, int) else self._derived_remaining()
            self.key = str(uuid.uuid4())  # the next beat is a new extension
            return next_delay_ms(self.remaining_ms, rtt_ms)
        transient = (response.is_transport_error or response.is_server_error or response.is_success
                     or response.status == 429 or response.error_code == "LIMIT_EXCEEDED")
        disposition: Literal["retrying", "stopped"] = "retrying" if transient else "stopped"
        why = response.error_message or f"HTTP {response.status}"
        if response.is_success:
            why = f"schema-invalid extend answer (HTTP {response.status})"
        self.context.heartbeat_failures.append(HeartbeatFailure(rid, why, disposition))
        log.warning("cycles heartbeat for reservation %s failed (%s): %s", rid, disposition, why)
        if not transient:
            return None
        self.remaining_ms = self._derived_remaining()
        wait = response.retry_after_ms if response.status == 429 else None
        return wait if wait is not None else _retry_delay_ms(self.remaining_ms)


class ThreadHeartbeat:
    def __init__(self, client: CyclesClient, context: CyclesContext, ttl_ms: int, remaining_ms: int | None) -> None:
        self._client = client
        self._beat = _Beat(context, ttl_ms, remaining_ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cycles-heartbeat", daemon=True)

    def start(self) -> ThreadHeartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._client.config.read_timeout + self._client.config.connect_timeout + 1)

    def _run(self) -> None:
        delay: int | None = next_delay_ms(self._beat.remaining_ms, 0)
        while delay is not None and not self._stop.wait(delay / 1000):
            started = time.monotonic()
            response = self._client.extend_reservation(self._beat.context.reservation_id, self._beat.request())
            if self._stop.is_set():
                return
            delay = self._beat.handle(response, int((time.monotonic() - started) * 1000))


class TaskHeartbeat:
    """The asyncio form. Stopping never cancels an extend in flight (that would
    cut the request off mid-body); it wakes the task from its sleep and waits
    for a request already under way, bounded by the client's timeouts."""

    def __init__(self, client: AsyncCyclesClient, context: CyclesContext, ttl_ms: int,
                 remaining_ms: int | None) -> None:
        self._client = client
        self._beat = _Beat(context, ttl_ms, remaining_ms)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> TaskHeartbeat:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            config = self._client.config
            try:
                await asyncio.wait_for(asyncio.shield(self._task), config.connect_timeout + config.read_timeout + 1)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def _run(self) -> None:
        delay: int | None = next_delay_ms(self._beat.remaining_ms, 0)
        while delay is not None:
            try:
                await asyncio.wait_for(self._stop.wait(), delay / 1000)
                return  # stopped while sleeping
            except TimeoutError:
                pass
            started = time.monotonic()
            response = await self._client.extend_reservation(self._beat.context.reservation_id, self._beat.request())
            if self._stop.is_set():
                return
            delay = self._beat.handle(response, int((time.monotonic() - started) * 1000))
