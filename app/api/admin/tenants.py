"""Tenants: POST/GET /v1/admin/tenants, GET/PATCH /v1/admin/tenants/{tenant_id}.

Suspend, reactivate and close are PATCH {"status": ...}, as in the spec;
close runs the whole cascade in the one cycles.update_tenant transaction.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from litestar import Request, Response, get, patch, post
from litestar.enums import MediaType
from litestar.params import FromPath

from app.api.admin.calls import AdminCall, json_text, object_body, string_field
from app.api.request_parsing import enum_param, int_param, read_body, read_query, text_param

CREATE_SQL: Final = (
    "SELECT cycles.create_tenant(p_tenant_id => %(tenant_id)s, p_name => %(name)s,"
    " p_options => %(options)s::jsonb, p_ctx => %(ctx)s::jsonb)::text")
LIST_SQL: Final = (
    "SELECT cycles.list_tenants(p_status => %(status)s, p_parent_tenant_id => %(parent_tenant_id)s,"
    " p_search => %(search)s, p_limit => %(limit)s, p_cursor => %(cursor)s, p_ctx => %(ctx)s::jsonb)::text")
GET_SQL: Final = "SELECT cycles.get_tenant(p_tenant_id => %(tenant_id)s, p_ctx => %(ctx)s::jsonb)::text"
UPDATE_SQL: Final = (
    "SELECT cycles.update_tenant(p_tenant_id => %(tenant_id)s, p_patch => %(patch)s::jsonb,"
    " p_ctx => %(ctx)s::jsonb)::text")

LIST_QUERY: Final = {
    "status": enum_param("ACTIVE", "SUSPENDED", "CLOSED"),
    "parent_tenant_id": text_param(64),
    "search": text_param(128),
    "limit": int_param(1, 100),
    "cursor": text_param(128),
}


class _Created(msgspec.Struct):
    status: int
    body: msgspec.Raw


_created_decoder: Final = msgspec.json.Decoder(_Created)


def _path_tenant_id(raw: str) -> str:
    # Anything is passed on (an unknown id is TENANT_NOT_FOUND in SQL); only
    # NUL, which PostgreSQL text cannot hold, is taken out.
    return raw.replace("\x00", "")


@post("/v1/admin/tenants")
async def create_tenant(request: Request[Any, Any, Any]) -> Response[bytes]:
    raw = await read_body(request)
    async with AdminCall(request, "createTenant", "tenant") as call:
        call.authenticate(allow_tenant_key=False)
        body = object_body(raw)
        tenant_id = string_field(body, "tenant_id", required=True, max_length=256)
        name = string_field(body, "name", required=True, max_length=1024)
        call.resource_id = call.tenant_id = tenant_id
        options = {key: value for key, value in body.items() if key not in ("tenant_id", "name")}
        result = _created_decoder.decode(await call.fetch(CREATE_SQL, {
            "tenant_id": tenant_id, "name": name, "options": json_text(options),
            "ctx": call.context(with_status=True)}))
        return Response(content=bytes(result.body), status_code=result.status, media_type=MediaType.JSON)


@get("/v1/admin/tenants")
async def list_tenants(request: Request[Any, Any, Any]) -> Response[bytes]:
    async with AdminCall(request, "listTenants", "tenant") as call:
        call.authenticate(allow_tenant_key=False)
        query = read_query(request, LIST_QUERY)
        return await call.respond(LIST_SQL, {
            "status": query.get("status"), "parent_tenant_id": query.get("parent_tenant_id"),
            "search": query.get("search"), "limit": query.get("limit"), "cursor": query.get("cursor"),
            "ctx": call.context()})


@get("/v1/admin/tenants/{tenant_id:str}")
async def get_tenant(request: Request[Any, Any, Any], tenant_id: FromPath[str]) -> Response[bytes]:
    async with AdminCall(request, "getTenant", "tenant") as call:
        call.resource_id = call.tenant_id = _path_tenant_id(tenant_id)
        call.authenticate(allow_tenant_key=False)
        return await call.respond(GET_SQL, {"tenant_id": call.tenant_id, "ctx": call.context()})


@patch("/v1/admin/tenants/{tenant_id:str}")
async def update_tenant(request: Request[Any, Any, Any], tenant_id: FromPath[str]) -> Response[bytes]:
    raw = await read_body(request)
    async with AdminCall(request, "updateTenant", "tenant") as call:
        call.resource_id = call.tenant_id = _path_tenant_id(tenant_id)
        call.authenticate(allow_tenant_key=False)
        body = object_body(raw)
        return await call.respond(UPDATE_SQL, {
            "tenant_id": call.tenant_id, "patch": json_text(body), "ctx": call.context()})


ROUTES: Final = [create_tenant, list_tenants, get_tenant, update_tenant]
