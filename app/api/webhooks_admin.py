"""Operator webhook subscriptions: /v1/admin/webhooks (admin key; a tenant key
with admin:webhooks:* permissions acts on its own tenant only, checked in SQL).
Creating without tenant_id makes a system-wide (__system__) subscription."""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, Response, delete, get, patch, post
from litestar.params import FromPath

from app.api import webhooks_common as common
from app.api.admin.auth import admin_principal
from app.api.request_parsing import read_body, read_query, text_param

_LIST_QUERY: Final = {**common.LIST_QUERY, "tenant_id": text_param(64)}


def _ctx(request: Request[Any, Any, Any]) -> str:
    return common.ctx(request, admin_principal(request), on_behalf_of=False)


@post("/v1/admin/webhooks")
async def create_webhook(request: Request[Any, Any, Any]) -> Response[bytes]:
    raw = await read_body(request)
    context = _ctx(request)
    tenant = read_query(request, {"tenant_id": text_param(64)}).get("tenant_id")
    return await common.create(request, raw, tenant, context)


@get("/v1/admin/webhooks")
async def list_webhooks(request: Request[Any, Any, Any]) -> Response[bytes]:
    context = _ctx(request)
    query = read_query(request, _LIST_QUERY)
    return await common.list_subscriptions(request, query.get("tenant_id"), query, context)


@get("/v1/admin/webhooks/{subscription_id:str}")
async def get_webhook(request: Request[Any, Any, Any], subscription_id: FromPath[str]) -> Response[bytes]:
    return await common.get_one(request, subscription_id, _ctx(request))


@patch("/v1/admin/webhooks/{subscription_id:str}")
async def update_webhook(request: Request[Any, Any, Any], subscription_id: FromPath[str]) -> Response[bytes]:
    raw = await read_body(request)
    return await common.update(request, subscription_id, raw, _ctx(request))


@delete("/v1/admin/webhooks/{subscription_id:str}", status_code=204)
async def delete_webhook(request: Request[Any, Any, Any], subscription_id: FromPath[str]) -> None:
    await common.delete(request, subscription_id, _ctx(request))


@post("/v1/admin/webhooks/{subscription_id:str}/test", status_code=200)
async def test_webhook(request: Request[Any, Any, Any], subscription_id: FromPath[str]) -> Response[bytes]:
    await read_body(request)
    return await common.test_probe(request, subscription_id, _ctx(request))


@get("/v1/admin/webhooks/{subscription_id:str}/deliveries")
async def list_deliveries(request: Request[Any, Any, Any], subscription_id: FromPath[str]) -> Response[bytes]:
    return await common.deliveries(request, subscription_id, _ctx(request))


@post("/v1/admin/webhooks/{subscription_id:str}/replay", status_code=202)
async def replay_events(request: Request[Any, Any, Any], subscription_id: FromPath[str]) -> Response[bytes]:
    raw = await read_body(request)
    return await common.replay(request, subscription_id, raw, _ctx(request))


ROUTES: Final = [
    create_webhook, list_webhooks, get_webhook, update_webhook, delete_webhook, test_webhook, list_deliveries,
    replay_events]
