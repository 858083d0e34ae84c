"""Request bodies of the runtime API as msgspec Structs.

They exist to bounds-check a request before it reaches SQL: unknown fields,
wrong types, fractional or out-of-range numbers and over-long strings fail
here with a message naming the field (msgspec's ``$.path``). The bounds mirror
the OpenAPI schemas. The handlers then pass the body itself (not these
objects) to the cycles.* function, which owns every rule about money, time and
tenancy.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

INT64_MAX: Final = 2**63 - 1

IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=256)]
# Standard subject fields become scope path segments, where ':' and '/' are
# delimiters: the spec lets a server refuse anything outside this pattern.
SubjectField = Annotated[str, Meta(max_length=128, pattern=r"^[a-zA-Z0-9_.-]+$")]
NonNegativeInt64 = Annotated[int, Meta(ge=0, le=INT64_MAX)]
Unit = Literal["USD_MICROCENTS", "TOKENS", "CREDITS", "RISK_POINTS"]
OveragePolicy = Literal["REJECT", "ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT"]
Metadata = dict[str, Any]

SUBJECT_FIELDS: Final = ("tenant", "workspace", "app", "workflow", "agent", "toolset")

MAX_TTL_MS: Final = 86_400_000
MIN_TTL_MS: Final = 1_000
MAX_GRACE_PERIOD_MS: Final = 60_000
MAX_EXTEND_BY_MS: Final = 86_400_000


class Subject(Struct, forbid_unknown_fields=True):
    tenant: SubjectField | UnsetType = UNSET
    workspace: SubjectField | UnsetType = UNSET
    app: SubjectField | UnsetType = UNSET
    workflow: SubjectField | UnsetType = UNSET
    agent: SubjectField | UnsetType = UNSET
    toolset: SubjectField | UnsetType = UNSET
    dimensions: Annotated[
        dict[str, Annotated[str, Meta(max_length=256)]], Meta(max_length=16)] | UnsetType = UNSET

    def __post_init__(self) -> None:
        if all(getattr(self, name) is UNSET for name in SUBJECT_FIELDS):
            raise ValueError("subject needs at least one of " + ", ".join(SUBJECT_FIELDS))


class Action(Struct, forbid_unknown_fields=True):
    kind: Annotated[str, Meta(min_length=1, max_length=64)]
    name: Annotated[str, Meta(min_length=1, max_length=256)]
    tags: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=10)] | UnsetType = UNSET
    # v0.1.26 routing keys: accepted and ignored (removed before SQL).
    policy_keys: Raw | UnsetType = UNSET


class Amount(Struct, forbid_unknown_fields=True):
    unit: Unit
    amount: NonNegativeInt64


class StandardMetrics(Struct, forbid_unknown_fields=True):
    tokens_input: NonNegativeInt64 | UnsetType = UNSET
    tokens_output: NonNegativeInt64 | UnsetType = UNSET
    latency_ms: NonNegativeInt64 | UnsetType = UNSET
    model_version: Annotated[str, Meta(max_length=128)] | UnsetType = UNSET
    custom: Metadata | UnsetType = UNSET


class ReservationCreateRequest(Struct, forbid_unknown_fields=True):
    idempotency_key: IdempotencyKey
    subject: Subject
    action: Action
    estimate: Amount
    ttl_ms: Annotated[int, Meta(ge=MIN_TTL_MS, le=MAX_TTL_MS)] | UnsetType = UNSET
    grace_period_ms: Annotated[int, Meta(ge=0, le=MAX_GRACE_PERIOD_MS)] | UnsetType = UNSET
    overage_policy: OveragePolicy | UnsetType = UNSET
    dry_run: bool | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    # v0.1.26 per-request observe mode: accepted and ignored (removed before SQL).
    observe_mode: Raw | UnsetType = UNSET


class DecisionRequest(Struct, forbid_unknown_fields=True):
    idempotency_key: IdempotencyKey
    subject: Subject
    action: Action
    estimate: Amount
    metadata: Metadata | UnsetType = UNSET


class CommitRequest(Struct, forbid_unknown_fields=True):
    idempotency_key: IdempotencyKey
    actual: Amount
    metrics: StandardMetrics | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET


class ReleaseRequest(Struct, forbid_unknown_fields=True):
    idempotency_key: IdempotencyKey
    reason: Annotated[str, Meta(max_length=256)] | UnsetType = UNSET


class ReservationExtendRequest(Struct, forbid_unknown_fields=True):
    idempotency_key: IdempotencyKey
    extend_by_ms: Annotated[int, Meta(ge=1, le=MAX_EXTEND_BY_MS)]
    metadata: Metadata | UnsetType = UNSET


class EventCreateRequest(Struct, forbid_unknown_fields=True):
    idempotency_key: IdempotencyKey
    subject: Subject
    action: Action
    actual: Amount
    overage_policy: OveragePolicy | UnsetType = UNSET
    metrics: StandardMetrics | UnsetType = UNSET
    client_time_ms: NonNegativeInt64 | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET


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
