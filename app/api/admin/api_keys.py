"""API keys: POST/GET /v1/admin/api-keys, GET/PATCH/DELETE /v1/admin/api-keys/{key_id}."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from litestar import Request, Response, delete, get, patch, post
from litestar.params import FromPath

from app.api.admin.calls import AdminCall, json_text, object_body, string_field, string_list_field
from app.api.request_parsing import enum_param, int_param, read_body, read_query, text_param
from app.errors import invalid_request

CREATE_SQL: Final = (
    "SELECT cycles.create_api_key(p_tenant_id => %(tenant_id)s, p_name => %(name)s,"
    " p_permissions => %(permissions)s, p_expires_at => %(expires_at)s, p_options => %(options)s::jsonb,"
    " p_ctx => %(ctx)s::jsonb)::text")
LIST_SQL: Final = (
    "SELECT cycles.list_api_keys(p_tenant_id => %(tenant_id)s, p_status => %(status)s, p_limit => %(limit)s,"
    " p_cursor => %(cursor)s, p_search => %(search)s, p_ctx => %(ctx)s::jsonb)::text")
GET_SQL: Final = "SELECT cycles.get_api_key(p_key_id => %(key_id)s, p_ctx => %(ctx)s::jsonb)::text"
UPDATE_SQL: Final = (
    "SELECT cycles.update_api_key(p_key_id => %(key_id)s, p_patch => %(patch)s::jsonb,"
    " p_ctx => %(ctx)s::jsonb)::text")
REVOKE_SQL: Final = (
    "SELECT cycles.revoke_api_key(p_key_id => %(key_id)s, p_reason => %(reason)s, p_ctx => %(ctx)s::jsonb)::text")

LIST_QUERY: Final = {
    "tenant_id": text_param(64),
    "status": enum_param("ACTIVE", "REVOKED", "EXPIRED"),
    "search": text_param(128),
    "limit": int_param(1, 100),
    "cursor": text_param(128),
}
REVOKE_QUERY: Final = {"reason": text_param(512)}

_CREATE_FIELDS: Final = frozenset(
    {"tenant_id", "name", "description", "permissions", "scope_filter", "expires_at", "metadata"})


def _expires_at(body: dict[str, Any]) -> datetime | None:
    raw = string_field(body, "expires_at", max_length=64)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise invalid_request(f"expires_at must be an ISO-8601 date-time, got {raw!r}") from None
    if value.tzinfo is None:
        raise invalid_request("expires_at must carry a time zone (e.g. Z)")
    return value


def _key_id(raw: str) -> str:
    return raw.replace("\x00", "")


@post("/v1/admin/api-keys")
async def create_api_key(request: Request[Any, Any, Any]) -> Response[bytes]:
    raw = await read_body(request)
    async with AdminCall(request, "createApiKey", "api_key") as call:
        call.authenticate(allow_tenant_key=False)
        body = object_body(raw)
        unknown = sorted(set(body) - _CREATE_FIELDS)
        if unknown:
            raise invalid_request(f"unknown field(s): {', '.join(unknown)}", {"unknown": unknown})
        call.tenant_id = string_field(body, "tenant_id", required=True, max_length=256)
        options = {key: body[key] for key in ("description", "scope_filter", "metadata") if key in body}
        return await call.respond(CREATE_SQL, {
            "tenant_id": call.tenant_id, "name": string_field(body, "name", required=True),
            "permissions": string_list_field(body, "permissions"), "expires_at": _expires_at(body),
            "options": json_text(options), "ctx": call.context()}, status=201)


@get("/v1/admin/api-keys")
async def list_api_keys(request: Request[Any, Any, Any]) -> Response[bytes]:
    async with AdminCall(request, "listApiKeys", "api_key") as call:
        call.authenticate(allow_tenant_key=False)
        query = read_query(request, LIST_QUERY)
        call.tenant_id = query.get("tenant_id")
        return await call.respond(LIST_SQL, {
            "tenant_id": query.get("tenant_id"), "status": query.get("status"), "limit": query.get("limit"),
            "cursor": query.get("cursor"), "search": query.get("search"), "ctx": call.context()})


@get("/v1/admin/api-keys/{key_id:str}")
async def get_api_key(request: Request[Any, Any, Any], key_id: FromPath[str]) -> Response[bytes]:
    async with AdminCall(request, "getApiKey", "api_key") as call:
        call.resource_id = _key_id(key_id)
        call.authenticate(allow_tenant_key=False)
        return await call.respond(GET_SQL, {"key_id": call.resource_id, "ctx": call.context()})


@patch("/v1/admin/api-keys/{key_id:str}")
async def update_api_key(request: Request[Any, Any, Any], key_id: FromPath[str]) -> Response[bytes]:
    raw = await read_body(request)
    async with AdminCall(request, "updateApiKey", "api_key") as call:
        call.resource_id = _key_id(key_id)
        call.authenticate(allow_tenant_key=False)
        body = object_body(raw)
        return await call.respond(UPDATE_SQL, {
            "key_id": call.resource_id, "patch": json_text(body), "ctx": call.context()})


@delete("/v1/admin/api-keys/{key_id:str}", status_code=200)
async def revoke_api_key(request: Request[Any, Any, Any], key_id: FromPath[str]) -> Response[bytes]:
    async with AdminCall(request, "revokeApiKey", "api_key") as call:
        call.resource_id = _key_id(key_id)
        call.authenticate(allow_tenant_key=False)
        query = read_query(request, REVOKE_QUERY)
        return await call.respond(REVOKE_SQL, {
            "key_id": call.resource_id, "reason": query.get("reason"), "ctx": call.context()})


ROUTES: Final = [create_api_key, list_api_keys, get_api_key, update_api_key, revoke_api_key]
