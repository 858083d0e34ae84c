"""Bulk actions: POST /v1/admin/tenants/bulk-action and /v1/admin/budgets/bulk-action.

The guards (expected_count, the 500-row limit, the 15-minute idempotency
window) and the per-row outcomes are cycles.bulk_tenant_action and
cycles.bulk_budget_action; this module only reads the request's shape.
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, Response, post

from app.api.admin.calls import AdminCall, amount_field, int_field, json_text, object_body, string_field
from app.api.request_parsing import read_body
from app.errors import invalid_request

TENANT_SQL: Final = (
    "SELECT cycles.bulk_tenant_action(p_filter => %(filter)s::jsonb, p_action => %(action)s,"
    " p_idempotency_key => %(key)s, p_expected_count => %(expected)s, p_ctx => %(ctx)s::jsonb)::text")
BUDGET_SQL: Final = (
    "SELECT cycles.bulk_budget_action(p_filter => %(filter)s::jsonb, p_action => %(action)s,"
    " p_idempotency_key => %(key)s, p_amount => %(amount)s, p_unit => %(unit)s, p_spent => %(spent)s,"
    " p_expected_count => %(expected)s, p_reason => %(reason)s, p_ctx => %(ctx)s::jsonb)::text")

_TENANT_FIELDS: Final = frozenset({"filter", "action", "expected_count", "idempotency_key"})
_BUDGET_FIELDS: Final = frozenset(
    {"filter", "action", "amount", "spent", "reason", "expected_count", "idempotency_key"})
MAX_EXPECTED_COUNT: Final = 2**31 - 1


def _common(body: dict[str, Any], allowed: frozenset[str]) -> tuple[str, str, str, int | None]:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid_request(f"unknown field(s): {', '.join(unknown)}", {"unknown": unknown})
    bulk_filter = body.get("filter")
    if not isinstance(bulk_filter, dict):
        raise invalid_request("filter is required: a JSON object")
    expected = int_field(body, "expected_count")
    if expected is not None and not 0 <= expected <= MAX_EXPECTED_COUNT:
        raise invalid_request("expected_count must be >= 0")
    return (json_text(bulk_filter), string_field(body, "action", required=True, max_length=32) or "",
            string_field(body, "idempotency_key", required=True, max_length=1024) or "", expected)


@post("/v1/admin/tenants/bulk-action", status_code=200)
async def bulk_tenants(request: Request[Any, Any, Any]) -> Response[bytes]:
    raw = await read_body(request)
    async with AdminCall(request, "bulkActionTenants", "tenant") as call:
        call.authenticate(allow_tenant_key=False)
        body = object_body(raw)
        bulk_filter, action, key, expected = _common(body, _TENANT_FIELDS)
        return await call.respond(TENANT_SQL, {
            "filter": bulk_filter, "action": action, "key": key, "expected": expected, "ctx": call.context()})


@post("/v1/admin/budgets/bulk-action", status_code=200)
async def bulk_budgets(request: Request[Any, Any, Any]) -> Response[bytes]:
    raw = await read_body(request)
    async with AdminCall(request, "bulkActionBudgets", "budget") as call:
        call.authenticate(allow_tenant_key=False)
        body = object_body(raw)
        bulk_filter, action, key, expected = _common(body, _BUDGET_FIELDS)
        filter_tenant = body["filter"].get("tenant_id")
        call.tenant_id = filter_tenant if isinstance(filter_tenant, str) else None
        amount, unit = amount_field(body, "amount", unit=None)
        spent, _ = amount_field(body, "spent", unit=unit)
        return await call.respond(BUDGET_SQL, {
            "filter": bulk_filter, "action": action, "key": key, "amount": amount, "unit": unit,
            "spent": spent, "expected": expected, "reason": string_field(body, "reason", max_length=4096),
            "ctx": call.context()})


ROUTES: Final = [bulk_tenants, bulk_budgets]
