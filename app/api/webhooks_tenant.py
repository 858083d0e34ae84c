"""A tenant's own webhook subscriptions: /v1/webhooks.

X-Cycles-API-Key with webhooks:read / webhooks:write (checked in SQL), which
sees only its tenant's subscriptions (another tenant's id is 404). The admin
key may also read and manage them on the tenant's behalf (listing then needs
the tenant query parameter); creating one needs the tenant's key.
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, Response, delete, get, patch, post
from litestar.params import FromPath

from app.api import webhooks_common as common
from app.api.admin.auth import AdminPrincipal, admin_principal
from app.api.request_parsing import read_body, read_query, text_param
from app.errors import ApiError, invalid_request

_LIST_QUERY: Final = {**common.LIST_QUERY, "tenant": text_param(64)}


def _caller(request: Request[Any, Any, Any]) -> tuple[AdminPrincipal, str]:
    principal = admin_principal(request)
    return principal, common.ctx(request, principal, on_behalf_of=True)


@post("/v1/webhooks")
async def create_tenant_webhook(request: Request[Any, Any, Any]) -> Response[bytes]:
    raw = await read_body(request)
    principal, context = _caller(request)
    if principal.kind != "tenant":
        raise ApiError(401, "UNAUTHORIZED", "creating a tenant webhook requires the tenant's X-Cycles-API-Key")
    return await common.create(request, raw, None, context)


@get("/v1/webhooks")
async def list_tenant_webhooks(request: Request[Any, Any, Any]) -> Response[bytes]:
    principal, context = _caller(request)
    query = read_query(request, _LIST_QUERY)
    tenant = query.get("tenant")
    if principal.kind == "admin" and tenant is None:
        raise invalid_request("tenant query parameter is required when using admin key authentication")
    return await common.list_subscriptions(request, tenant, query, context)


@get("/v1/webhooks/{subscription_id:str}")
async def get_tenant_webhook(request: Request[Any, Any, Any], subscription_id: FromPath[str]) -> Response[bytes]:
    return await common.get_one(request, subscription_id, _caller(request)[1])


@patch("/v1/webhooks/{subscription_id:str}")
async def update_tenant_webhook(request: Request[Any, Any, Any], subscription_id: FromPath[str]) -> Response[bytes]:
    raw = await read_body(request)
    return await common.update(request, subscription_id, raw, _caller(request)[1])


@delete("/v1/webhooks/{subscription_id:str}", status_code=204)
async def delete_tenant_webhook(request: Request[Any, Any, Any], subscription_id: FromPath[str]) -> None:
    await common.delete(request, subscription_id, _caller(request)[1])


@post("/v1/webhooks/{subscription_id:str}/test", status_code=200)
async def test_tenant_webhook(request: Request[Any, Any, Any], subscription_id: FromPath[str]) -> Response[bytes]:
    await read_body(request)
    return await common.test_probe(request, subscription_id, _caller(request)[1])


@get("/v1/webhooks/{subscription_id:str}/deliveries")
async def list_tenant_deliveries(request: Request[Any, Any, Any], subscription_id: FromPath[str]) -> Response[bytes]:
    return await common.deliveries(request, subscription_id, _caller(request)[1])


ROUTES: Final = [
    create_tenant_webhook, list_tenant_webhooks, get_tenant_webhook, update_tenant_webhook, delete_tenant_webhook,
    test_tenant_webhook, list_tenant_deliveries]
