"""Admin-key pages: API keys (list, create showing the secret once, revoke)
and the audit log (filters, CSV and JSON export).

A tenant-key session sees these pages but every call is refused by SQL
(INSUFFICIENT_PERMISSIONS, audited), exactly as the REST endpoints refuse
tenant keys; the navigation hides them from tenant sessions.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

from litestar import Request, Response, get, post
from litestar.response import Redirect, Template

from app.api.admin import api_keys as admin_api_keys
from app.api.admin import audit as admin_audit
from app.dashboard.calls import DashboardError, admin_call
from app.dashboard.sessions import Session, load_session
from app.dashboard.web import (
    checked_form,
    confirmation,
    form_text,
    json_text,
    login_redirect,
    query_text,
    redirect_back,
    render,
)

PAGE_SIZE: Final = 50
# An export reads the log a page of 100 at a time (each page an audited
# listAuditLogs call, as over REST) and stops at this many rows.
EXPORT_MAX_ROWS: Final = 10_000
EXPORT_PAGE: Final = 100
KEY_STATUSES: Final = ("ACTIVE", "REVOKED", "EXPIRED")
# The permissions offered when creating a key (the SQL function checks them).
PERMISSIONS: Final = (
    "reservations:create", "reservations:commit", "reservations:release", "reservations:extend",
    "reservations:list", "balances:read", "events:create", "admin:read", "admin:write")
CSV_COLUMNS: Final = (
    "timestamp", "log_id", "tenant_id", "key_id", "actor_type", "operation", "resource_type", "resource_id",
    "status", "error_code", "request_id", "trace_id", "source_ip", "user_agent")


# API keys ------------------------------------------------------------------

async def _keys_page(
    request: Request[Any, Any, Any], session: Session, *, created: Any = None, error: str | None = None,
) -> Template:
    filters = {"tenant_id": query_text(request, "tenant_id"), "status": query_text(request, "status", KEY_STATUSES)}
    cursor = query_text(request, "cursor")
    page: Any = {"keys": []}
    load_error = None
    try:
        page = await admin_call(request, session, "listApiKeys", "api_key", admin_api_keys.LIST_SQL, {
            "tenant_id": filters["tenant_id"], "status": filters["status"], "limit": PAGE_SIZE, "cursor": cursor,
            "search": None}, tenant_id=filters["tenant_id"])
    except DashboardError as exc:
        load_error = exc.message
    next_query = urlencode({**{k: v for k, v in filters.items() if v}, "cursor": page.get("next_cursor", "")})
    response = render("api_keys.html", request, session, rows=page.get("keys", []), filters=filters,
                      load_error=load_error, created=created, create_error=error, permissions=PERMISSIONS,
                      statuses=KEY_STATUSES, next_query=next_query if page.get("has_more") else None,
                      first_page=cursor is not None)
    return response


@get("/api-keys")
async def api_keys_page(request: Request[Any, Any, Any]) -> Response[Any]:
    session = await load_session(request)
    if session is None:
        return login_redirect()
    return await _keys_page(request, session)


@post("/api-keys/create", status_code=200)
async def create_api_key(request: Request[Any, Any, Any]) -> Response[Any]:
    """Answers with the page itself (no redirect): the new secret is shown in
    this one response and stored nowhere but as the key's hash."""
    session, form, refusal = await checked_form(request)
    if refusal is not None or session is None:
        return refusal or login_redirect()
    tenant_id, name = form_text(form, "tenant_id"), form_text(form, "name")
    permissions = [value for value in request_list(form, "permissions") if value in PERMISSIONS]
    if tenant_id is None or name is None:
        return await _keys_page(request, session, error="A key needs a tenant and a name.")
    try:
        created = await admin_call(request, session, "createApiKey", "api_key", admin_api_keys.CREATE_SQL, {
            "tenant_id": tenant_id, "name": name, "permissions": permissions or None, "expires_at": None,
            "options": json_text({})}, tenant_id=tenant_id)
    except DashboardError as exc:
        return await _keys_page(request, session, error=f"Refused: {exc.error}: {exc.message}")
    return await _keys_page(request, session, created=created)


def request_list(form: dict[str, Any], name: str) -> list[str]:
    """Every value of a repeated form field (checkboxes)."""
    value = form.get(name)
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return [value] if isinstance(value, str) else []


@post("/api-keys/revoke", status_code=303)
async def revoke_api_key(request: Request[Any, Any, Any]) -> Response[Any]:
    session, form, refusal = await checked_form(request)
    if refusal is not None or session is None:
        return refusal or login_redirect()
    key_id = form_text(form, "key_id")
    back = {"tenant_id": form_text(form, "back_tenant_id"), "status": form_text(form, "back_status")}
    if key_id is None:
        return redirect_back("/dashboard/api-keys", back, error="Revoking needs a key id.")
    if form.get("confirmed") != "yes":
        return confirmation(request, session, request.url.path,
                            f"Revoke the API key {key_id}? Every client using it is refused from now on.", form)
    try:
        await admin_call(request, session, "revokeApiKey", "api_key", admin_api_keys.REVOKE_SQL, {
            "key_id": key_id, "reason": form_text(form, "reason")}, resource_id=key_id)
    except DashboardError as exc:
        return redirect_back("/dashboard/api-keys", back, error=f"Revoking {key_id} refused: {exc.error}: {exc.message}")
    return redirect_back("/dashboard/api-keys", back, notice=f"Key {key_id} revoked.")


# Audit log -------------------------------------------------------------------

def _audit_filters(request: Request[Any, Any, Any]) -> dict[str, Any]:
    filters: dict[str, Any] = {
        name: query_text(request, name) for name in ("tenant_id", "operation", "resource_id", "from", "to")}
    status_min = query_text(request, "status_min")
    filters["status_min"] = int(status_min) if status_min and status_min.isdigit() and len(status_min) == 3 else None
    return filters


def _sql_filter(filters: dict[str, Any]) -> str:
    return json_text({name: value for name, value in filters.items() if value is not None})


@get("/audit")
async def audit_page(request: Request[Any, Any, Any]) -> Response[Any]:
    session = await load_session(request)
    if session is None:
        return login_redirect()
    filters = _audit_filters(request)
    cursor = query_text(request, "cursor")
    page: Any = {"logs": []}
    load_error = None
    try:
        page = await admin_call(request, session, "listAuditLogs", None, admin_audit.LIST_SQL, {
            "filter": _sql_filter(filters), "limit": PAGE_SIZE, "cursor": cursor})
    except DashboardError as exc:
        load_error = exc.message
    kept = {name: str(value) for name, value in filters.items() if value is not None}
    next_query = urlencode({**kept, "cursor": page.get("next_cursor", "")})
    return render("audit.html", request, session, rows=page.get("logs", []), filters=filters,
                  load_error=load_error, export_query=urlencode(kept),
                  next_query=next_query if page.get("has_more") else None, first_page=cursor is not None)


async def _export_rows(request: Request[Any, Any, Any], session: Session) -> list[dict[str, Any]]:
    """The filtered log, page by page, up to EXPORT_MAX_ROWS entries."""
    filters = _audit_filters(request)
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(rows) < EXPORT_MAX_ROWS:
        page = await admin_call(request, session, "listAuditLogs", None, admin_audit.LIST_SQL, {
            "filter": _sql_filter(filters), "limit": EXPORT_PAGE, "cursor": cursor})
        rows.extend(page.get("logs", []))
        cursor = page.get("next_cursor")
        if not page.get("has_more") or not cursor:
            break
    return rows[:EXPORT_MAX_ROWS]


def _download(content: bytes, media_type: str, extension: str) -> Response[bytes]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Response(content=content, media_type=media_type, headers={
        "Content-Disposition": f'attachment; filename="cycles-audit-{stamp}.{extension}"'})


def _export_refused(exc: DashboardError) -> Redirect:
    return Redirect(path=f"/dashboard/audit?{urlencode({'error': f'Export refused: {exc.message}'})}",
                    status_code=303)


async def _export(
    request: Request[Any, Any, Any], render: Callable[[list[dict[str, Any]]], Response[Any]],
) -> Response[Any]:
    """The session's audit entries (as the filters select them), rendered."""
    session = await load_session(request)
    if session is None:
        return login_redirect()
    try:
        rows = await _export_rows(request, session)
    except DashboardError as exc:
        return _export_refused(exc)
    return render(rows)


def _csv_download(rows: list[dict[str, Any]]) -> Response[Any]:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        actor = (row.get("metadata") or {}).get("actor_type", "")
        writer.writerow([_csv_cell(actor if column == "actor_type" else row.get(column, ""))
                         for column in CSV_COLUMNS])
    return _download(out.getvalue().encode(), "text/csv; charset=utf-8", "csv")


@get("/audit/export.csv")
async def audit_export_csv(request: Request[Any, Any, Any]) -> Response[Any]:
    return await _export(request, _csv_download)


@get("/audit/export.json")
async def audit_export_json(request: Request[Any, Any, Any]) -> Response[Any]:
    """The entries exactly as GET /v1/admin/audit/logs returns them, as one
    JSON document {"logs": [...]}."""
    return await _export(
        request, lambda rows: _download(json_text({"logs": rows}).encode(), "application/json", "json"))


def _csv_cell(value: Any) -> str:
    """A cell a spreadsheet will not run as a formula (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


ROUTES: Final = [api_keys_page, create_api_key, revoke_api_key, audit_page, audit_export_csv, audit_export_json]
