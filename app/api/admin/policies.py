"""Policies over REST: create, list, get and patch /v1/admin/policies.

Dual auth: a tenant key (policies:* or admin:policies:*, checked in SQL)
manages its own tenant's policies; the admin key acts on a named tenant's
behalf (tenant_id in the create body, tenant_id query parameter on list).
Disabling is a patch with status DISABLED.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Request, Response, get, patch, post
from litestar.params import FromPath
from msgspec import UNSET, Meta, Struct, UnsetType

from app.api.admin.calls import AdminCall
from app.api.request_parsing import decode_body, enum_param, int_param, read_body, read_query, text_param
from app.errors import invalid_request

CREATE_SQL: Final = (
    "SELECT cycles.create_policy(p_tenant_id => %(tenant_id)s, p_name => %(name)s,"
    " p_scope_pattern => %(scope_pattern)s, p_priority => %(priority)s, p_caps => %(caps)s::jsonb,"
    " p_commit_overage_policy => %(commit_overage_policy)s,"
    " p_reservation_ttl_override => %(reservation_ttl_override)s::jsonb, p_rate_limits => %(rate_limits)s::jsonb,"
    " p_effective_from => %(effective_from)s, p_effective_until => %(effective_until)s,"
    " p_description => %(description)s, p_ctx => %(ctx)s::jsonb)::text")
LIST_SQL: Final = (
    "SELECT cycles.list_policies(p_tenant_id => %(tenant_id)s, p_scope_pattern => %(scope_pattern)s,"
    " p_status => %(status)s, p_limit => %(limit)s, p_cursor => %(cursor)s, p_ctx => %(ctx)s::jsonb)::text")
GET_SQL: Final = "SELECT cycles.get_policy(p_policy_id => %(id)s, p_ctx => %(ctx)s::jsonb)::text"
UPDATE_SQL: Final = (
    "SELECT cycles.update_policy(p_policy_id => %(id)s, p_patch => %(patch)s::jsonb,"
    " p_ctx => %(ctx)s::jsonb)::text")

MAX_POLICY_ID_LENGTH: Final = 128


class PolicyCreateRequest(Struct, forbid_unknown_fields=True):
    """Top-level shape only: caps, TTL override and rate limits are checked
    field by field in SQL, which owns their rules."""

    name: Annotated[str, Meta(min_length=1, max_length=256)]
    scope_pattern: Annotated[str, Meta(min_length=1, max_length=1024)]
    tenant_id: Annotated[str, Meta(max_length=64)] | UnsetType = UNSET
    description: Annotated[str, Meta(max_length=1024)] | UnsetType = UNSET
    priority: Annotated[int, Meta(ge=0, le=2**31 - 1)] = 0
    caps: dict[str, Any] | UnsetType | None = UNSET
    commit_overage_policy: Literal["REJECT", "ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT"] | UnsetType = UNSET
    reservation_ttl_override: dict[str, Any] | UnsetType | None = UNSET
    rate_limits: dict[str, Any] | UnsetType | None = UNSET
    effective_from: datetime | UnsetType = UNSET
    effective_until: datetime | UnsetType = UNSET


_create_decoder: Final = msgspec.json.Decoder(PolicyCreateRequest)
# A patch is any JSON object; update_policy rejects unknown fields and bad values.
_patch_decoder: Final = msgspec.json.Decoder(dict[str, Any])

LIST_QUERY: Final = {
    "tenant_id": text_param(64),
    "scope_pattern": text_param(1024),
    "status": enum_param("ACTIVE", "DISABLED"),
    "limit": int_param(1, 100),
    "cursor": text_param(256),
}


def _json_or_none(value: Any) -> str | None:
    return None if value is UNSET or value is None else msgspec.json.encode(value).decode()


def _aware(value: datetime | UnsetType, field: str) -> datetime | None:
    if value is UNSET:
        return None
    assert isinstance(value, datetime)
    if value.tzinfo is None:
        raise invalid_request(f"{field} must carry a time zone (e.g. 2026-01-01T00:00:00Z)")
    return value


def _policy_id(raw: str) -> str:
    if not raw or len(raw) > MAX_POLICY_ID_LENGTH or "\x00" in raw:
        raise invalid_request(f"policy_id must be 1 to {MAX_POLICY_ID_LENGTH} characters")
    return raw


@post("/v1/admin/policies")
async def create_policy(request: Request[Any, Any, Any]) -> Response[bytes]:
    raw = await read_body(request)
    async with AdminCall(request, "createPolicy", "policy") as call:
        call.on_behalf_of = True
        principal = call.authenticate()
        parsed, _ = decode_body(raw, _create_decoder)
        if principal.kind == "tenant" and parsed.tenant_id is not UNSET:
            raise invalid_request("tenant_id must not be set when authenticating with an API key")
        if principal.kind == "admin" and parsed.tenant_id is UNSET:
            raise invalid_request("tenant_id is required when using admin key authentication")
        call.tenant_id = None if parsed.tenant_id is UNSET else parsed.tenant_id
        return await call.respond(CREATE_SQL, {
            "tenant_id": call.tenant_id,
            "name": parsed.name,
            "scope_pattern": parsed.scope_pattern,
            "priority": parsed.priority,
            "caps": _json_or_none(parsed.caps),
            "commit_overage_policy": None if parsed.commit_overage_policy is UNSET else parsed.commit_overage_policy,
            "reservation_ttl_override": _json_or_none(parsed.reservation_ttl_override),
            "rate_limits": _json_or_none(parsed.rate_limits),
            "effective_from": _aware(parsed.effective_from, "effective_from"),
            "effective_until": _aware(parsed.effective_until, "effective_until"),
            "description": None if parsed.description is UNSET else parsed.description,
            "ctx": call.context(),
        }, status=201)


@get("/v1/admin/policies")
async def list_policies(request: Request[Any, Any, Any]) -> Response[bytes]:
    async with AdminCall(request, "listPolicies", "policy") as call:
        call.on_behalf_of = True
        principal = call.authenticate()
        query = read_query(request, LIST_QUERY)
        if principal.kind == "tenant":
            query.pop("tenant_id", None)  # a tenant key always lists its own tenant's
        elif "tenant_id" not in query:
            raise invalid_request("tenant_id query parameter is required when using admin key authentication")
        call.tenant_id = query.get("tenant_id")
        return await call.respond(LIST_SQL, {
            "tenant_id": query.get("tenant_id"), "scope_pattern": query.get("scope_pattern"),
            "status": query.get("status"), "limit": query.get("limit"), "cursor": query.get("cursor"),
            "ctx": call.context()})


@get("/v1/admin/policies/{policy_id:str}")
async def get_policy(request: Request[Any, Any, Any], policy_id: FromPath[str]) -> Response[bytes]:
    async with AdminCall(request, "getPolicy", "policy") as call:
        call.on_behalf_of = True
        call.authenticate()
        call.resource_id = _policy_id(policy_id)
        return await call.respond(GET_SQL, {"id": call.resource_id, "ctx": call.context()})


@patch("/v1/admin/policies/{policy_id:str}")
async def update_policy(request: Request[Any, Any, Any], policy_id: FromPath[str]) -> Response[bytes]:
    raw = await read_body(request)
    async with AdminCall(request, "updatePolicy", "policy") as call:
        call.on_behalf_of = True
        call.authenticate()
        call.resource_id = _policy_id(policy_id)
        _, body = decode_body(raw, _patch_decoder)
        return await call.respond(UPDATE_SQL, {"id": call.resource_id, "patch": body, "ctx": call.context()})


ROUTES: Final = [create_policy, list_policies, get_policy, update_policy]
