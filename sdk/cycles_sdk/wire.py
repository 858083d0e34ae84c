"""The Cycles runtime wire format as msgspec Structs, shared by client and server.

Request Structs are frozen, keyword-only and refuse unknown fields: the server
decodes incoming bodies with them (bounds-checking every field before SQL) and
the SDK builds outgoing bodies with them, so the two can never disagree about
the shape of a request. The bounds mirror the OpenAPI schemas.

Response Structs are what the SDK accepts as a schema-valid success. They
tolerate unknown keys (a newer server may add fields) but insist on every
required field, its type and the exact lifecycle status: anything else is an
ambiguous result that is retried with the same idempotency key.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

INT64_MAX: Final = 2**63 - 1
INT64_MIN: Final = -(2**63)

IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=256)]
# Standard subject fields become scope path segments, where ':' and '/' are
# delimiters: the spec lets a server refuse anything outside this pattern.
SubjectField = Annotated[str, Meta(max_length=128, pattern=r"^[a-zA-Z0-9_.-]+$")]
NonNegativeInt64 = Annotated[int, Meta(ge=0, le=INT64_MAX)]
SignedInt64 = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
Unit = Literal["USD_MICROCENTS", "TOKENS", "CREDITS", "RISK_POINTS"]
OveragePolicy = Literal["REJECT", "ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT"]
DecisionValue = Literal["ALLOW", "ALLOW_WITH_CAPS", "DENY"]
Metadata = dict[str, Any]

SUBJECT_FIELDS: Final = ("tenant", "workspace", "app", "workflow", "agent", "toolset")

MAX_TTL_MS: Final = 86_400_000
MIN_TTL_MS: Final = 1_000
MAX_GRACE_PERIOD_MS: Final = 60_000
MAX_EXTEND_BY_MS: Final = 86_400_000


class Subject(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
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


class Action(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Annotated[str, Meta(min_length=1, max_length=64)]
    name: Annotated[str, Meta(min_length=1, max_length=256)]
    tags: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=10)] | UnsetType = UNSET
    # v0.1.26 routing keys: accepted and ignored by the server.
    policy_keys: Raw | UnsetType = UNSET


class Amount(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    unit: Unit
    amount: NonNegativeInt64


class StandardMetrics(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tokens_input: NonNegativeInt64 | UnsetType = UNSET
    tokens_output: NonNegativeInt64 | UnsetType = UNSET
    latency_ms: NonNegativeInt64 | UnsetType = UNSET
    model_version: Annotated[str, Meta(max_length=128)] | UnsetType = UNSET
    custom: Metadata | UnsetType = UNSET


class ReservationCreateRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    idempotency_key: IdempotencyKey
    subject: Subject
    action: Action
    estimate: Amount
    ttl_ms: Annotated[int, Meta(ge=MIN_TTL_MS, le=MAX_TTL_MS)] | UnsetType = UNSET
    grace_period_ms: Annotated[int, Meta(ge=0, le=MAX_GRACE_PERIOD_MS)] | UnsetType = UNSET
    overage_policy: OveragePolicy | UnsetType = UNSET
    dry_run: bool | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    # v0.1.26 per-request observe mode: accepted and ignored by the server.
    observe_mode: Raw | UnsetType = UNSET


class DecisionRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    idempotency_key: IdempotencyKey
    subject: Subject
    action: Action
    estimate: Amount
    metadata: Metadata | UnsetType = UNSET


class CommitRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    idempotency_key: IdempotencyKey
    actual: Amount
    metrics: StandardMetrics | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET


class ReleaseRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    idempotency_key: IdempotencyKey
    reason: Annotated[str, Meta(max_length=256)] | UnsetType = UNSET


class ReservationExtendRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    idempotency_key: IdempotencyKey
    extend_by_ms: Annotated[int, Meta(ge=1, le=MAX_EXTEND_BY_MS)]
    metadata: Metadata | UnsetType = UNSET


class EventCreateRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    idempotency_key: IdempotencyKey
    subject: Subject
    action: Action
    actual: Amount
    overage_policy: OveragePolicy | UnsetType = UNSET
    metrics: StandardMetrics | UnsetType = UNSET
    client_time_ms: NonNegativeInt64 | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET


# --- responses -------------------------------------------------------------


class SignedAmount(Struct, frozen=True, kw_only=True):
    unit: Unit
    amount: SignedInt64


class ResponseAmount(Struct, frozen=True, kw_only=True):
    unit: Unit
    amount: NonNegativeInt64


class Caps(Struct, frozen=True, kw_only=True):
    max_tokens: int | UnsetType = UNSET
    max_steps_remaining: int | UnsetType = UNSET
    tool_allowlist: list[str] | UnsetType = UNSET
    tool_denylist: list[str] | UnsetType = UNSET
    cooldown_ms: int | UnsetType = UNSET

    def is_tool_allowed(self, tool: str) -> bool:
        """Advisory: an allowlist, when present, wins over the denylist."""
        if self.tool_allowlist is not UNSET:
            return tool in self.tool_allowlist
        if self.tool_denylist is not UNSET:
            return tool not in self.tool_denylist
        return True


class Balance(Struct, frozen=True, kw_only=True):
    scope: str
    scope_path: str
    remaining: SignedAmount
    reserved: ResponseAmount | UnsetType = UNSET
    spent: ResponseAmount | UnsetType = UNSET
    allocated: ResponseAmount | UnsetType = UNSET
    debt: ResponseAmount | UnsetType = UNSET
    overdraft_limit: ResponseAmount | UnsetType = UNSET
    is_over_limit: bool | UnsetType = UNSET


class ReservationCreateResponse(Struct, frozen=True, kw_only=True):
    decision: DecisionValue
    affected_scopes: list[str]
    reservation_id: str | UnsetType = UNSET
    expires_at_ms: int | UnsetType = UNSET
    remaining_ttl_ms: int | UnsetType = UNSET
    scope_path: str | UnsetType = UNSET
    reserved: ResponseAmount | UnsetType = UNSET
    caps: Caps | UnsetType = UNSET
    reason_code: str | UnsetType = UNSET
    retry_after_ms: int | UnsetType = UNSET
    balances: list[Balance] | UnsetType = UNSET


class DecisionResponse(Struct, frozen=True, kw_only=True):
    decision: DecisionValue
    caps: Caps | UnsetType = UNSET
    reason_code: str | UnsetType = UNSET
    retry_after_ms: int | UnsetType = UNSET
    affected_scopes: list[str] | UnsetType = UNSET


class CommitResponse(Struct, frozen=True, kw_only=True):
    status: Literal["COMMITTED"]
    charged: ResponseAmount
    released: ResponseAmount | UnsetType = UNSET
    balances: list[Balance] | UnsetType = UNSET


class ReleaseResponse(Struct, frozen=True, kw_only=True):
    status: Literal["RELEASED"]
    released: ResponseAmount
    balances: list[Balance] | UnsetType = UNSET


class ReservationExtendResponse(Struct, frozen=True, kw_only=True):
    status: Literal["ACTIVE"]
    expires_at_ms: int
    remaining_ttl_ms: int | UnsetType = UNSET
    balances: list[Balance] | UnsetType = UNSET


class EventCreateResponse(Struct, frozen=True, kw_only=True):
    status: Literal["APPLIED"]
    event_id: str
    charged: ResponseAmount | UnsetType = UNSET
    balances: list[Balance] | UnsetType = UNSET


class ErrorResponse(Struct, frozen=True, kw_only=True):
    error: str
    message: str
    request_id: str | UnsetType = UNSET
    details: Metadata | UnsetType = UNSET


def to_builtins(value: Struct) -> dict[str, Any]:
    """A Struct as a plain JSON-ready dict (UNSET fields left out)."""
    document: dict[str, Any] = msgspec.to_builtins(value)
    return document
