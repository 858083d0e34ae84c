"""The /dashboard router: every page, the static assets, the security headers."""

from __future__ import annotations

from typing import Final

from litestar import Router
from litestar.static_files import create_static_files_router

from app.dashboard import (
    admin_pages,
    detail_pages,
    event_pages,
    pages,
    policy_pages,
    tenant_pages,
    webhook_pages,
)
from app.dashboard.web import HERE, SECURITY_HEADERS, TEMPLATE_CONFIG

ROUTER: Final = Router(
    path="/dashboard",
    route_handlers=[
        *pages.ROUTES, *admin_pages.ROUTES, *detail_pages.ROUTES, *tenant_pages.ROUTES, *policy_pages.ROUTES,
        *webhook_pages.ROUTES, *event_pages.ROUTES,
        create_static_files_router(path="/static", directories=[HERE / "static"], name="dashboard_static"),
    ],
    response_headers=SECURITY_HEADERS,
    include_in_schema=False,
)

__all__ = ["ROUTER", "TEMPLATE_CONFIG"]
