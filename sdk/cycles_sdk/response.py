"""What a request produced: an HTTP response, or a transport failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from cycles_sdk.exceptions import ERROR_CLASSES, CyclesProtocolError

# Retry-After is honoured up to an hour: a longer value is a server bug, not a plan.
MAX_RETRY_AFTER_MS = 3_600_000

T = TypeVar("T")


@dataclass(frozen=True)
class CyclesResponse:
    """``status`` is -1 when no response arrived (``transport_error`` says why).
    ``body`` is the decoded JSON body (None when absent or not JSON)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    transport_error: str | None = None

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    @property
    def is_client_error(self) -> bool:
        return 400 <= self.status < 500

    @property
    def is_server_error(self) -> bool:
        return self.status >= 500

    @property
    def is_transport_error(self) -> bool:
        return self.status == -1

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id") or self._body_text("request_id")

    @property
    def error_code(self) -> str | None:
        return self._body_text("error")

    @property
    def error_message(self) -> str | None:
        if self.transport_error is not None:
            return self.transport_error
        return self._body_text("message") or self._body_text("error")

    @property
    def retry_after_ms(self) -> int | None:
        """The body's ``retry_after_ms``, else the ``Retry-After`` header (seconds),
        capped at an hour."""
        value = self.body.get("retry_after_ms") if isinstance(self.body, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return min(value, MAX_RETRY_AFTER_MS)
        header = self.headers.get("retry-after", "").strip()
        if header.isdigit():
            return min(int(header) * 1000, MAX_RETRY_AFTER_MS)
        return None

    def get_body_attribute(self, name: str) -> Any:
        return self.body.get(name) if isinstance(self.body, dict) else None

    def _body_text(self, name: str) -> str | None:
        value = self.get_body_attribute(name)
        return value if isinstance(value, str) else None

    def to_error(self, message: str | None = None) -> CyclesProtocolError:
        """The typed exception for this response."""
        code = self.error_code
        details = self.get_body_attribute("details")
        kind = ERROR_CLASSES.get(code or "", CyclesProtocolError)
        return kind(
            message or self.error_message or f"HTTP {self.status}",
            status=self.status, error_code=code,
            reason_code=self._body_text("reason_code") or code,
            retry_after_ms=self.retry_after_ms, request_id=self.request_id,
            details=details if isinstance(details, dict) else None)

    def decode(self, kind: type[T]) -> T | None:
        """The body as ``kind`` when it is schema-valid, else None."""
        try:
            return msgspec.convert(self.body, kind)
        except (msgspec.ValidationError, TypeError):
            return None
