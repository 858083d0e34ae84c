"""Tenants (admin key): list, detail, create, suspend and reactivate.

Every call is the REST endpoint's (app.api.admin.tenants): cycles.list_tenants,
get_tenant, create_tenant and update_tenant with {"status": ...}, which
refuse a tenant key (INSUFFICIENT_PERMISSIONS, audited), exactly as REST does.
Suspending is an emergency action: it asks for confirmation first.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlencode

from litestar import Request, Response, get, post

from app.api.admin import tenants as admin_tenants
from app.dashboard.calls import DashboardError, admin_call
from app.dashboard.sessions import load_session
from app.dashboard.web import (
    checked_form,
    confirmation,
    form_text,
    json_text,
    login_redirect,
    page_links,
    query_text,
    redirect_back,
    render,
)

PAGE_SIZE: Final = 50
TENANT_STATUSES: Final = ("ACTIVE", "SUSPENDED", "CLOSED")
# The transitions offered here; closing (irreversible, cascades) stays a REST/CLI action.
TRANSITIONS: Final = {"SUSPENDED": "suspend", "ACTIVE": "reactivate"}


@get("/tenants")
async def tenants_page(request: Request[Any, Any, Any]) -> Response[Any]:
    session = await load_session(request)
    if session is None:
        return login_redirect()
    filters = {"status": query_text(request, "status", TENANT_STATUSES), "search": query_text(request, "search")}
    cursor = query_text(request, "cursor")
    page: Any = {"tenants": []}
    error = None
    try:
        page = await admin_call(request, session, "listTenants", "tenant", admin_tenants.LIST_SQL, {
            "status": filters["status"], "parent_tenant_id": None, "search": filters["search"],
            "limit": PAGE_SIZE, "cursor": cursor})
    except DashboardError as exc:
        error = exc.message
    return render("tenants.html", request, session, rows=page.get("tenants", []), filters=filters,
                  statuses=TENANT_STATUSES, load_error=error,
                  **page_links("/dashboard/tenants", filters, page, cursor))


@get("/tenants/detail")
async def tenant_detail(request: Request[Any, Any, Any]) -> Response[Any]:
    session = await load_session(request)
    if session is None:
        return login_redirect()
    tenant_id = query_text(request, "tenant_id")
    tenant: Any = None
    error = None
    if tenant_id is None:
        error = "Choose a tenant from the tenants page."
    else:
        try:
            tenant = await admin_call(request, session, "getTenant", "tenant", admin_tenants.GET_SQL,
                                      {"tenant_id": tenant_id}, tenant_id=tenant_id, resource_id=tenant_id)
        except DashboardError as exc:
            error = f"{exc.error}: {exc.message}"
    return render("tenant_detail.html", request, session, tenant=tenant, tenant_id=tenant_id, load_error=error)


@post("/tenants/create", status_code=303)
async def create_tenant(request: Request[Any, Any, Any]) -> Response[Any]:
    session, form, refusal = await checked_form(request)
    if refusal is not None or session is None:
        return refusal or login_redirect()
    tenant_id, name = form_text(form, "tenant_id"), form_text(form, "name")
    if tenant_id is None or name is None:
        return redirect_back("/dashboard/tenants", {}, error="A tenant needs an id and a name.")
    options = {"parent_tenant_id": form_text(form, "parent_tenant_id")}
    try:
        await admin_call(request, session, "createTenant", "tenant", admin_tenants.CREATE_SQL, {
            "tenant_id": tenant_id, "name": name,
            "options": json_text({k: v for k, v in options.items() if v is not None})},
            tenant_id=tenant_id, resource_id=tenant_id)
    except DashboardError as exc:
        return redirect_back("/dashboard/tenants", {}, error=f"Creating {tenant_id} refused: {exc.error}: {exc.message}")
    return redirect_back("/dashboard/tenants/detail", {"tenant_id": tenant_id}, notice=f"Tenant {tenant_id} created.")


@post("/tenants/status", status_code=303)
async def change_status(request: Request[Any, Any, Any]) -> Response[Any]:
    """Suspend (every key of the tenant is refused until reactivated) or
    reactivate, after a confirmation page."""
    session, form, refusal = await checked_form(request)
    if refusal is not None or session is None:
        return refusal or login_redirect()
    tenant_id, status = form_text(form, "tenant_id"), form_text(form, "status")
    if tenant_id is None or status not in TRANSITIONS:
        return redirect_back("/dashboard/tenants", {}, error="Choose a tenant and a status.")
    back = {"tenant_id": tenant_id}
    verb = TRANSITIONS[status]
    if form.get("confirmed") != "yes":
        question = (f"Suspend the tenant {tenant_id}? Every request with its API keys is refused until it is "
                    "reactivated; its budgets and reservations stay as they are."
                    if status == "SUSPENDED" else f"Reactivate the tenant {tenant_id}?")
        return confirmation(request, session, request.url.path, question, form,
                            cancel=f"/dashboard/tenants/detail?{urlencode({'tenant_id': tenant_id})}")
    try:
        await admin_call(request, session, "updateTenant", "tenant", admin_tenants.UPDATE_SQL, {
            "tenant_id": tenant_id, "patch": json_text({"status": status})},
            tenant_id=tenant_id, resource_id=tenant_id)
    except DashboardError as exc:
        return redirect_back("/dashboard/tenants/detail", back,
                             error=f"{verb.capitalize()} {tenant_id} refused: {exc.error}: {exc.message}")
    return redirect_back("/dashboard/tenants/detail", back, notice=f"Tenant {tenant_id}: {verb} done.")


ROUTES: Final = [tenants_page, tenant_detail, create_tenant, change_status]
