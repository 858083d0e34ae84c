"""The dashboard's pages: login/logout, Overview, Budgets, Reservations.

The rules every page follows (session, CSRF, confirmation, redirects) are in
app.dashboard.web; the calls go through app.dashboard.calls, that is through
the same cycles.* functions and audit as the REST admin API.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

from litestar import Request, Response, get, post
from litestar.response import Redirect, Template

from app.api import reservations as runtime_reservations
from app.api.admin import budgets as admin_budgets
from app.api.admin.auth import admin_context, context_text
from app.api.admin.calls import RECORD_FAILURE_SQL
from app.api.request_parsing import database
from app.dashboard.calls import DashboardError, admin_call, as_dashboard_error, runtime_call
from app.dashboard.sessions import (
    COOKIE_NAME,
    LOGIN_COOKIE_NAME,
    SESSION_TTL_SECONDS,
    cookie_token,
    load_session,
    new_token,
    seal,
    token_hash,
    tokens_equal,
)
from app.dashboard.web import (
    checked_form,
    confirmation,
    form_fields,
    form_integer,
    form_text,
    json_text,
    login_redirect,
    query_text,
    redirect_back,
    refusal_page,
    render,
    session_cookie,
)

logger = logging.getLogger("cycles.dashboard")

PAGE_SIZE: Final = 50
OPEN_SQL: Final = (
    "SELECT cycles.dashboard_open_session(p_session_hash => %(hash)s, p_sealed_key => %(sealed)s,"
    " p_csrf_token => %(csrf)s, p_ttl_seconds => %(ttl)s, p_ctx => %(ctx)s::jsonb)::text")
CLOSE_SQL: Final = (
    "SELECT cycles.dashboard_close_session(p_session_hash => %(hash)s, p_ctx => %(ctx)s::jsonb)::text")
OVERVIEW_SQL: Final = "SELECT cycles.dashboard_overview(p_ctx => %(ctx)s::jsonb)::text"
SPEND_SQL: Final = (
    "SELECT cycles.dashboard_budget_spend(p_scope => %(scope)s, p_unit => %(unit)s, p_bucket => %(bucket)s,"
    " p_buckets => %(buckets)s, p_ctx => %(ctx)s::jsonb)::text")
TENANTS_SQL: Final = (
    "SELECT cycles.list_tenants(p_status => NULL, p_parent_tenant_id => NULL, p_search => NULL,"
    " p_limit => 100, p_cursor => NULL, p_ctx => %(ctx)s::jsonb)::text")

FUND_OPERATIONS: Final = ("CREDIT", "DEBIT", "RESET", "RESET_SPENT", "REPAY_DEBT")
BUDGET_STATUSES: Final = ("ACTIVE", "FROZEN", "CLOSED")
RESERVATION_STATUSES: Final = ("ACTIVE", "COMMITTED", "RELEASED", "EXPIRED")
# Reservation list filters passed through to cycles.list_reservations: subject
# levels below the tenant, and the creation time window (ISO-8601).
RESERVATION_FILTERS: Final = ("workspace", "app", "workflow", "agent", "toolset", "from", "to")
# Preset windows on expiry and finalisation time (cycles.list_reservations'
# expires_* and finalized_* filters); "expiring soon" is active
# reservations whose expiry falls in the next EXPIRING_SOON_MS, soonest first.
RESERVATION_WINDOWS: Final = ("expiring_soon", "finalized_hour", "finalized_today")
EXPIRING_SOON_MS: Final = 10 * 60 * 1000
MAX_GRACE_MS: Final = 60_000  # reservations_grace_range
# Chart buckets and how many of each are drawn.
CHART_BUCKETS: Final = {"hour": 48, "day": 30, "month": 12}
CHART_WIDTH: Final = 720
CHART_HEIGHT: Final = 180


# Login and logout -----------------------------------------------------------

@get("/login")
async def login_page(request: Request[Any, Any, Any]) -> Response[Any]:
    if await load_session(request) is not None:
        return Redirect(path="/dashboard", status_code=303)
    # Login CSRF: the form's token must equal a SameSite=Strict cookie set
    # here, which a cross-site form post does not carry.
    login_token = new_token()
    response = render("login.html", request, None, login_token=login_token)
    response.cookies.append(session_cookie(request, LOGIN_COOKIE_NAME, login_token, max_age=1800))
    return response


@post("/login", status_code=303)
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    form = form_fields(await request.form())
    if not tokens_equal(form_text(form, "login_token"), request.cookies.get(LOGIN_COOKIE_NAME)):
        return refusal_page(request, 403, "The login form expired or did not come from this site; reload it.")
    key = form_text(form, "api_key")
    if key is None:
        return _login_failed(request, "Enter the admin key or a tenant API key.")
    expected: str | None = request.app.state.admin_api_key
    is_admin = expected is not None and hmac.compare_digest(key.encode(), expected.encode())
    token, csrf = new_token(), secrets.token_urlsafe(32)
    if is_admin:
        context = admin_context(request, None)
        sealed = None
    else:
        # A tenant key is authenticated by SQL, as for an admin call with
        # X-Cycles-API-Key (its secret travels in p_ctx and is stripped there).
        context = admin_context(request, None)
        context.update({"actor_type": "api_key", "api_key": key})
        sealed = seal(token, key)
    try:
        await database(request).fetch_json(OPEN_SQL, {
            "hash": token_hash(token), "sealed": sealed, "csrf": csrf, "ttl": SESSION_TTL_SECONDS,
            "ctx": context_text(context)})
    except Exception as exc:
        failure = as_dashboard_error(exc)
        await _audit_login_failure(request, failure)
        if failure.error == "INSUFFICIENT_PERMISSIONS":
            return _login_failed(request, "This key lacks admin:read, which the dashboard needs.")
        if failure.status >= 500:
            return _login_failed(request, "The server could not open a session; try again.", status=503)
        return _login_failed(request, "Unknown, revoked or expired key, or its tenant is not active.")
    response = Redirect(path="/dashboard", status_code=303)
    response.cookies.append(session_cookie(request, COOKIE_NAME, token, max_age=SESSION_TTL_SECONDS))
    response.cookies.append(session_cookie(request, LOGIN_COOKIE_NAME, "", max_age=0))
    return response


async def _audit_login_failure(request: Request[Any, Any, Any], failure: DashboardError) -> None:
    context = admin_context(request, None)
    try:
        await database(request).fetch_json(RECORD_FAILURE_SQL, {
            "ctx": context_text(context), "operation": "dashboardLogin", "status": failure.status,
            "error": failure.error, "message": failure.message, "resource_type": "dashboard_session",
            "resource_id": None, "tenant_id": None})
    except Exception:  # the answer to the user matters more than the audit row
        logger.exception("could not audit a failed dashboard login")


def _login_failed(request: Request[Any, Any, Any], message: str, status: int = 401) -> Template:
    login_token = new_token()
    response = render("login.html", request, None, login_token=login_token, login_error=message)
    response.status_code = status
    response.cookies.append(session_cookie(request, LOGIN_COOKIE_NAME, login_token, max_age=1800))
    return response


@post("/logout", status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    session, _, refusal = await checked_form(request)
    if refusal is not None or session is None:
        return refusal or login_redirect()
    token = cookie_token(request)
    context = admin_context(request, None)
    await database(request).fetch_json(CLOSE_SQL, {"hash": token_hash(token or ""), "ctx": context_text(context)})
    response = login_redirect()
    response.cookies.append(session_cookie(request, COOKIE_NAME, "", max_age=0))
    return response


# Overview ---------------------------------------------------------------------

@get("/")
async def overview(request: Request[Any, Any, Any]) -> Response[Any]:
    session = await load_session(request)
    if session is None:
        return login_redirect()
    error = None
    figures: Any = None
    tenants: list[Any] = []
    try:
        figures = await admin_call(request, session, "dashboardOverview", None, OVERVIEW_SQL, {})
        if session.is_admin:
            tenants = (await admin_call(request, session, "listTenants", "tenant", TENANTS_SQL, {}))["tenants"]
    except DashboardError as exc:
        error = exc.message
    return render("overview.html", request, session, figures=figures, tenants=tenants, load_error=error)


# Budgets ----------------------------------------------------------------------

@get("/budgets")
async def budgets_page(request: Request[Any, Any, Any]) -> Response[Any]:
    session = await load_session(request)
    if session is None:
        return login_redirect()
    filters = {
        "tenant_id": query_text(request, "tenant_id") if session.is_admin else None,
        "scope_prefix": query_text(request, "scope_prefix"),
        "status": query_text(request, "status", BUDGET_STATUSES),
        "attention": query_text(request, "attention", ("over_limit", "has_debt")),
        "view": query_text(request, "view", ("tree",)),
        "search": query_text(request, "search"),
    }
    cursor = query_text(request, "cursor")
    page: Any = {"ledgers": []}
    error = None
    try:
        page = await admin_call(request, session, "listBudgets", "budget", admin_budgets.LIST_SQL, {
            "tenant_id": filters["tenant_id"], "scope_prefix": filters["scope_prefix"], "unit": None,
            "status": filters["status"], "limit": PAGE_SIZE, "cursor": cursor,
            "over_limit": True if filters["attention"] == "over_limit" else None,
            "has_debt": True if filters["attention"] == "has_debt" else None,
            "utilization_min": None, "utilization_max": None, "search": filters["search"],
        }, on_behalf_of=True, tenant_id=filters["tenant_id"])
    except DashboardError as exc:
        error = exc.message
    rows = [_budget_row(budget) for budget in page.get("ledgers", [])]
    next_query = urlencode({**{k: v for k, v in filters.items() if v}, "cursor": page.get("next_cursor", "")})
    return render("budgets.html", request, session, rows=rows, filters=filters, load_error=error,
                 next_query=next_query if page.get("has_more") else None, first_page=cursor is not None,
                 operations=FUND_OPERATIONS, statuses=BUDGET_STATUSES, tree=filters["view"] == "tree")


def _amount(budget: Mapping[str, Any], name: str) -> int:
    value = budget.get(name) or {}
    amount = value.get("amount", 0)
    return amount if isinstance(amount, int) else 0


def _budget_row(budget: Mapping[str, Any]) -> dict[str, Any]:
    """A budget with the figures its bars need: used = spent + reserved out of
    allocated; debt out of the overdraft limit."""
    allocated, spent, reserved = _amount(budget, "allocated"), _amount(budget, "spent"), _amount(budget, "reserved")
    debt, overdraft = _amount(budget, "debt"), _amount(budget, "overdraft_limit")
    used = spent + reserved
    return {
        **budget, "allocated_amount": allocated, "spent_amount": spent, "reserved_amount": reserved,
        "remaining_amount": _amount(budget, "remaining"), "debt_amount": debt, "overdraft_amount": overdraft,
        "used_amount": used, "bar_max": max(allocated, used, 1),
        "utilisation": round(100 * used / allocated, 1) if allocated > 0 else (100.0 if used else 0.0),
        "debt_max": max(overdraft, debt, 1), "idempotency_key": "dash_" + secrets.token_hex(12),
        # The tree view indents by depth (tenant = 0) and names the last segment.
        "depth": min(str(budget.get("scope", "")).count("/"), 5),
        "segment": str(budget.get("scope", "")).rsplit("/", 1)[-1],
    }


@get("/budgets/detail")
async def budget_detail(request: Request[Any, Any, Any]) -> Response[Any]:
    """One budget with a chart of what the ledger charged it per hour, day
    or month (an SVG drawn here: no script)."""
    session = await load_session(request)
    if session is None:
        return login_redirect()
    scope, unit = query_text(request, "scope"), query_text(request, "unit", admin_budgets.UNITS)
    bucket = query_text(request, "bucket", tuple(CHART_BUCKETS)) or "day"
    result: Any = None
    error = None
    if scope is None or unit is None:
        error = "Choose a budget from the budgets page."
    else:
        try:
            result = await admin_call(request, session, "dashboardBudgetSpend", "budget", SPEND_SQL, {
                "scope": scope, "unit": unit, "bucket": bucket, "buckets": CHART_BUCKETS[bucket]},
                resource_id=f"{scope} {unit}")
        except DashboardError as exc:
            error = f"{exc.error}: {exc.message}"
    series = result["series"] if result else []
    return render("budget_detail.html", request, session, load_error=error, scope=scope, unit=unit, bucket=bucket,
                  buckets=tuple(CHART_BUCKETS), budget=_budget_row(result["budget"]) if result else None,
                  bars=_bars(series), series=series, total=sum(point["charged"] for point in series),
                  chart_width=CHART_WIDTH, chart_height=CHART_HEIGHT)


def _bars(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bar geometry in chart units: one slot per bucket, heights scaled to
    the largest charge (a zero bucket draws nothing)."""
    if not series:
        return []
    peak = max(max(point["charged"] for point in series), 1)
    slot = CHART_WIDTH / len(series)
    bars = []
    for index, point in enumerate(series):
        height = round(CHART_HEIGHT * point["charged"] / peak, 2) if point["charged"] > 0 else 0
        bars.append({"x": round(index * slot + slot * 0.1, 2), "width": round(slot * 0.8, 2),
                     "y": round(CHART_HEIGHT - height, 2), "height": height, **point})
    return bars


def _budget_target(form: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    scope, unit = form_text(form, "scope"), form_text(form, "unit")
    return scope, unit if unit in admin_budgets.UNITS else None, form_text(form, "tenant_id")


def _budgets_back(form: Mapping[str, Any], **outcome: str) -> Redirect:
    return redirect_back("/dashboard/budgets", {
        "tenant_id": form_text(form, "back_tenant_id"), "scope_prefix": form_text(form, "back_scope_prefix"),
        "status": form_text(form, "back_status"), "attention": form_text(form, "back_attention"),
        "view": form_text(form, "back_view"), "search": form_text(form, "back_search")}, **outcome)


@post("/budgets/fund", status_code=303)
async def fund_budget(request: Request[Any, Any, Any]) -> Response[Any]:
    session, form, refusal = await checked_form(request)
    if refusal is not None or session is None:
        return refusal or login_redirect()
    scope, unit, tenant_id = _budget_target(form)
    operation = form_text(form, "operation")
    amount, spent = form_integer(form, "amount"), form_integer(form, "spent")
    key = form_text(form, "idempotency_key")
    if scope is None or unit is None or operation not in FUND_OPERATIONS or amount is None or key is None:
        return _budgets_back(form, error="Funding needs a budget, an operation and a whole amount.")
    try:
        result = await admin_call(request, session, "fundBudget", "budget", admin_budgets.FUND_SQL, {
            "scope": scope, "unit": unit, "operation": operation, "amount": amount, "key": key,
            "spent": spent, "reason": form_text(form, "reason"),
            "tenant_id": tenant_id if session.is_admin else None,
        }, on_behalf_of=True, tenant_id=tenant_id if session.is_admin else None, resource_id=f"{scope} {unit}")
    except DashboardError as exc:
        return _budgets_back(form, error=f"{operation} on {scope} ({unit}) refused: {exc.error}: {exc.message}")
    new_allocated = (result.get("new_allocated") or result.get("allocated") or {}).get("amount")
    detail = f" (allocated now {new_allocated})" if isinstance(new_allocated, int) else ""
    return _budgets_back(form, notice=f"{operation} {amount} {unit} on {scope}: done{detail}.")


async def _transition(request: Request[Any, Any, Any], operation: str, sql: str, verb: str) -> Response[Any]:
    session, form, refusal = await checked_form(request)
    if refusal is not None or session is None:
        return refusal or login_redirect()
    scope, unit, _ = _budget_target(form)
    if scope is None or unit is None:
        return _budgets_back(form, error=f"{verb.capitalize()} needs a budget.")
    if form.get("confirmed") != "yes":
        return confirmation(request, session, request.url.path, f"{verb.capitalize()} the budget {scope} ({unit})?", form)
    try:
        await admin_call(request, session, operation, "budget", sql, {
            "scope": scope, "unit": unit, "reason": form_text(form, "reason")}, resource_id=f"{scope} {unit}")
    except DashboardError as exc:
        return _budgets_back(form, error=f"{verb.capitalize()} {scope} ({unit}) refused: {exc.error}: {exc.message}")
    return _budgets_back(form, notice=f"{scope} ({unit}): {verb} done.")


@post("/budgets/freeze", status_code=303)
async def freeze_budget(request: Request[Any, Any, Any]) -> Response[Any]:
    return await _transition(request, "freezeBudget", admin_budgets.FREEZE_SQL, "freeze")


@post("/budgets/unfreeze", status_code=303)
async def unfreeze_budget(request: Request[Any, Any, Any]) -> Response[Any]:
    return await _transition(request, "unfreezeBudget", admin_budgets.UNFREEZE_SQL, "unfreeze")


# Reservations -------------------------------------------------------------------

@get("/reservations")
async def reservations_page(request: Request[Any, Any, Any]) -> Response[Any]:
    session = await load_session(request)
    if session is None:
        return login_redirect()
    tenant = query_text(request, "tenant") if session.is_admin else session.tenant_id
    narrowing = {name: query_text(request, name) for name in RESERVATION_FILTERS}
    narrowing["status"] = query_text(request, "status", RESERVATION_STATUSES)
    narrowing["window"] = query_text(request, "window", RESERVATION_WINDOWS)
    # A window is fixed at the first page's time ("at", carried to the next
    # pages): the list's cursor is bound to its filters.
    at_text = query_text(request, "at")
    narrowing["at"] = (at_text if at_text and at_text.isdigit() and len(at_text) <= 15
                       else str(int(datetime.now(UTC).timestamp() * 1000))) if narrowing["window"] else None
    cursor = query_text(request, "cursor")
    page: Any = {"reservations": []}
    error = None
    tenants: list[Any] = []
    try:
        if session.is_admin:
            tenants = (await admin_call(request, session, "listTenants", "tenant", TENANTS_SQL, {}))["tenants"]
            if tenant is None and tenants:
                tenant = tenants[0]["tenant_id"]
        if tenant is not None:
            query = {name: value for name, value in
                     {**narrowing, **_window_query(narrowing["window"], narrowing["at"]), "tenant": tenant,
                      "cursor": cursor, "limit": PAGE_SIZE}.items()
                     if value is not None and name not in ("window", "at")}
            page = await runtime_call(request, session, "listReservations", runtime_reservations.LIST_SQL, {
                "query": json_text(query)})
    except DashboardError as exc:
        error = exc.message
    filters = {"tenant": tenant if session.is_admin else None, **narrowing}
    next_query = urlencode({**{k: v for k, v in filters.items() if v}, "cursor": page.get("next_cursor", "")})
    return render("reservations.html", request, session, rows=page.get("reservations", []), filters=filters,
                  tenants=tenants, statuses=RESERVATION_STATUSES, windows=RESERVATION_WINDOWS, load_error=error,
                  next_query=next_query if page.get("has_more") else None, first_page=cursor is not None)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _window_query(window: str | None, at_ms: str | None) -> dict[str, str]:
    """cycles.list_reservations filters of a preset window, as of at_ms."""
    if window is None or at_ms is None:
        return {}
    now = datetime.fromtimestamp(int(at_ms) / 1000, tz=UTC)
    if window == "expiring_soon":
        return {"status": "ACTIVE", "expires_from": _iso(now),
                "expires_to": _iso(now + timedelta(milliseconds=EXPIRING_SOON_MS)),
                "sort_by": "expires_at_ms", "sort_dir": "asc"}
    if window in ("finalized_hour", "finalized_today"):
        start = now - timedelta(hours=1) if window == "finalized_hour" else now.replace(
            hour=0, minute=0, second=0, microsecond=0)
        # Commit and release are accepted only until expiry + grace (at most
        # a minute): a reservation finalised since `start` expires after
        # start - 1 min. Saying so lets the list read the (tenant, expiry)
        # index instead of every reservation of the tenant.
        return {"finalized_from": _iso(start), "expires_from": _iso(start - timedelta(milliseconds=MAX_GRACE_MS))}
    return {}


@post("/reservations/release", status_code=303)
async def force_release(request: Request[Any, Any, Any]) -> Response[Any]:
    session, form, refusal = await checked_form(request)
    if refusal is not None or session is None:
        return refusal or login_redirect()
    reservation_id = form_text(form, "reservation_id")
    back = {"tenant": form_text(form, "back_tenant"), "status": form_text(form, "back_status")}
    if reservation_id is None or len(reservation_id) > 128:
        return redirect_back("/dashboard/reservations", back, error="Force-release needs a reservation id.")
    if form.get("confirmed") != "yes":
        return confirmation(request, session, request.url.path,
                        f"Force-release the reservation {reservation_id}? Its hold goes back to the budgets.", form)
    body = {"idempotency_key": form_text(form, "idempotency_key") or "dash_" + secrets.token_hex(12),
            "reason": "force-released from the dashboard"}
    try:
        await runtime_call(request, session, "releaseReservation", runtime_reservations.RELEASE_SQL, {
            "id": reservation_id, "request": json_text(body)})
    except DashboardError as exc:
        return redirect_back("/dashboard/reservations", back,
                     error=f"Force-release of {reservation_id} refused: {exc.error}: {exc.message}")
    return redirect_back("/dashboard/reservations", back, notice=f"Reservation {reservation_id} released.")


ROUTES: Final = [
    login_page, login, logout, overview, budgets_page, budget_detail, fund_budget, freeze_budget, unfreeze_budget,
    reservations_page, force_release,
]
