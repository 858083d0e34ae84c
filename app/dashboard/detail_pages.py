"""A reservation's detail page, and patching a budget's overdraft limit.

The reservation detail shows what GET /v1/reservations/{id} returns
(cycles.get_reservation, called as the reservations list calls it) and, from
cycles.dashboard_reservation_history, the ledger rows and events the
reservation wrote. The overdraft limit is changed with PATCH
/v1/admin/budgets's function, cycles.update_budget, after a confirmation.
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, Response, get, post

from app.api import reservations as runtime_reservations
from app.api.admin import budgets as admin_budgets
from app.dashboard.calls import DashboardError, admin_call, runtime_call
from app.dashboard.sessions import load_session
from app.dashboard.web import (
    checked_form,
    confirmation,
    form_integer,
    form_text,
    json_text,
    login_redirect,
    query_text,
    redirect_back,
    render,
)

HISTORY_SQL: Final = (
    "SELECT cycles.dashboard_reservation_history(p_reservation_id => %(id)s, p_ctx => %(ctx)s::jsonb)::text")
MAX_RESERVATION_ID_LENGTH: Final = 128


@get("/reservations/detail")
async def reservation_detail(request: Request[Any, Any, Any]) -> Response[Any]:
    session = await load_session(request)
    if session is None:
        return login_redirect()
    reservation_id = query_text(request, "id")
    detail: Any = None
    history: Any = None
    detail_error = history_error = None
    if reservation_id is None or len(reservation_id) > MAX_RESERVATION_ID_LENGTH:
        history_error = "Choose a reservation from the reservations page."
    else:
        try:
            detail = await runtime_call(request, session, "getReservation", runtime_reservations.GET_SQL,
                                        {"id": reservation_id})
        except DashboardError as exc:
            # An expired reservation is 410 RESERVATION_EXPIRED over REST; the
            # history below still shows it.
            detail_error = f"{exc.error}: {exc.message}"
        try:
            history = await admin_call(request, session, "dashboardReservationHistory", "reservation", HISTORY_SQL,
                                       {"id": reservation_id}, resource_id=reservation_id)
        except DashboardError as exc:
            history_error = f"{exc.error}: {exc.message}"
    reservation = detail or (history or {}).get("reservation")
    return render("reservation_detail.html", request, session, reservation_id=reservation_id, detail=detail,
                  reservation=reservation, history=history, detail_error=detail_error,
                  history_error=history_error)


@post("/budgets/overdraft", status_code=303)
async def patch_overdraft(request: Request[Any, Any, Any]) -> Response[Any]:
    """PATCH /v1/admin/budgets {"overdraft_limit": n}, after a confirmation."""
    session, form, refusal = await checked_form(request)
    if refusal is not None or session is None:
        return refusal or login_redirect()
    scope, unit = form_text(form, "scope"), form_text(form, "unit")
    limit = form_integer(form, "overdraft_limit")
    back = {"tenant_id": form_text(form, "back_tenant_id"), "scope_prefix": form_text(form, "back_scope_prefix"),
            "status": form_text(form, "back_status"), "attention": form_text(form, "back_attention"),
            "view": form_text(form, "back_view"), "search": form_text(form, "back_search")}
    if scope is None or unit not in admin_budgets.UNITS or limit is None or limit < 0:
        return redirect_back("/dashboard/budgets", back,
                             error="The overdraft limit must be a whole number of at least 0.")
    if form.get("confirmed") != "yes":
        return confirmation(
            request, session, request.url.path,
            f"Set the overdraft limit of {scope} ({unit}) to {limit:,}? Commits may then leave up to that much "
            "debt on it.", form, cancel="/dashboard/budgets")
    try:
        result = await admin_call(request, session, "updateBudget", "budget", admin_budgets.UPDATE_SQL, {
            "scope": scope, "unit": unit, "patch": json_text({"overdraft_limit": limit})},
            resource_id=f"{scope} {unit}")
    except DashboardError as exc:
        return redirect_back("/dashboard/budgets", back,
                             error=f"Overdraft limit of {scope} ({unit}) refused: {exc.error}: {exc.message}")
    new_limit = (result.get("overdraft_limit") or {}).get("amount", limit)
    return redirect_back("/dashboard/budgets", back,
                         notice=f"{scope} ({unit}): overdraft limit now {new_limit}.")


ROUTES: Final = [reservation_detail, patch_overdraft]
