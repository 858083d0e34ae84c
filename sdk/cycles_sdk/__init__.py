"""cycles_sdk: a typed Python SDK for Cycles budget authorities.

The public names match the official ``runcycles`` client's, so moving over is
an import change: ``from cycles_sdk import CyclesClient, cycles, ...``.
"""

from cycles_sdk.client import AsyncCyclesClient, CyclesClient
from cycles_sdk.config import CyclesConfig
from cycles_sdk.context import CyclesContext, CyclesMetrics, HeartbeatFailure, get_cycles_context
from cycles_sdk.cost import ModelPrice, TokenUsage, cost_from_usage, cost_microcents, usage_from
from cycles_sdk.decorator import cycles, set_default_client, set_default_config, stream_reservation
from cycles_sdk.exceptions import (
    BudgetExceededError,
    CyclesError,
    CyclesProtocolError,
    CyclesTransportError,
    DebtOutstandingError,
    MissingActualError,
    OverdraftLimitExceededError,
    ReservationExpiredError,
    ReservationFinalizedError,
    TenantClosedError,
)
from cycles_sdk.journal import Journal
from cycles_sdk.lifecycle import DryRunResult
from cycles_sdk.response import CyclesResponse
from cycles_sdk.streaming import AsyncStreamReservation, StreamReservation, StreamUsage

__all__ = [
    "AsyncCyclesClient",
    "AsyncStreamReservation",
    "BudgetExceededError",
    "CyclesClient",
    "CyclesConfig",
    "CyclesContext",
    "CyclesError",
    "CyclesMetrics",
    "CyclesProtocolError",
    "CyclesResponse",
    "CyclesTransportError",
    "DebtOutstandingError",
    "DryRunResult",
    "HeartbeatFailure",
    "Journal",
    "MissingActualError",
    "ModelPrice",
    "OverdraftLimitExceededError",
    "ReservationExpiredError",
    "ReservationFinalizedError",
    "StreamReservation",
    "StreamUsage",
    "TenantClosedError",
    "TokenUsage",
    "cost_from_usage",
    "cost_microcents",
    "cycles",
    "get_cycles_context",
    "set_default_client",
    "set_default_config",
    "stream_reservation",
    "usage_from",
]
