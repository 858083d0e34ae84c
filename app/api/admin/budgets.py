"""Budgets: create, list, lookup, patch, fund, freeze, unfreeze.

createBudget, listBudgets, lookupBudget and fundBudget accept a tenant key
(its permission, tenant and scope_filter are checked by the SQL function) or
the admin key acting on a tenant's behalf; patch, freeze and unfreeze are
for the admin key and for tenant keys granted admin:budgets:write.
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, Response, get, patch, post

from app.api.admin.calls import AdminCall, amount_field, json_text, object_body, string_field
from app.api.request_parsing import (
    QueryReader,
    bool_param,
    enum_param,
    int_param,
    read_body,
    read_query,
    text_param,
)
from app.errors import invalid_request

CREATE_SQL: Final = (
    "SELECT cycles.create_budget(p_scope => %(scope)s, p_unit => %(unit)s, p_allocated => %(allocated)s,"
    " p_overdraft_limit => %(overdraft_limit)s, p_commit_overage_policy => %(policy)s,"
    " p_options => %(options)s::jsonb, p_ctx => %(ctx)s::jsonb)::text")
LIST_SQL: Final = (
    "SELECT cycles.list_budgets(p_tenant_id => %(tenant_id)s, p_scope_prefix => %(scope_prefix)s,"
    " p_unit => %(unit)s, p_status => %(status)s, p_limit => %(limit)s, p_cursor => %(cursor)s,"
    " p_over_limit => %(over_limit)s, p_has_debt => %(has_debt)s, p_utilization_min => %(utilization_min)s::numeric,"
    " p_utilization_max => %(utilization_max)s::numeric, p_search => %(search)s, p_ctx => %(ctx)s::jsonb)::text")
LOOKUP_SQL: Final = (
    "SELECT cycles.get_budget(p_scope => %(scope)s, p_unit => %(unit)s, p_ctx => %(ctx)s::jsonb)::text")
UPDATE_SQL: Final = (
    "SELECT cycles.update_budget(p_scope => %(scope)s, p_unit => %(unit)s, p_patch => %(patch)s::jsonb,"
    " p_ctx => %(ctx)s::jsonb)::text")
FREEZE_SQL: Final = (
    "SELECT cycles.freeze_budget(p_scope => %(scope)s, p_unit => %(unit)s, p_reason => %(reason)s,"
    " p_ctx => %(ctx)s::jsonb)::text")
UNFREEZE_SQL: Final = (
    "SELECT cycles.unfreeze_budget(p_scope => %(scope)s, p_unit => %(unit)s, p_reason => %(reason)s,"
    " p_ctx => %(ctx)s::jsonb)::text")
FUND_SQL: Final = (
    "SELECT cycles.fund_budget(p_scope => %(scope)s, p_unit => %(unit)s, p_operation => %(operation)s,"
    " p_amount => %(amount)s, p_idempotency_key => %(key)s, p_spent => %(spent)s, p_reason => %(reason)s,"
    " p_tenant_id => %(tenant_id)s, p_ctx => %(ctx)s::jsonb)::text")

UNITS: Final = ("USD_MICROCENTS", "TOKENS", "CREDITS", "RISK_POINTS")


def _fraction(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise invalid_request(f"query parameter {name} must be a number in [0, 1], got {raw[:64]!r}")
    return value


LIST_QUERY: Final[dict[str, QueryReader]] = {
    "tenant_id": text_param(64),
    "scope_prefix": text_param(1024),
    "unit": enum_param(*UNITS),
    "status": enum_param("ACTIVE", "FROZEN", "CLOSED"),
    "over_limit": bool_param,
    "has_debt": bool_param,
    "utilization_min": _fraction,
    "utilization_max": _fraction,
    "search": text_param(128),
    "limit": int_param(1, 100),
    "cursor": text_param(128),
}
TARGET_QUERY: Final[dict[str, QueryReader]] = {
    "scope": text_param(1024),
    "unit": enum_param(*UNITS),
    "tenant_id": text_param(64),
}

_CREATE_FIELDS: Final = frozenset({
    "tenant_id", "scope", "unit", "allocated", "overdraft_limit", "commit_overage_policy", "rollover_policy",
    "period_start", "period_end", "metadata"})
_FUND_FIELDS: Final = frozenset({"operation", "amount", "spent", "reason", "idempotency_key", "metadata"})
_TRANSITION_FIELDS: Final = frozenset({"reason", "metadata"})


def _require_known(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid_request(f"unknown field(s): {', '.join(unknown)}", {"unknown": unknown})


def _target(call: AdminCall) -> tuple[str, str, dict[str, Any]]:
    """scope and unit from the query string (both required)."""
    query = read_query(call.request, TARGET_QUERY)
    scope, unit = query.get("scope"), query.get("unit")
    if scope is None or unit is None:
        raise invalid_request("query parameters scope and unit are required")
    call.resource_id = f"{scope} {unit}"
    return scope, unit, query


@post("/v1/admin/budgets")
async def create_budget(request: Request[Any, Any, Any]) -> Response[bytes]:
    raw = await read_body(request)
    async with AdminCall(request, "createBudget", "budget") as call:
        call.on_behalf_of = True
        principal = call.authenticate()
        body = object_body(raw)
        _require_known(body, _CREATE_FIELDS)
        if body.get("period_start") is not None or body.get("period_end") is not None:
            raise invalid_request("period_start and period_end are not supported: budgets have no periods")
        tenant_id = string_field(body, "tenant_id", max_length=256)
        if principal.kind == "admin" and tenant_id is None:
            raise invalid_request("tenant_id is required when creating a budget with the admin key")
        call.tenant_id = tenant_id
        scope = string_field(body, "scope", required=True, max_length=1024)
        unit = string_field(body, "unit", required=True, max_length=32)
        allocated, _ = amount_field(body, "allocated", unit=unit, required=True)
        overdraft, _ = amount_field(body, "overdraft_limit", unit=unit)
        options = {key: body[key] for key in ("tenant_id", "rollover_policy", "metadata") if key in body}
        call.resource_id = f"{scope} {unit}"
        return await call.respond(CREATE_SQL, {
            "scope": scope, "unit": unit, "allocated": allocated, "overdraft_limit": overdraft or 0,
            "policy": string_field(body, "commit_overage_policy", max_length=64),
            "options": json_text(options), "ctx": call.context()}, status=201)


@get("/v1/admin/budgets")
async def list_budgets(request: Request[Any, Any, Any]) -> Response[bytes]:
    async with AdminCall(request, "listBudgets", "budget") as call:
        call.on_behalf_of = True
        call.authenticate()
        query = read_query(request, LIST_QUERY)
        call.tenant_id = query.get("tenant_id")
        params = {name: query.get(name) for name in LIST_QUERY}
        return await call.respond(LIST_SQL, {**params, "ctx": call.context()})


@get("/v1/admin/budgets/lookup")
async def lookup_budget(request: Request[Any, Any, Any]) -> Response[bytes]:
    async with AdminCall(request, "lookupBudget", "budget") as call:
        call.on_behalf_of = True
        call.authenticate()
        scope, unit, _ = _target(call)
        return await call.respond(LOOKUP_SQL, {"scope": scope, "unit": unit, "ctx": call.context()})


@patch("/v1/admin/budgets")
async def update_budget(request: Request[Any, Any, Any]) -> Response[bytes]:
    raw = await read_body(request)
    async with AdminCall(request, "updateBudget", "budget") as call:
        call.authenticate()
        scope, unit, _ = _target(call)
        body = object_body(raw)
        return await call.respond(UPDATE_SQL, {
            "scope": scope, "unit": unit, "patch": json_text(body), "ctx": call.context()})


async def _transition(request: Request[Any, Any, Any], operation: str, sql: str) -> Response[bytes]:
    raw = await read_body(request)
    async with AdminCall(request, operation, "budget") as call:
        call.authenticate()
        scope, unit, _ = _target(call)
        body = object_body(raw, required=False)
        _require_known(body, _TRANSITION_FIELDS)
        return await call.respond(sql, {
            "scope": scope, "unit": unit, "reason": string_field(body, "reason", max_length=4096),
            "ctx": call.context()})


@post("/v1/admin/budgets/freeze", status_code=200)
async def freeze_budget(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _transition(request, "freezeBudget", FREEZE_SQL)


@post("/v1/admin/budgets/unfreeze", status_code=200)
async def unfreeze_budget(request: Request[Any, Any, Any]) -> Response[bytes]:
    return await _transition(request, "unfreezeBudget", UNFREEZE_SQL)


@post("/v1/admin/budgets/fund", status_code=200)
async def fund_budget(request: Request[Any, Any, Any]) -> Response[bytes]:
    raw = await read_body(request)
    async with AdminCall(request, "fundBudget", "budget") as call:
        call.on_behalf_of = True
        principal = call.authenticate()
        scope, unit, query = _target(call)
        tenant_id = query.get("tenant_id") if principal.kind == "admin" else None
        if principal.kind == "admin" and tenant_id is None:
            raise invalid_request("query parameter tenant_id is required with the admin key")
        call.tenant_id = tenant_id
        body = object_body(raw)
        _require_known(body, _FUND_FIELDS)
        amount, _ = amount_field(body, "amount", unit=unit, required=True)
        spent, _ = amount_field(body, "spent", unit=unit)
        return await call.respond(FUND_SQL, {
            "scope": scope, "unit": unit, "operation": string_field(body, "operation", required=True, max_length=32),
            "amount": amount, "key": string_field(body, "idempotency_key", required=True, max_length=1024),
            "spent": spent, "reason": string_field(body, "reason", max_length=4096), "tenant_id": tenant_id,
            "ctx": call.context()})


ROUTES: Final = [
    create_budget, list_budgets, lookup_budget, update_budget, freeze_budget, unfreeze_budget, fund_budget,
]
