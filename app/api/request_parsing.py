"""Reading a request: credentials, body, path ids, query strings, and the
context (request id, trace id, actor) every cycles.* call records.

Everything here is about the shape of the input; whether a key is valid, a
tenant may act or a budget suffices is decided by the SQL function.
"""

from __future__ import annotations

import contextlib
import hmac
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple, TypeVar

import msgspec
from litestar import Request
from litestar.exceptions import InternalServerException
from litestar.types import Scope

from app.db import Database
from app.errors import ApiError, invalid_request
from app.tracing import request_ids
from app.wire import has_ignored_fields, without_ignored_fields

API_KEY_HEADER: Final = "x-cycles-api-key"
ADMIN_KEY_HEADER: Final = "x-admin-api-key"
IDEMPOTENCY_KEY_HEADER: Final = "x-idempotency-key"

MAX_RESERVATION_ID_LENGTH: Final = 128

# A JSON "\u0000" escape not itself escaped: PostgreSQL text cannot hold NUL.
_NUL_ESCAPE: Final = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

T = TypeVar("T")


class Caller(NamedTuple):
    """Who is calling: an API key secret (checked in SQL), or None when the
    request carried a valid admin key and acts on a tenant's behalf."""

    api_key: str | None
    actor_type: str


async def read_body(request: Request[Any, Any, Any]) -> bytes:
    """The whole request body. Read before any refusal, so that a refused
    request never leaves its body on a kept-alive connection."""
    try:
        return await request.body()
    except InternalServerException:
        # Litestar's only server error while receiving a body: the client went
        # away mid-body. Nobody is left to answer, and it is not our failure.
        raise invalid_request("the client disconnected before sending the whole request body") from None


def database(request: Request[Any, Any, Any]) -> Database:
    db: Database = request.app.state.db
    return db


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "UNAUTHORIZED", message)


def api_key_caller(request: Request[Any, Any, Any]) -> Caller:
    """The caller of an endpoint that only an API key may use."""
    return api_key_of(request.headers.get(API_KEY_HEADER))


def api_key_of(key: str | None) -> Caller:
    """The caller presenting this X-Cycles-API-Key value (the first one sent)."""
    if not key:
        raise _unauthorized("missing X-Cycles-API-Key header")
    if "\x00" in key:
        raise _unauthorized("missing, unknown, revoked or expired API key")
    return Caller(key, "api_key")


def api_key_or_admin_caller(request: Request[Any, Any, Any]) -> Caller:
    """The caller of an endpoint that also accepts X-Admin-API-Key. An API key,
    when present, wins: the request then acts as that key's tenant."""
    if request.headers.get(API_KEY_HEADER):
        return api_key_caller(request)
    presented = request.headers.get(ADMIN_KEY_HEADER)
    if not presented:
        raise _unauthorized("missing X-Cycles-API-Key or X-Admin-API-Key header")
    expected: str | None = request.app.state.admin_api_key
    if expected is None or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise _unauthorized("invalid admin API key")
    return Caller(None, "admin_on_behalf_of")


def context_json(request: Request[Any, Any, Any], caller: Caller) -> str:
    """p_ctx of the call: what the ledger and events record about the request."""
    return scope_context_json(request.scope, caller)


def scope_context_json(scope: Scope, caller: Caller) -> str:
    """context_json from the request's ASGI scope."""
    ids = request_ids(scope)
    context = {"request_id": ids.request_id, "trace_id": ids.trace_id, "actor_type": caller.actor_type}
    client = scope.get("client")
    if client:
        context["source_ip"] = str(client[0])
    return msgspec.json.encode(context).decode()


def _validation_message(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "JSON is too deeply nested"
    if isinstance(exc, UnicodeDecodeError):
        return "request body is not valid UTF-8"
    return str(exc)


def decode_body(body: bytes, decoder: msgspec.json.Decoder[T]) -> tuple[T, str]:
    """The validated request and the JSON text to hand to SQL (the body
    itself, minus the v0.1.26 fields that are accepted and ignored)."""
    if not body.strip():
        raise invalid_request("request body is required: a JSON object")
    try:
        parsed = decoder.decode(body)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        raise invalid_request(f"invalid request body: {_validation_message(exc)}") from None
    if b"\\u0000" in body and _NUL_ESCAPE.search(body):
        raise invalid_request("invalid request body: strings must not contain the NUL character (\\u0000)")
    if has_ignored_fields(parsed):
        body = without_ignored_fields(body)
    return parsed, body.decode()


def check_idempotency_header(request: Request[Any, Any, Any], body_key: str) -> None:
    """X-Idempotency-Key is optional; when sent it must equal the body's key."""
    check_idempotency_key(request.headers.get(IDEMPOTENCY_KEY_HEADER), body_key)


def check_idempotency_key(header_key: str | None, body_key: str) -> None:
    """check_idempotency_header for the header's value (the first one sent, as latin-1)."""
    if header_key is None:
        return
    # Header values arrive as latin-1; a client sending a non-ASCII key sends
    # its UTF-8 bytes, which is what the body's key is compared against.
    with contextlib.suppress(UnicodeError):
        header_key = header_key.encode("latin-1").decode("utf-8")
    if header_key != body_key:
        raise invalid_request(
            "X-Idempotency-Key header does not match the body's idempotency_key",
            {"header_idempotency_key": header_key[:256], "idempotency_key": body_key})


def checked_reservation_id(raw: str) -> str:
    """A reservation id from the path: 1..128 characters, no NUL."""
    if not raw or len(raw) > MAX_RESERVATION_ID_LENGTH:
        raise invalid_request(
            f"reservation_id must be 1 to {MAX_RESERVATION_ID_LENGTH} characters, got {len(raw)}")
    if "\x00" in raw:
        raise invalid_request("reservation_id must not contain the NUL character")
    return raw


# Query strings --------------------------------------------------------------
# A parameter reader turns a non-blank raw value into its JSON value or raises
# ApiError. Blank values mean "unset"; parameters not listed are ignored (the
# spec's additive-parameter rule).

QueryReader = Callable[[str, str], Any]

_DIGITS: Final = re.compile(r"[0-9]{1,9}")


def text_param(max_length: int) -> QueryReader:
    def read(name: str, raw: str) -> str:
        if len(raw) > max_length:
            raise invalid_request(f"query parameter {name} must be at most {max_length} characters")
        return raw

    return read


def enum_param(*values: str) -> QueryReader:
    allowed = frozenset(values)

    def read(name: str, raw: str) -> str:
        if raw not in allowed:
            raise invalid_request(
                f"query parameter {name} must be one of {', '.join(values)}, got {raw[:64]!r}")
        return raw

    return read


def int_param(minimum: int, maximum: int) -> QueryReader:
    def read(name: str, raw: str) -> int:
        value = int(raw) if _DIGITS.fullmatch(raw) else None
        if value is None or not minimum <= value <= maximum:
            raise invalid_request(
                f"query parameter {name} must be an integer from {minimum} to {maximum}, got {raw[:64]!r}")
        return value

    return read


def bool_param(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered not in ("true", "false"):
        raise invalid_request(f"query parameter {name} must be true or false, got {raw[:64]!r}")
    return lowered == "true"


def read_query(request: Request[Any, Any, Any], readers: Mapping[str, QueryReader]) -> dict[str, Any]:
    """The recognised, non-blank query parameters, validated, as a JSON object."""
    params = request.query_params
    query: dict[str, Any] = {}
    for name, reader in readers.items():
        raw = params.get(name)
        if raw is None or not raw.strip():
            continue
        if "\x00" in raw:
            raise invalid_request(f"query parameter {name} must not contain the NUL character")
        query[name] = reader(name, raw)
    return query
