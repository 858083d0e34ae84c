"""One admin request: its credential, its single cycles.* call, and its audit row.

A successful admin function writes its own audit row in its transaction. When
anything fails (a missing credential, a malformed body, the function raising),
that transaction is gone, so AdminCall records the failure afterwards with
cycles.record_audit_failure: every admin request leaves exactly one row.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final

import msgspec
import psycopg
from litestar import Request, Response
from litestar.enums import MediaType
from litestar.exceptions import HTTPException

from app.api.admin.auth import AdminPrincipal, admin_context, admin_principal, context_text
from app.api.request_parsing import database
from app.errors import SQLSTATE_ERRORS, ApiError, invalid_request

logger = logging.getLogger("cycles.api.admin")

RECORD_FAILURE_SQL: Final = (
    "SELECT cycles.record_audit_failure(p_ctx => %(ctx)s::jsonb, p_operation => %(operation)s,"
    " p_status => %(status)s, p_error_code => %(error)s, p_message => %(message)s,"
    " p_resource_type => %(resource_type)s, p_resource_id => %(resource_id)s,"
    " p_tenant_id => %(tenant_id)s)")

# A JSON "\u0000" escape not itself escaped: PostgreSQL text cannot hold NUL.
_NUL_ESCAPE: Final = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

UNITS: Final = frozenset({"USD_MICROCENTS", "TOKENS", "CREDITS", "RISK_POINTS"})

_object_decoder: Final = msgspec.json.Decoder(dict[str, Any])


class _Detail(msgspec.Struct):
    error: str | None = None


_detail_decoder: Final = msgspec.json.Decoder(_Detail)


def failure_of(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, error code, message) the error handlers will answer with."""
    if isinstance(exc, ApiError):
        return exc.status, exc.error, exc.message
    if isinstance(exc, psycopg.Error):
        mapped = SQLSTATE_ERRORS.get(exc.sqlstate or "")
        if mapped is None:
            return 500, "INTERNAL_ERROR", "internal server error"
        status, error = mapped
        raw = exc.diag.message_detail
        if raw:
            with contextlib.suppress(msgspec.DecodeError):
                error = _detail_decoder.decode(raw).error or error
        return status, error, exc.diag.message_primary or error
    if isinstance(exc, HTTPException):
        return exc.status_code, "INVALID_REQUEST" if exc.status_code < 500 else "INTERNAL_ERROR", str(exc.detail)
    return 500, "INTERNAL_ERROR", "internal server error"


def object_body(raw: bytes, *, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object (INVALID_REQUEST otherwise). An
    absent body is {} when not required."""
    if not raw.strip():
        if required:
            raise invalid_request("request body is required: a JSON object")
        return {}
    try:
        body = _object_decoder.decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        message = "JSON is too deeply nested" if isinstance(exc, RecursionError) else str(exc)
        raise invalid_request(f"invalid request body: {message}") from None
    if b"\\u0000" in raw and _NUL_ESCAPE.search(raw):
        raise invalid_request("invalid request body: strings must not contain the NUL character (\\u0000)")
    return body


def json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


class AdminCall:
    """The context of one admin request (async context manager).

    Usage: authenticate, parse, then make exactly one cycles.* call with
    fetch(); on any exception the failure is audited and the exception
    propagates to the error handlers unchanged.
    """

    def __init__(self, request: Request[Any, Any, Any], operation: str, resource_type: str | None) -> None:
        self.request = request
        self.operation = operation
        self.resource_type = resource_type
        self.resource_id: str | None = None
        self.tenant_id: str | None = None
        self.principal: AdminPrincipal | None = None
        self.on_behalf_of = False

    def authenticate(self, *, allow_tenant_key: bool = True) -> AdminPrincipal:
        self.principal = admin_principal(self.request, allow_tenant_key=allow_tenant_key)
        return self.principal

    @property
    def is_admin(self) -> bool:
        return self.principal is not None and self.principal.kind == "admin"

    def context(self, **extra: Any) -> str:
        """p_ctx for the call (after authenticate)."""
        context = admin_context(self.request, self.principal, on_behalf_of=self.on_behalf_of)
        context.update(extra)
        return context_text(context)

    async def fetch(self, sql: str, params: Mapping[str, Any]) -> bytes:
        return await database(self.request).fetch_json(sql, params)

    async def respond(self, sql: str, params: Mapping[str, Any], status: int = 200) -> Response[bytes]:
        body = await self.fetch(sql, params)
        return Response(content=body, status_code=status, media_type=MediaType.JSON)

    async def __aenter__(self) -> AdminCall:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        if exc is None or not isinstance(exc, Exception):
            return
        status, error, message = failure_of(exc)
        context = admin_context(self.request, self.principal, on_behalf_of=self.on_behalf_of)
        if self.principal is None:
            # Failed before a credential was accepted.
            context["actor_type"] = "admin"
            context.pop("api_key", None)
        try:
            await database(self.request).fetch_json(RECORD_FAILURE_SQL, {
                "ctx": context_text(context), "operation": self.operation, "status": status, "error": error,
                "message": message, "resource_type": self.resource_type, "resource_id": self.resource_id,
                "tenant_id": self.tenant_id})
        except Exception:  # the request's own answer matters more than its audit row
            logger.exception("could not record the audit row of a failed %s", self.operation)


def on_behalf_failures(
    request: Request[Any, Any, Any], api_key: str | None, operation: str,
) -> contextlib.AbstractAsyncContextManager[object]:
    """Audits the failure of a runtime call the admin makes on a tenant's
    behalf (api_key None; its success is audited by the SQL function). A
    tenant key's own runtime calls are not admin requests: nothing."""
    if api_key is not None:
        return contextlib.nullcontext()
    call = AdminCall(request, operation, "reservation")
    call.principal = AdminPrincipal("admin")
    call.on_behalf_of = True
    return call


# Field readers for JSON bodies: the shape of a value, nothing more (what the
# value means is checked by the SQL function).

def string_field(body: Mapping[str, Any], name: str, *, required: bool = False, max_length: int = 4096) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise invalid_request(f"{name} is required")
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise invalid_request(f"{name} must be a string of at most {max_length} characters")
    return value


def int_field(body: Mapping[str, Any], name: str, *, required: bool = False) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise invalid_request(f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        raise invalid_request(f"{name} must be a 64-bit integer")
    return value


def string_list_field(body: Mapping[str, Any], name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise invalid_request(f"{name} must be an array of strings")
    return value


def amount_field(
    body: Mapping[str, Any], name: str, *, unit: str | None, required: bool = False,
) -> tuple[int | None, str | None]:
    """An Amount {unit, amount}: (amount, unit). When unit is a known unit,
    the amount's unit must equal it (UNIT_MISMATCH otherwise; an unknown
    unit is left for the SQL function to refuse)."""
    value = body.get(name)
    if value is None:
        if required:
            raise invalid_request(f"{name} is required")
        return None, None
    if not isinstance(value, dict) or set(value) - {"unit", "amount"}:
        raise invalid_request(f"{name} must be an Amount object {{unit, amount}}")
    amount = int_field(value, "amount", required=True)
    amount_unit = string_field(value, "unit", required=True, max_length=32)
    if unit in UNITS and amount_unit != unit:
        raise ApiError(400, "UNIT_MISMATCH", f"{name}.unit {amount_unit} does not match the unit {unit}",
                       {"expected_unit": unit, "unit": amount_unit})
    return amount, amount_unit
