"""Typed errors. A server error body's ``error`` code picks the subclass."""

from __future__ import annotations

from typing import Any


class CyclesError(Exception):
    """Base of every error this SDK raises."""


class CyclesProtocolError(CyclesError):
    """The server refused a request, or no schema-valid answer could be obtained.

    ``status`` is the HTTP status (-1 when no response arrived at all).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        error_code: str | None = None,
        reason_code: str | None = None,
        retry_after_ms: int | None = None,
        request_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.reason_code = reason_code
        self.retry_after_ms = retry_after_ms
        self.request_id = request_id
        self.details = details

    def is_budget_exceeded(self) -> bool:
        return self.error_code == "BUDGET_EXCEEDED"

    def is_overdraft_limit_exceeded(self) -> bool:
        return self.error_code == "OVERDRAFT_LIMIT_EXCEEDED"

    def is_debt_outstanding(self) -> bool:
        return self.error_code == "DEBT_OUTSTANDING"

    def is_tenant_closed(self) -> bool:
        return self.error_code == "TENANT_CLOSED"

    def is_reservation_expired(self) -> bool:
        return self.error_code == "RESERVATION_EXPIRED"

    def is_reservation_finalized(self) -> bool:
        return self.error_code == "RESERVATION_FINALIZED"

    def is_idempotency_mismatch(self) -> bool:
        return self.error_code == "IDEMPOTENCY_MISMATCH"

    def is_unit_mismatch(self) -> bool:
        return self.error_code == "UNIT_MISMATCH"

    def is_retryable(self) -> bool:
        return self.error_code in ("INTERNAL_ERROR", "UNKNOWN", "LIMIT_EXCEEDED") or self.status >= 500 \
            or self.status == -1


class BudgetExceededError(CyclesProtocolError):
    """Not enough budget for the reservation (409 BUDGET_EXCEEDED)."""


class OverdraftLimitExceededError(CyclesProtocolError):
    """Debt would pass the overdraft limit (409 OVERDRAFT_LIMIT_EXCEEDED)."""


class DebtOutstandingError(CyclesProtocolError):
    """Outstanding debt blocks new reservations (409 DEBT_OUTSTANDING)."""


class TenantClosedError(CyclesProtocolError):
    """The owning tenant is closed (409 TENANT_CLOSED); not retryable."""


class ReservationExpiredError(CyclesProtocolError):
    """The reservation expired (410 RESERVATION_EXPIRED)."""


class ReservationFinalizedError(CyclesProtocolError):
    """The reservation was already committed or released (409 RESERVATION_FINALIZED)."""


class CyclesTransportError(CyclesError):
    """No response (connection failure, timeout). Surfaced by the lifecycle
    helpers as ``CyclesProtocolError`` with status -1, like the official client."""

    def __init__(self, message: str, *, cause: Exception | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class MissingActualError(CyclesError):
    """The guarded work ran but no actual amount is known, so nothing was settled."""


ERROR_CLASSES: dict[str, type[CyclesProtocolError]] = {
    "BUDGET_EXCEEDED": BudgetExceededError,
    "OVERDRAFT_LIMIT_EXCEEDED": OverdraftLimitExceededError,
    "DEBT_OUTSTANDING": DebtOutstandingError,
    "RESERVATION_EXPIRED": ReservationExpiredError,
    "RESERVATION_FINALIZED": ReservationFinalizedError,
    "TENANT_CLOSED": TenantClosedError,
}
