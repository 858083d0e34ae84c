"""What the two webhook planes share: reading requests, the URL policy check,
the SQL calls, and the synchronous test probe.

/v1/admin/webhooks (app.api.webhooks_admin) and /v1/webhooks
(app.api.webhooks_tenant) call the same cycles.* functions; SQL decides what
a tenant key may do (webhooks:* or admin:webhooks:* permissions) and confines
it to its own tenant, where another tenant's subscription looks absent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec
from litestar import Request, Response
from litestar.enums import MediaType

from app.api.admin.auth import AdminPrincipal, admin_context, context_text
from app.api.request_parsing import (
    ADMIN_KEY_HEADER,
    API_KEY_HEADER,
    database,
    decode_body,
    enum_param,
    int_param,
    read_query,
    text_param,
)
from app.api.sql_call import respond
from app.errors import ApiError, invalid_request
from app.webhooks.sender import new_client, send
from app.webhooks.url_policy import UrlPolicy, url_problem
from app.webhooks.worker import COMPLETE_SQL, outcome_params

AUTHENTICATE_SQL: Final = "SELECT cycles.introspect(p_api_key => %(key)s)::text"
CREATE_SQL: Final = (
    "SELECT cycles.create_webhook(p_request => %(request)s::jsonb, p_tenant_id => %(tenant)s,"
    " p_ctx => %(ctx)s::jsonb)::text")
LIST_SQL: Final = (
    "SELECT cycles.list_webhooks(p_tenant_id => %(tenant)s, p_status => %(status)s,"
    " p_event_type => %(event_type)s, p_search => %(search)s, p_cursor => %(cursor)s, p_limit => %(limit)s,"
    " p_ctx => %(ctx)s::jsonb)::text")
GET_SQL: Final = "SELECT cycles.get_webhook(p_subscription_id => %(id)s, p_ctx => %(ctx)s::jsonb)::text"
UPDATE_SQL: Final = (
    "SELECT cycles.update_webhook(p_subscription_id => %(id)s, p_patch => %(patch)s::jsonb,"
    " p_ctx => %(ctx)s::jsonb)::text")
DELETE_SQL: Final = "SELECT cycles.delete_webhook(p_subscription_id => %(id)s, p_ctx => %(ctx)s::jsonb)::text"
DELIVERIES_SQL: Final = (
    "SELECT cycles.list_webhook_deliveries(p_subscription_id => %(id)s, p_status => %(status)s,"
    " p_from => %(from)s, p_to => %(to)s, p_cursor => %(cursor)s, p_limit => %(limit)s,"
    " p_ctx => %(ctx)s::jsonb)::text")
REPLAY_SQL: Final = (
    "SELECT cycles.replay_webhook_events(p_subscription_id => %(id)s, p_request => %(request)s::jsonb,"
    " p_ctx => %(ctx)s::jsonb)::text")
TEST_SQL: Final = "SELECT cycles.test_webhook(p_subscription_id => %(id)s, p_ctx => %(ctx)s::jsonb)::text"
CLAIM_ONE_SQL: Final = "SELECT cycles.claim_webhook_delivery(p_delivery_id => %(id)s)::text"

MAX_SUBSCRIPTION_ID_LENGTH: Final = 128
# The probe waits at most this long for the endpoint (spec: 10 s).
TEST_TIMEOUT_MS: Final = 10_000

_object_decoder: Final = msgspec.json.Decoder(dict[str, Any])

LIST_QUERY: Final = {
    "status": enum_param("ACTIVE", "PAUSED", "DISABLED"),
    "event_type": text_param(128),
    "search": text_param(128),
    "limit": int_param(1, 100),
    "cursor": text_param(64),
}


def _timestamp(name: str, raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise invalid_request(f"query parameter {name} must be an ISO-8601 date-time, got {raw[:64]!r}") from None
    if value.tzinfo is None:
        raise invalid_request(f"query parameter {name} must carry a time zone (e.g. 2026-01-01T00:00:00Z)")
    return value


DELIVERIES_QUERY: Final = {
    "status": enum_param("PENDING", "SUCCESS", "FAILED", "RETRYING"),
    "from": _timestamp,
    "to": _timestamp,
    "limit": int_param(1, 100),
    "cursor": text_param(64),
}


def subscription_id(raw: str) -> str:
    if not raw or len(raw) > MAX_SUBSCRIPTION_ID_LENGTH or "\x00" in raw:
        raise invalid_request(f"subscription_id must be 1 to {MAX_SUBSCRIPTION_ID_LENGTH} characters")
    return raw


def _policy(request: Request[Any, Any, Any]) -> UrlPolicy:
    policy: UrlPolicy = request.app.state.webhook_url_policy
    return policy


async def check_url(request: Request[Any, Any, Any], body: dict[str, Any]) -> None:
    """https unless dev mode, and no private targets unless allowed: 400
    WEBHOOK_URL_INVALID. (SQL checks the URL's shape for every caller.)"""
    url = body.get("url")
    if not isinstance(url, str):
        return  # absent or mistyped: SQL reports it
    # Checking a URL resolves its host: only for an authenticated caller. The
    # admin key was checked already; a tenant key is checked here (401 when
    # unknown, revoked or expired) before any lookup.
    api_key = request.headers.get(API_KEY_HEADER)
    if api_key and not request.headers.get(ADMIN_KEY_HEADER):
        await database(request).fetch_json(AUTHENTICATE_SQL, {"key": api_key})
    problem = await url_problem(url, _policy(request))
    if problem is not None:
        raise ApiError(400, "WEBHOOK_URL_INVALID", problem, {"url": url[:256]})


def decode_object(raw: bytes) -> tuple[dict[str, Any], str]:
    return decode_body(raw, _object_decoder)


def ctx(request: Request[Any, Any, Any], principal: AdminPrincipal, on_behalf_of: bool) -> str:
    return context_text(admin_context(request, principal, on_behalf_of=on_behalf_of))


async def create(
    request: Request[Any, Any, Any], raw: bytes, tenant: str | None, context: str,
) -> Response[bytes]:
    parsed, body = decode_object(raw)
    await check_url(request, parsed)
    return await respond(request, CREATE_SQL, {"request": body, "tenant": tenant, "ctx": context}, status=201)


async def list_subscriptions(
    request: Request[Any, Any, Any], tenant: str | None, query: dict[str, Any], context: str,
) -> Response[bytes]:
    return await respond(request, LIST_SQL, {
        "tenant": tenant, "status": query.get("status"), "event_type": query.get("event_type"),
        "search": query.get("search"), "cursor": query.get("cursor"), "limit": query.get("limit"),
        "ctx": context})


async def get_one(request: Request[Any, Any, Any], sub_id: str, context: str) -> Response[bytes]:
    return await respond(request, GET_SQL, {"id": subscription_id(sub_id), "ctx": context})


async def update(request: Request[Any, Any, Any], sub_id: str, raw: bytes, context: str) -> Response[bytes]:
    path_id = subscription_id(sub_id)
    parsed, body = decode_object(raw)
    await check_url(request, parsed)
    return await respond(request, UPDATE_SQL, {"id": path_id, "patch": body, "ctx": context})


async def delete(request: Request[Any, Any, Any], sub_id: str, context: str) -> None:
    await database(request).fetch_json(DELETE_SQL, {"id": subscription_id(sub_id), "ctx": context})


async def deliveries(request: Request[Any, Any, Any], sub_id: str, context: str) -> Response[bytes]:
    path_id = subscription_id(sub_id)
    query = read_query(request, DELIVERIES_QUERY)
    return await respond(request, DELIVERIES_SQL, {
        "id": path_id, "status": query.get("status"), "from": query.get("from"), "to": query.get("to"),
        "cursor": query.get("cursor"), "limit": query.get("limit"), "ctx": context})


async def replay(request: Request[Any, Any, Any], sub_id: str, raw: bytes, context: str) -> Response[bytes]:
    path_id = subscription_id(sub_id)
    _, body = decode_object(raw) if raw.strip() else ({}, "{}")
    return await respond(request, REPLAY_SQL, {"id": path_id, "request": body, "ctx": context}, status=202)


async def test_probe(request: Request[Any, Any, Any], sub_id: str, context: str) -> Response[bytes]:
    """Queues the system.webhook_test delivery, sends it and records the
    outcome in one transaction: no worker ever sees it pending."""
    path_id = subscription_id(sub_id)
    async with database(request).pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(TEST_SQL, {"id": path_id, "ctx": context})
        row = await cursor.fetchone()
        assert row is not None
        queued: dict[str, Any] = msgspec.json.decode(row[0])
        cursor = await conn.execute(CLAIM_ONE_SQL, {"id": queued["delivery_id"]})
        row = await cursor.fetchone()
        assert row is not None
        claim: dict[str, Any] = msgspec.json.decode(row[0])
        if not claim:  # deleted meanwhile (the probe is only locked, not the subscription)
            raise ApiError(404, "WEBHOOK_NOT_FOUND", f"webhook subscription {path_id!r} not found")
        async with new_client(TEST_TIMEOUT_MS) as client:
            outcome = await send(client, claim, _policy(request))
        await conn.execute(COMPLETE_SQL, outcome_params(queued["delivery_id"], outcome))
    result = {
        "success": outcome.success, "response_status": outcome.response_status,
        "response_time_ms": outcome.response_time_ms, "error_message": outcome.error_message,
        "event_id": queued["event_id"]}
    body = msgspec.json.encode({k: v for k, v in result.items() if v is not None})
    return Response(content=body, status_code=200, media_type=MediaType.JSON)
