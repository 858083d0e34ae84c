"""Request bodies of the runtime API: the msgspec Structs of the SDK.

The Structs themselves live in ``cycles_sdk.wire`` (sdk/), so the server and
the Python SDK decode and encode exactly the same shapes and can never drift.
They bounds-check a request before it reaches SQL: unknown fields, wrong
types, fractional or out-of-range numbers and over-long strings fail there
with a message naming the field (msgspec's ``$.path``). The handlers then pass
the body itself (not these objects) to the cycles.* function, which owns every
rule about money, time and tenancy.
"""

from __future__ import annotations

from typing import Any

import msgspec
from cycles_sdk.wire import (
    INT64_MAX,
    MAX_EXTEND_BY_MS,
    MAX_GRACE_PERIOD_MS,
    MAX_TTL_MS,
    MIN_TTL_MS,
    SUBJECT_FIELDS,
    Action,
    Amount,
    CommitRequest,
    DecisionRequest,
    EventCreateRequest,
    ReleaseRequest,
    ReservationCreateRequest,
    ReservationExtendRequest,
    StandardMetrics,
    Subject,
)
from msgspec import UNSET

__all__ = [
    "INT64_MAX",
    "MAX_EXTEND_BY_MS",
    "MAX_GRACE_PERIOD_MS",
    "MAX_TTL_MS",
    "MIN_TTL_MS",
    "SUBJECT_FIELDS",
    "Action",
    "Amount",
    "CommitRequest",
    "DecisionRequest",
    "EventCreateRequest",
    "ReleaseRequest",
    "ReservationCreateRequest",
    "ReservationExtendRequest",
    "StandardMetrics",
    "Subject",
    "has_ignored_fields",
    "without_ignored_fields",
]


def has_ignored_fields(request: object) -> bool:
    """Whether the body carries v0.1.26 fields this server accepts but ignores."""
    if getattr(request, "observe_mode", UNSET) is not UNSET:
        return True
    action = getattr(request, "action", None)
    return isinstance(action, Action) and action.policy_keys is not UNSET


def without_ignored_fields(body: bytes) -> bytes:
    """The body with the ignored v0.1.26 fields removed (rare: re-encodes)."""
    document: dict[str, Any] = msgspec.json.decode(body)
    document.pop("observe_mode", None)
    action = document.get("action")
    if isinstance(action, dict):
        action.pop("policy_keys", None)
    return msgspec.json.encode(document)
