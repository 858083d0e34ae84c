"""The reservation context a guarded function can read and annotate."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from cycles_sdk.wire import Balance, Caps, ResponseAmount


@dataclass
class CyclesMetrics:
    """Usage the function reports; sent as the commit's ``metrics``."""

    tokens_input: int | None = None
    tokens_output: int | None = None
    latency_ms: int | None = None
    model_version: str | None = None
    custom: dict[str, Any] | None = None

    def as_wire(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class HeartbeatFailure:
    """One failed extend: which reservation, what went wrong, and whether the
    heartbeat keeps trying (``retrying``) or gave up (``stopped``)."""

    reservation_id: str
    error: str
    disposition: Literal["retrying", "stopped"]


@dataclass
class CyclesContext:
    """State of the active reservation (a ContextVar: thread- and task-safe).

    Read: ``reservation_id``, ``estimate``, ``decision``, ``caps``,
    ``expires_at_ms`` (kept current by the heartbeat), ``affected_scopes``,
    ``scope_path``, ``reserved``, ``balances``, ``heartbeat_failures``.
    Write: ``metrics`` and ``commit_metadata`` (sent with the commit)."""

    reservation_id: str
    estimate: int
    decision: str
    caps: Caps | None = None
    expires_at_ms: int | None = None
    affected_scopes: list[str] | None = None
    scope_path: str | None = None
    reserved: ResponseAmount | None = None
    balances: list[Balance] | None = None
    metrics: CyclesMetrics | None = None
    commit_metadata: dict[str, Any] | None = None
    heartbeat_failures: list[HeartbeatFailure] = field(default_factory=list)

    def has_caps(self) -> bool:
        return self.caps is not None

    def update_expires_at_ms(self, expires_at_ms: int) -> None:
        self.expires_at_ms = expires_at_ms


_current: ContextVar[CyclesContext | None] = ContextVar("cycles_sdk_context", default=None)


def get_cycles_context() -> CyclesContext | None:
    """The context of the innermost guarded call, or None outside one."""
    return _current.get()
