"""Error responses: the one SQLSTATE -> (HTTP status, error code) table, and
the exception handlers that turn every failure into the spec's ErrorResponse.

An error body is exactly {error, message, request_id, trace_id[, details]}:
no other key and no JSON null, whatever raised it (a cycles.* function, the
request parser, Litestar's router or a bug). The status comes from the
SQLSTATE; error and details come from the JSON DETAIL the SQL raised with;
message text is never parsed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import msgspec
import psycopg
from litestar import Request, Response
from litestar.enums import MediaType
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap
from psycopg_pool import PoolTimeout

from app.tracing import request_ids

logger = logging.getLogger("cycles.api")

# Every custom SQLSTATE raised by cycles._fail (class CY); the error code in
# the second position is the fallback when a DETAIL cannot be read.
SQLSTATE_ERRORS: Final[Mapping[str, tuple[int, str]]] = {
    "CY400": (400, "INVALID_REQUEST"),
    "CY401": (401, "UNAUTHORIZED"),
    "CY403": (403, "FORBIDDEN"),
    "CY404": (404, "NOT_FOUND"),
    "CY410": (410, "RESERVATION_EXPIRED"),
    "CY4UM": (400, "UNIT_MISMATCH"),
    "CY901": (409, "BUDGET_EXCEEDED"),
    "CY902": (409, "BUDGET_FROZEN"),
    "CY903": (409, "BUDGET_CLOSED"),
    "CY904": (409, "OVERDRAFT_LIMIT_EXCEEDED"),
    "CY905": (409, "DEBT_OUTSTANDING"),
    "CY906": (409, "RESERVATION_FINALIZED"),
    "CY907": (409, "IDEMPOTENCY_MISMATCH"),
    "CY908": (409, "MAX_EXTENSIONS_EXCEEDED"),
    "CY909": (409, "TENANT_CLOSED"),
    "CY910": (403, "TENANT_SUSPENDED"),
    "CY911": (409, "DUPLICATE_RESOURCE"),
    "CY912": (409, "INVALID_TRANSITION"),
    "CY913": (401, "KEY_REVOKED"),
    "CY4TN": (404, "TENANT_NOT_FOUND"),
    "CY4BN": (404, "BUDGET_NOT_FOUND"),
    "CY4IP": (403, "INSUFFICIENT_PERMISSIONS"),
    "CY429": (429, "LIMIT_EXCEEDED"),
    "CY4WN": (404, "WEBHOOK_NOT_FOUND"),
    "CY4WU": (400, "WEBHOOK_URL_INVALID"),
    "CY9RP": (409, "REPLAY_IN_PROGRESS"),
    "CY9CM": (409, "COUNT_MISMATCH"),
    # LIMIT_EXCEEDED is also a 400 (a bulk action matching more than 500
    # rows): raised with its own SQLSTATE by cycles._fail_bulk_limit.
    "CY4LE": (400, "LIMIT_EXCEEDED"),
}

# Error codes for failures that never reach SQL, by HTTP status.
_STATUS_ERRORS: Final[Mapping[int, str]] = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    429: "LIMIT_EXCEEDED",
}


# SQLSTATEs (or their class prefixes) that mean "retry later": 503. The
# database is away or busy, not wrong, and the transaction rolled back.
UNAVAILABLE_SQLSTATES: Final = ("08", "57P", "53", "55P03", "57014")
# A serialization failure or a deadlock between concurrent requests: also
# rolled back and safe to retry (503), never a 500.
_CONFLICT_SQLSTATES: Final = ("40001", "40P01")


class ApiError(Exception):
    """A request the adapter refuses before (or instead of) calling SQL."""

    def __init__(self, status: int, error: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.details = details


def invalid_request(message: str, details: dict[str, Any] | None = None) -> ApiError:
    return ApiError(400, "INVALID_REQUEST", message, details)


class _Detail(msgspec.Struct):
    """The JSON DETAIL of a cycles._fail error."""

    error: str | None = None
    details: dict[str, Any] | None = None


_detail_decoder: Final = msgspec.json.Decoder(_Detail)


def _without_nulls(value: Any) -> Any:
    """The value with every JSON null removed (object keys dropped, array items skipped)."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value if item is not None]
    return value


def error_response(
    request: Request[Any, Any, Any],
    status: int,
    error: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[bytes]:
    ids = request_ids(request.scope)
    body: dict[str, Any] = {
        "error": error,
        "message": message or error,
        "request_id": ids.request_id,
        "trace_id": ids.trace_id,
    }
    if details:
        body["details"] = _without_nulls(dict(details))
    return Response(
        content=msgspec.json.encode(body), status_code=status, media_type=MediaType.JSON, headers=headers)


def _internal_error(request: Request[Any, Any, Any], exc: BaseException) -> Response[bytes]:
    logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, "INTERNAL_ERROR", "internal server error")


def _unavailable(request: Request[Any, Any, Any], exc: BaseException) -> Response[bytes]:
    logger.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(request, 503, "INTERNAL_ERROR", "the database is unavailable, retry later")


def handle_api_error(request: Request[Any, Any, Any], exc: ApiError) -> Response[bytes]:
    return error_response(request, exc.status, exc.error, exc.message, exc.details)


def handle_database_error(request: Request[Any, Any, Any], exc: psycopg.Error) -> Response[bytes]:
    sqlstate = exc.sqlstate
    refused = refusal(sqlstate, exc.diag.message_primary, exc.diag.message_detail) if sqlstate else None
    if refused is None:
        # No SQLSTATE at all, connection exceptions (08), operator intervention
        # (57P: shutdown, crash recovery), out of connections or resources
        # (53), a lock held too long (55P03, lock_timeout), a statement
        # cancelled at statement_timeout (57014), or concurrent requests in
        # conflict (40001, 40P01): a retry is safe.
        if sqlstate is None or sqlstate.startswith(UNAVAILABLE_SQLSTATES + _CONFLICT_SQLSTATES):
            return _unavailable(request, exc)
        return _internal_error(request, exc)
    return handle_api_error(request, refused)


def refusal(sqlstate: str, message: str | None, detail: str | None) -> ApiError | None:
    """The client error a cycles.* function raised (its SQLSTATE, message and
    JSON DETAIL), or None when the SQLSTATE is not one of the protocol's."""
    mapped = SQLSTATE_ERRORS.get(sqlstate)
    if mapped is None:
        return None
    status, error = mapped
    details: dict[str, Any] | None = None
    if detail:
        try:
            decoded = _detail_decoder.decode(detail)
        except msgspec.DecodeError:
            logger.warning("unreadable DETAIL on %s: %r", sqlstate, detail)
        else:
            error = decoded.error or error
            details = decoded.details
    return ApiError(status, error, message or error, details)


def handle_pool_timeout(request: Request[Any, Any, Any], exc: PoolTimeout) -> Response[bytes]:
    return _unavailable(request, exc)


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors: unknown route (404), wrong method (405), body too
    large (413), and anything else it raises."""
    status = exc.status_code
    if status >= 500:
        return _internal_error(request, exc)
    error = _STATUS_ERRORS.get(status, "INVALID_REQUEST")
    if status == 404:
        message = f"no such resource: {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = exc.detail
    headers = {key: value for key, value in (exc.headers or {}).items() if key.lower() == "allow"}
    if status == 413:
        message = "request body too large"
    if status == 413 or _declares_body(request):
        # Refused before its body was read: the unread body is still on the
        # wire, so this connection cannot carry another request.
        headers["connection"] = "close"
    return error_response(request, status, error, message, headers=headers or None)


def _declares_body(request: Request[Any, Any, Any]) -> bool:
    headers = request.headers
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    return _internal_error(request, exc)


EXCEPTION_HANDLERS: Final[ExceptionHandlersMap] = {
    ApiError: handle_api_error,
    PoolTimeout: handle_pool_timeout,
    psycopg.Error: handle_database_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
