"""Traffic for the reliability tests: a tenant with a budget hierarchy of 1 to
6 levels, request bodies for every mutating runtime call and for admin
funding, and a client that records every request it sent with the answer it
got (the client-side log the invariants are checked against)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.api.provision import USD, Conn, Tenant, create_budget, new_tenant, unique

# Levels below the tenant, in hierarchy order.
LEVELS = ("workspace", "app", "workflow", "agent", "toolset")
POLICIES = ("REJECT", "ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT")


@dataclass(frozen=True)
class Hierarchy:
    """A tenant with budgets on its first `depth` levels (1 = tenant only)."""

    tenant: Tenant
    depth: int

    def subject(self, depth: int) -> dict[str, str]:
        """The subject `depth` levels deep (1 = the tenant itself)."""
        subject = {"tenant": self.tenant.tenant_id}
        for level in LEVELS[: depth - 1]:
            subject[level] = f"{level[0]}1"
        return subject

    def scope(self, depth: int) -> str:
        parts = [self.tenant.scope] + [f"{level}:{level[0]}1" for level in LEVELS[: depth - 1]]
        return "/".join(parts)

    @property
    def scopes(self) -> list[str]:
        """The budgeted scopes, top down."""
        return [self.scope(d) for d in range(1, self.depth + 1)]

    def charged_scopes(self, subject_depth: int) -> list[str]:
        """The budgets a call on a subject `subject_depth` levels deep charges."""
        return [self.scope(d) for d in range(1, min(subject_depth, self.depth) + 1)]


def provision(conn: Conn, allocations: list[int], overdrafts: list[int] | None = None) -> Hierarchy:
    """A fresh tenant with one USD budget per level, allocations top down."""
    tenant = new_tenant(conn)
    hierarchy = Hierarchy(tenant, len(allocations))
    for index, (scope, allocated) in enumerate(zip(hierarchy.scopes, allocations, strict=True)):
        create_budget(conn, scope, allocated, overdraft_limit=(overdrafts or [0] * 6)[index])
    return hierarchy


def reserve_body(hierarchy: Hierarchy, depth: int, amount: int, policy: str, ttl_ms: int = 60_000,
                 grace_ms: int = 5_000) -> dict[str, Any]:
    return {
        "idempotency_key": unique("res-"), "subject": hierarchy.subject(depth),
        "action": {"kind": "llm.completion", "name": "model"},
        "estimate": {"unit": USD, "amount": amount}, "ttl_ms": ttl_ms, "grace_period_ms": grace_ms,
        "overage_policy": policy}


def commit_body(actual: int) -> dict[str, Any]:
    return {"idempotency_key": unique("com-"), "actual": {"unit": USD, "amount": actual}}


def release_body() -> dict[str, Any]:
    return {"idempotency_key": unique("rel-"), "reason": "not needed"}


def extend_body(extend_by_ms: int = 1_000) -> dict[str, Any]:
    return {"idempotency_key": unique("ext-"), "extend_by_ms": extend_by_ms}


def event_body(hierarchy: Hierarchy, depth: int, amount: int, policy: str) -> dict[str, Any]:
    return {
        "idempotency_key": unique("evt-"), "subject": hierarchy.subject(depth),
        "action": {"kind": "tool.search", "name": "web"},
        "actual": {"unit": USD, "amount": amount}, "overage_policy": policy}


def fund_body(operation: str, amount: int) -> dict[str, Any]:
    return {"operation": operation, "amount": {"unit": USD, "amount": amount},
            "idempotency_key": unique("fund-"), "reason": "reliability test"}


@dataclass
class Call:
    """One request and what came back (status None: no answer at all)."""

    kind: str
    path: str
    body: dict[str, Any]
    params: dict[str, str] | None = None
    status: int | None = None
    answer: Any = None
    reservation_id: str | None = None
    scopes: list[str] = field(default_factory=list)
    # Sent with the admin key (funding; a release on the tenant's behalf).
    admin: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class CallLog:
    """Every call of a run, appended from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[Call] = []

    def add(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def ok(self, kind: str) -> list[Call]:
        return [c for c in self.calls if c.kind == kind and c.ok]


def send(client: httpx.Client, call: Call, headers: dict[str, str]) -> Call:
    """Sends the call and fills in its answer. A transport failure leaves
    status None: the caller decides whether that is allowed."""
    try:
        response = client.post(call.path, json=call.body, params=call.params, headers=headers)
    except httpx.TransportError:
        return call
    call.status = response.status_code
    try:
        call.answer = response.json()
    except ValueError:
        call.answer = response.text
    if call.kind == "reserve" and call.ok:
        call.reservation_id = call.answer.get("reservation_id")
    return call


def without_ttl(document: Any) -> Any:
    """A response minus remaining_ttl_ms, the one field a replay recomputes."""
    if isinstance(document, dict):
        return {k: v for k, v in document.items() if k != "remaining_ttl_ms"}
    return document
