"""Reservations: create (and dry-run), commit, release, extend, list, get."""

from __future__ import annotations

from typing import Any, Final

import msgspec
from litestar import Request, Response, get, post
from litestar.enums import MediaType
from litestar.params import FromPath

from app.api.admin.calls import on_behalf_failures
from app.api.request_parsing import (
    api_key_caller,
    api_key_or_admin_caller,
    check_idempotency_header,
    checked_reservation_id,
    context_json,
    decode_body,
    enum_param,
    int_param,
    read_body,
    read_query,
    text_param,
)
from app.api.sql_call import respond
from app.reserve_batcher import ReserveBatcher
from app.settle_batcher import SettleBatcher
from app.wire import CommitRequest, ReleaseRequest, ReservationCreateRequest, ReservationExtendRequest

RESERVE_SQL: Final = (
    "SELECT cycles.reserve(p_api_key => %(key)s, p_request => %(request)s::jsonb,"
    " p_ctx => %(ctx)s::jsonb)::text")
COMMIT_SQL: Final = (
    "SELECT cycles.commit(p_api_key => %(key)s, p_reservation_id => %(id)s,"
    " p_request => %(request)s::jsonb, p_ctx => %(ctx)s::jsonb)::text")
RELEASE_SQL: Final = (
    "SELECT cycles.release(p_api_key => %(key)s, p_reservation_id => %(id)s,"
    " p_request => %(request)s::jsonb, p_ctx => %(ctx)s::jsonb)::text")
EXTEND_SQL: Final = (
    "SELECT cycles.extend(p_api_key => %(key)s, p_reservation_id => %(id)s,"
    " p_request => %(request)s::jsonb, p_ctx => %(ctx)s::jsonb)::text")
LIST_SQL: Final = (
    "SELECT cycles.list_reservations(p_api_key => %(key)s, p_query => %(query)s::jsonb,"
    " p_ctx => %(ctx)s::jsonb)::text")
GET_SQL: Final = (
    "SELECT cycles.get_reservation(p_api_key => %(key)s, p_reservation_id => %(id)s,"
    " p_ctx => %(ctx)s::jsonb)::text")

create_decoder: Final = msgspec.json.Decoder(ReservationCreateRequest)
commit_decoder: Final = msgspec.json.Decoder(CommitRequest)
release_decoder: Final = msgspec.json.Decoder(ReleaseRequest)
extend_decoder: Final = msgspec.json.Decoder(ReservationExtendRequest)

_subject_filter = text_param(128)
_time_bound = text_param(64)

LIST_QUERY: Final = {
    "idempotency_key": text_param(256),
    "status": enum_param("ACTIVE", "COMMITTED", "RELEASED", "EXPIRED"),
    "tenant": _subject_filter,
    "workspace": _subject_filter,
    "app": _subject_filter,
    "workflow": _subject_filter,
    "agent": _subject_filter,
    "toolset": _subject_filter,
    "from": _time_bound,
    "to": _time_bound,
    "expires_from": _time_bound,
    "expires_to": _time_bound,
    "finalized_from": _time_bound,
    "finalized_to": _time_bound,
    "sort_by": enum_param(
        "reservation_id", "tenant", "scope_path", "status", "reserved", "created_at_ms", "expires_at_ms"),
    "sort_dir": enum_param("asc", "desc"),
    "include": text_param(1024),
    "limit": int_param(1, 200),
    "cursor": text_param(2048),
}


@post("/v1/reservations")
async def create_reservation(request: Request[Any, Any, Any]) -> Response[bytes]:
    raw = await read_body(request)
    caller = api_key_caller(request)
    parsed, body = decode_body(raw, create_decoder)
    check_idempotency_header(request, parsed.idempotency_key)
    ctx = context_json(request, caller)
    # Live reserves of one key are applied in batches when several are in
    # flight at once (app.reserve_batcher); a dry run changes nothing and
    # holds no lock, so it goes alone.
    batcher: ReserveBatcher | None = request.app.state.get("reserve_batcher")
    if batcher is None or caller.api_key is None or parsed.dry_run is True:
        return await respond(request, RESERVE_SQL, {"key": caller.api_key, "request": body, "ctx": ctx})
    content = await batcher.reserve(caller.api_key, body, ctx)
    return Response(content=content, status_code=200, media_type=MediaType.JSON)


@post("/v1/reservations/{reservation_id:str}/commit")
async def commit_reservation(request: Request[Any, Any, Any], reservation_id: FromPath[str]) -> Response[bytes]:
    raw = await read_body(request)
    caller = api_key_caller(request)
    path_id = checked_reservation_id(reservation_id)
    parsed, body = decode_body(raw, commit_decoder)
    check_idempotency_header(request, parsed.idempotency_key)
    ctx = context_json(request, caller)
    # Commits and releases of one key are applied in batches when several
    # are in flight at once (app.settle_batcher).
    batcher: SettleBatcher | None = request.app.state.get("settle_batcher")
    if batcher is None or caller.api_key is None:
        return await respond(request, COMMIT_SQL, {"key": caller.api_key, "id": path_id, "request": body, "ctx": ctx})
    content = await batcher.commit(caller.api_key, path_id, body, ctx)
    return Response(content=content, status_code=200, media_type=MediaType.JSON)


@post("/v1/reservations/{reservation_id:str}/release")
async def release_reservation(request: Request[Any, Any, Any], reservation_id: FromPath[str]) -> Response[bytes]:
    raw = await read_body(request)
    caller = api_key_or_admin_caller(request)
    async with on_behalf_failures(request, caller.api_key, "releaseReservation"):
        path_id = checked_reservation_id(reservation_id)
        parsed, body = decode_body(raw, release_decoder)
        check_idempotency_header(request, parsed.idempotency_key)
        ctx = context_json(request, caller)
        # An admin's release on a tenant's behalf goes alone.
        batcher: SettleBatcher | None = request.app.state.get("settle_batcher")
        if batcher is None or caller.api_key is None:
            return await respond(request, RELEASE_SQL, {
                "key": caller.api_key, "id": path_id, "request": body, "ctx": ctx})
        content = await batcher.release(caller.api_key, path_id, body, ctx)
        return Response(content=content, status_code=200, media_type=MediaType.JSON)


@post("/v1/reservations/{reservation_id:str}/extend")
async def extend_reservation(request: Request[Any, Any, Any], reservation_id: FromPath[str]) -> Response[bytes]:
    raw = await read_body(request)
    caller = api_key_caller(request)
    path_id = checked_reservation_id(reservation_id)
    parsed, body = decode_body(raw, extend_decoder)
    check_idempotency_header(request, parsed.idempotency_key)
    return await respond(request, EXTEND_SQL, {
        "key": caller.api_key, "id": path_id, "request": body, "ctx": context_json(request, caller)})


@get("/v1/reservations")
async def list_reservations(request: Request[Any, Any, Any]) -> Response[bytes]:
    caller = api_key_or_admin_caller(request)
    async with on_behalf_failures(request, caller.api_key, "listReservations"):
        query = read_query(request, LIST_QUERY)
        return await respond(request, LIST_SQL, {
            "key": caller.api_key, "query": msgspec.json.encode(query).decode(),
            "ctx": context_json(request, caller)})


@get("/v1/reservations/{reservation_id:str}")
async def get_reservation(request: Request[Any, Any, Any], reservation_id: FromPath[str]) -> Response[bytes]:
    caller = api_key_or_admin_caller(request)
    async with on_behalf_failures(request, caller.api_key, "getReservation"):
        path_id = checked_reservation_id(reservation_id)
        return await respond(request, GET_SQL, {
            "key": caller.api_key, "id": path_id, "ctx": context_json(request, caller)})


ROUTES: Final = [
    create_reservation, commit_reservation, release_reservation, extend_reservation,
    list_reservations, get_reservation,
]
