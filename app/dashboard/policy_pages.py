"""Policies: list, create and update (including disable/enable), through the
REST endpoint's functions (app.api.admin.policies): cycles.list_policies,
create_policy and update_policy. A tenant session manages its own tenant's
policies when its key has policies:* or admin:policies:* (checked in SQL);
the admin names the tenant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec
from litestar import Request, Response, get, post

from app.api.admin import policies as admin_policies
from app.dashboard.calls import DashboardError, admin_call
from app.dashboard.sessions import load_session
from app.dashboard.web import (
    checked_form,
    form_integer,
    form_text,
    json_text,
    login_redirect,
    page_links,
    query_text,
    redirect_back,
    render,
)

PAGE_SIZE: Final = 50
POLICY_STATUSES: Final = ("ACTIVE", "DISABLED")
OVERAGE_POLICIES: Final = ("REJECT", "ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT")
_object_decoder: Final = msgspec.json.Decoder(dict[str, Any])


def _json_object(form: Mapping[str, Any], name: str) -> tuple[str | None, str | None]:
    """A JSON object typed into a text area: (its text, None), (None, None)
    when empty, or (None, the problem)."""
    raw = form.get(name)
    if not isinstance(raw, str) or not raw.strip():
        return None, None
    if len(raw) > 8192:
        return None, f"{name} is longer than 8192 characters"
    try:
        return json_text(_object_decoder.decode(raw)), None
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None, f"{name} must be a JSON object, e.g. {{\"max_tokens\": 4000}}"


@get("/policies")
async def policies_page(request: Request[Any, Any, Any]) -> Response[Any]:
    session = await load_session(request)
    if session is None:
        return login_redirect()
    filters = {"tenant_id": query_text(request, "tenant_id") if session.is_admin else None,
               "status": query_text(request, "status", POLICY_STATUSES)}
    cursor = query_text(request, "cursor")
    page: Any = {"policies": []}
    error = None
    try:
        page = await admin_call(request, session, "listPolicies", "policy", admin_policies.LIST_SQL, {
            "tenant_id": filters["tenant_id"], "scope_pattern": None, "status": filters["status"],
            "limit": PAGE_SIZE, "cursor": cursor}, on_behalf_of=True, tenant_id=filters["tenant_id"])
    except DashboardError as exc:
        error = exc.message
    return render("policies.html", request, session, rows=page.get("policies", []), filters=filters,
                  statuses=POLICY_STATUSES, overage_policies=OVERAGE_POLICIES, load_error=error,
                  **page_links("/dashboard/policies", filters, page, cursor))


def _back(form: Mapping[str, Any], **outcome: str) -> Response[Any]:
    return redirect_back("/dashboard/policies", {
        "tenant_id": form_text(form, "back_tenant_id"), "status": form_text(form, "back_status")}, **outcome)


@post("/policies/create", status_code=303)
async def create_policy(request: Request[Any, Any, Any]) -> Response[Any]:
    session, form, refusal = await checked_form(request)
    if refusal is not None or session is None:
        return refusal or login_redirect()
    tenant_id = form_text(form, "tenant_id") if session.is_admin else None
    name, pattern = form_text(form, "name"), form_text(form, "scope_pattern")
    priority = form_integer(form, "priority") if form_text(form, "priority") else 0
    caps, problem = _json_object(form, "caps")
    overage = form_text(form, "commit_overage_policy")
    if name is None or pattern is None or priority is None or problem is not None \
            or (overage is not None and overage not in OVERAGE_POLICIES):
        return _back(form, error=problem or "A policy needs a name, a scope pattern and a whole priority.")
    if session.is_admin and tenant_id is None:
        return _back(form, error="Name the tenant the policy is for.")
    try:
        created = await admin_call(request, session, "createPolicy", "policy", admin_policies.CREATE_SQL, {
            "tenant_id": tenant_id, "name": name, "scope_pattern": pattern, "priority": priority, "caps": caps,
            "commit_overage_policy": overage, "reservation_ttl_override": None, "rate_limits": None,
            "effective_from": None, "effective_until": None, "description": form_text(form, "description")},
            on_behalf_of=True, tenant_id=tenant_id)
    except DashboardError as exc:
        return _back(form, error=f"Creating policy {name!r} refused: {exc.error}: {exc.message}")
    return _back(form, notice=f"Policy {created.get('policy_id')} ({name}) created.")


@post("/policies/update", status_code=303)
async def update_policy(request: Request[Any, Any, Any]) -> Response[Any]:
    """A patch of the fields the form filled in: status, priority,
    description, caps (an empty field leaves the value as it is)."""
    session, form, refusal = await checked_form(request)
    if refusal is not None or session is None:
        return refusal or login_redirect()
    policy_id = form_text(form, "policy_id")
    if policy_id is None or len(policy_id) > admin_policies.MAX_POLICY_ID_LENGTH:
        return _back(form, error="Updating needs a policy id.")
    patch: dict[str, Any] = {}
    status = form_text(form, "status")
    if status is not None:
        if status not in POLICY_STATUSES:
            return _back(form, error="Status must be ACTIVE or DISABLED.")
        patch["status"] = status
    if form_text(form, "priority") is not None:
        priority = form_integer(form, "priority")
        if priority is None:
            return _back(form, error="Priority must be a whole number.")
        patch["priority"] = priority
    description = form_text(form, "description")
    if description is not None:
        patch["description"] = description
    caps, problem = _json_object(form, "caps")
    if problem is not None:
        return _back(form, error=problem)
    if caps is not None:
        patch["caps"] = msgspec.json.decode(caps)
    if not patch:
        return _back(form, error="Nothing to change.")
    try:
        await admin_call(request, session, "updatePolicy", "policy", admin_policies.UPDATE_SQL, {
            "id": policy_id, "patch": json_text(patch)}, on_behalf_of=True, resource_id=policy_id)
    except DashboardError as exc:
        return _back(form, error=f"Updating {policy_id} refused: {exc.error}: {exc.message}")
    return _back(form, notice=f"Policy {policy_id} updated ({', '.join(sorted(patch))}).")


ROUTES: Final = [policies_page, create_policy, update_policy]
