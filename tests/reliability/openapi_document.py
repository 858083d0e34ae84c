"""An OpenAPI document of the server built from the server itself: every
route and method of the Litestar app (app.main.create_app), the query
parameters each handler reads (the handlers' own query tables), the runtime
request bodies from the msgspec structs the handlers decode with (app.wire),
admin bodies as objects with their known fields, and the one error shape
every non-2xx answer must have.

The app publishes no OpenAPI document of its own (openapi_config=None; its
handlers read raw bodies), so the fuzzing tests derive one here: a route
added to the app is fuzzed without anyone listing it.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from app.api import balances, reservations, webhooks_admin, webhooks_common, webhooks_tenant
from app.api.admin import api_keys, audit, budgets, policies, tenants
from app.api.admin import events as admin_events
from app.config import Settings
from app.main import create_app
from app.wire import (
    CommitRequest,
    DecisionRequest,
    EventCreateRequest,
    ReleaseRequest,
    ReservationCreateRequest,
    ReservationExtendRequest,
)

REF = "#/components/schemas/{name}"

RUNTIME_BODIES: dict[tuple[str, str], type[msgspec.Struct]] = {
    ("POST", "/v1/reservations"): ReservationCreateRequest,
    ("POST", "/v1/reservations/{reservation_id}/commit"): CommitRequest,
    ("POST", "/v1/reservations/{reservation_id}/release"): ReleaseRequest,
    ("POST", "/v1/reservations/{reservation_id}/extend"): ReservationExtendRequest,
    ("POST", "/v1/decide"): DecisionRequest,
    ("POST", "/v1/events"): EventCreateRequest,
}

_STRING = {"type": "string"}
_AMOUNT = {"$ref": REF.format(name="Amount")}


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


ADMIN_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/admin/tenants"): _object(
        tenant_id=_STRING, name=_STRING, parent_tenant_id=_STRING, metadata={"type": "object"},
        default_commit_overage_policy=_STRING, default_reservation_ttl_ms={"type": "integer"}),
    ("PATCH", "/v1/admin/tenants/{tenant_id}"): _object(name=_STRING, status=_STRING, metadata={"type": "object"}),
    ("POST", "/v1/admin/api-keys"): _object(
        tenant_id=_STRING, name=_STRING, permissions={"type": "array", "items": _STRING},
        scope_filter={"type": "array", "items": _STRING}, expires_at=_STRING),
    ("PATCH", "/v1/admin/api-keys/{key_id}"): _object(
        name=_STRING, permissions={"type": "array", "items": _STRING}),
    ("POST", "/v1/admin/budgets"): _object(
        tenant_id=_STRING, scope=_STRING, unit=_STRING, allocated=_AMOUNT, overdraft_limit=_AMOUNT,
        commit_overage_policy=_STRING),
    ("PATCH", "/v1/admin/budgets"): _object(overdraft_limit=_AMOUNT, metadata={"type": "object"}),
    ("POST", "/v1/admin/budgets/freeze"): _object(reason=_STRING),
    ("POST", "/v1/admin/budgets/unfreeze"): _object(reason=_STRING),
    ("POST", "/v1/admin/budgets/fund"): _object(
        operation={"enum": ["CREDIT", "DEBIT", "RESET", "RESET_SPENT", "REPAY_DEBT"]}, amount=_AMOUNT,
        spent=_AMOUNT, idempotency_key=_STRING, reason=_STRING),
    ("POST", "/v1/admin/tenants/bulk-action"): _object(
        filter={"type": "object"}, action=_STRING, expected_count={"type": "integer"}, idempotency_key=_STRING),
    ("POST", "/v1/admin/budgets/bulk-action"): _object(
        filter={"type": "object"}, action=_STRING, amount=_AMOUNT, expected_count={"type": "integer"},
        idempotency_key=_STRING),
    ("POST", "/v1/admin/policies"): _object(
        tenant_id=_STRING, name=_STRING, scope_pattern=_STRING, priority={"type": "integer"},
        caps={"type": "object"}, commit_overage_policy=_STRING),
    ("PATCH", "/v1/admin/policies/{policy_id}"): _object(name=_STRING, priority={"type": "integer"}),
    ("POST", "/v1/admin/webhooks"): _object(
        tenant_id=_STRING, url=_STRING, event_types={"type": "array", "items": _STRING}),
    ("POST", "/v1/webhooks"): _object(url=_STRING, event_types={"type": "array", "items": _STRING}),
}

QUERIES: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/v1/reservations"): reservations.LIST_QUERY,
    ("GET", "/v1/balances"): balances.BALANCES_QUERY,
    ("GET", "/v1/admin/budgets"): budgets.LIST_QUERY,
    ("GET", "/v1/admin/budgets/lookup"): budgets.TARGET_QUERY,
    ("PATCH", "/v1/admin/budgets"): budgets.TARGET_QUERY,
    ("POST", "/v1/admin/budgets/freeze"): budgets.TARGET_QUERY,
    ("POST", "/v1/admin/budgets/unfreeze"): budgets.TARGET_QUERY,
    ("POST", "/v1/admin/budgets/fund"): budgets.TARGET_QUERY,
    ("GET", "/v1/admin/policies"): policies.LIST_QUERY,
    ("GET", "/v1/admin/api-keys"): api_keys.LIST_QUERY,
    ("DELETE", "/v1/admin/api-keys/{key_id}"): api_keys.REVOKE_QUERY,
    ("GET", "/v1/admin/audit/logs"): {**audit.FILTER_QUERY, **audit.PAGE_QUERY},
    ("GET", "/v1/admin/events"): admin_events.LIST_QUERY,
    ("GET", "/v1/admin/tenants"): tenants.LIST_QUERY,
    ("GET", "/v1/admin/webhooks"): webhooks_admin._LIST_QUERY,
    ("GET", "/v1/webhooks"): webhooks_tenant._LIST_QUERY,
    ("GET", "/v1/admin/webhooks/{subscription_id}/deliveries"): webhooks_common.DELIVERIES_QUERY,
    ("GET", "/v1/webhooks/{subscription_id}/deliveries"): webhooks_common.DELIVERIES_QUERY,
}

ERROR_RESPONSE = {
    "type": "object",
    "required": ["error", "message", "request_id", "trace_id"],
    "properties": {
        "error": {"type": "string", "pattern": "^[A-Z_]+$"},
        "message": {"type": "string", "minLength": 1},
        "request_id": {"type": "string", "minLength": 1},
        "trace_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "details": {"type": "object"},
    },
    "additionalProperties": False,
}

_PARAM = re.compile(r"\{(\w+):\w+\}")


def _routes() -> list[tuple[str, str]]:
    """(method, OpenAPI path) of every route the app serves, OPTIONS aside,
    and the HTML dashboard aside (its pages answer HTML to a browser session,
    not JSON to an API key; tests/dashboard covers them)."""
    app = create_app(Settings(database_url="host=/nonexistent dbname=none"))
    found = []
    for route in app.routes:
        if route.path == "/dashboard" or route.path.startswith("/dashboard/"):
            continue
        methods = {m for handler in getattr(route, "route_handlers", []) for m in handler.http_methods}
        for method in sorted(methods - {"OPTIONS", "HEAD"}):
            found.append((method, _PARAM.sub(r"{\1}", route.path)))
    return found


def _operation(method: str, path: str) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in re.findall(r"\{(\w+)\}", path)]
    parameters += [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                   for name in QUERIES.get((method, path), {})]
    # Trace headers are client input too (W3C traceparent, our own trace id).
    parameters += [{"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
                   for name in ("traceparent", "X-Cycles-Trace-Id", "X-Request-Id")]
    operation: dict[str, Any] = {
        "operationId": f"{method.lower()}{path}".replace("/", "_"),
        "parameters": parameters,
        "responses": {
            "2XX": {"description": "success", "content": {"application/json": {"schema": {"type": "object"}}}},
            "4XX": {"description": "refused", "content": {"application/json": {"schema": ERROR_RESPONSE}}},
            "5XX": {"description": "unavailable", "content": {"application/json": {"schema": ERROR_RESPONSE}}},
        },
    }
    if (method, path) == ("GET", "/metrics"):
        # The Prometheus exposition format, not JSON (docs/operations.md).
        operation["responses"]["2XX"] = {
            "description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
    struct = RUNTIME_BODIES.get((method, path))
    body = {"$ref": REF.format(name=struct.__name__)} if struct else ADMIN_BODIES.get((method, path))
    if body is None and method in ("POST", "PATCH"):
        body = {"type": "object"}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


def document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(list(RUNTIME_BODIES.values()), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for method, path in _routes():
        paths.setdefault(path, {})[method.lower()] = _operation(method, path)
    return {
        "openapi": "3.1.0",
        "info": {"title": "cycles server (derived from its routes)", "version": "0"},
        "paths": paths,
        "components": {"schemas": components},
    }
