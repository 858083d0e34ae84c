"""Webhook subscriptions: health, delivery history, replay, test delivery,
pause and resume, through the functions of /v1/admin/webhooks
(app.api.webhooks_common): cycles.list_webhooks, get_webhook,
list_webhook_deliveries, replay_webhook_events, test_webhook (sent here as the
REST endpoint sends it) and update_webhook {"status": "PAUSED"|"ACTIVE"}.

A tenant session sees and manages only its tenant's subscriptions, with the
webhooks:* or admin:webhooks:* permissions its key has (checked in SQL; the
replay needs admin:webhooks:write, as over REST). Pausing is an emergency
action and asks for confirmation. The test and the replay functions write
no audit row of their own, so a successful one is recorded with
cycles.dashboard_audit_action; failures are recorded like every other call.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

from litestar import Request, Response, get, post

from app.api import webhooks_common
from app.api.admin.calls import AdminCall
from app.dashboard.calls import DashboardError, admin_call, admin_run
from app.dashboard.sessions import Session, load_session
from app.dashboard.web import (
    checked_form,
    confirmation,
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
SUBSCRIPTION_STATUSES: Final = ("ACTIVE", "PAUSED", "DISABLED")
DELIVERY_STATUSES: Final = ("PENDING", "SUCCESS", "FAILED", "RETRYING")
AUDIT_SQL: Final = (
    "SELECT cycles.dashboard_audit_action(p_operation => %(operation)s, p_resource_id => %(id)s,"
    " p_tenant_id => %(tenant_id)s, p_metadata => %(metadata)s::jsonb, p_ctx => %(ctx)s::jsonb)::text")


def health(subscription: Mapping[str, Any]) -> str:
    """One word for the list: disabled (by failures), paused, failing (n
    consecutive failures), or healthy."""
    status = subscription.get("status")
    failures = subscription.get("consecutive_failures") or 0
    if status == "DISABLED":
        return "disabled"
    if status == "PAUSED":
        return "paused"
    return f"failing ({failures} in a row)" if failures else "healthy"


@get("/webhooks")
async def webhooks_page(request: Request[Any, Any, Any]) -> Response[Any]:
    session = await load_session(request)
    if session is None:
        return login_redirect()
    filters = {"tenant_id": query_text(request, "tenant_id") if session.is_admin else None,
               "status": query_text(request, "status", SUBSCRIPTION_STATUSES)}
    cursor = query_text(request, "cursor")
    page: Any = {"subscriptions": []}
    error = None
    try:
        page = await admin_call(request, session, "listWebhookSubscriptions", "webhook", webhooks_common.LIST_SQL, {
            "tenant": filters["tenant_id"], "status": filters["status"], "event_type": None, "search": None,
            "cursor": cursor if cursor and cursor.isdigit() else None, "limit": PAGE_SIZE},
            tenant_id=filters["tenant_id"])
    except DashboardError as exc:
        error = exc.message
    rows = [{**row, "health": health(row)} for row in page.get("subscriptions", [])]
    return render("webhooks.html", request, session, rows=rows, filters=filters, statuses=SUBSCRIPTION_STATUSES,
                  load_error=error, **page_links("/dashboard/webhooks", filters, page, cursor))


@get("/webhooks/detail")
async def webhook_detail(request: Request[Any, Any, Any]) -> Response[Any]:
    session = await load_session(request)
    if session is None:
        return login_redirect()
    subscription_id = query_text(request, "id")
    status = query_text(request, "status", DELIVERY_STATUSES)
    cursor = query_text(request, "cursor")
    subscription: Any = None
    page: Any = {"deliveries": []}
    error = None
    if subscription_id is None or len(subscription_id) > webhooks_common.MAX_SUBSCRIPTION_ID_LENGTH:
        error = "Choose a subscription from the webhooks page."
    else:
        try:
            subscription = await admin_call(
                request, session, "getWebhookSubscription", "webhook", webhooks_common.GET_SQL,
                {"id": subscription_id}, resource_id=subscription_id)
            page = await admin_call(
                request, session, "listWebhookDeliveries", "webhook", webhooks_common.DELIVERIES_SQL, {
                    "id": subscription_id, "status": status, "from": None, "to": None,
                    "cursor": cursor if cursor and cursor.isdigit() else None, "limit": PAGE_SIZE},
                resource_id=subscription_id)
        except DashboardError as exc:
            error = f"{exc.error}: {exc.message}"
    now = datetime.now(UTC).replace(microsecond=0)
    filters = {"id": subscription_id, "status": status}
    return render("webhook_detail.html", request, session, subscription=subscription,
                  health=health(subscription) if subscription else None, deliveries=page.get("deliveries", []),
                  filters=filters, statuses=DELIVERY_STATUSES, load_error=error,
                  replay_from=(now - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
                  replay_to=now.isoformat().replace("+00:00", "Z"),
                  **page_links("/dashboard/webhooks/detail", filters, page, cursor))


def _detail(subscription_id: str, **outcome: str) -> Response[Any]:
    return redirect_back("/dashboard/webhooks/detail", {"id": subscription_id}, **outcome)


def _subscription(form: Mapping[str, Any]) -> str | None:
    value = form_text(form, "subscription_id")
    return value if value is not None and len(value) <= webhooks_common.MAX_SUBSCRIPTION_ID_LENGTH else None


async def _audit_success(
    request: Request[Any, Any, Any], session: Session, operation: str, subscription_id: str,
    tenant_id: str | None, metadata: dict[str, Any],
) -> None:
    await admin_call(request, session, operation, "webhook", AUDIT_SQL, {
        "operation": operation, "id": subscription_id, "tenant_id": tenant_id, "metadata": json_text(metadata)},
        resource_id=subscription_id)


@post("/webhooks/status", status_code=303)
async def change_status(request: Request[Any, Any, Any]) -> Response[Any]:
    """Pause (after a confirmation: deliveries wait, nothing is lost) or
    resume (also re-enables a subscription disabled by failures)."""
    session, form, refusal = await checked_form(request)
    if refusal is not None or session is None:
        return refusal or login_redirect()
    subscription_id, status = _subscription(form), form_text(form, "status")
    if subscription_id is None or status not in ("PAUSED", "ACTIVE"):
        return redirect_back("/dashboard/webhooks", {}, error="Choose a subscription and a status.")
    verb = "pause" if status == "PAUSED" else "resume"
    if form.get("confirmed") != "yes" and status == "PAUSED":
        return confirmation(
            request, session, request.url.path,
            f"Pause the webhook {subscription_id}? Its deliveries wait (nothing is sent) until it is resumed.",
            form, cancel=f"/dashboard/webhooks/detail?{urlencode({'id': subscription_id})}")
    try:
        await admin_call(request, session, "updateWebhookSubscription", "webhook", webhooks_common.UPDATE_SQL, {
            "id": subscription_id, "patch": json_text({"status": status})}, resource_id=subscription_id)
    except DashboardError as exc:
        return _detail(subscription_id, error=f"{verb.capitalize()} refused: {exc.error}: {exc.message}")
    return _detail(subscription_id, notice=f"Webhook {subscription_id}: {verb} done.")


@post("/webhooks/test", status_code=303)
async def test_delivery(request: Request[Any, Any, Any]) -> Response[Any]:
    """Sends one system.webhook_test event now (as POST .../test does) and
    shows the endpoint's answer."""
    session, form, refusal = await checked_form(request)
    if refusal is not None or session is None:
        return refusal or login_redirect()
    subscription_id = _subscription(form)
    if subscription_id is None:
        return redirect_back("/dashboard/webhooks", {}, error="Choose a subscription.")

    async def probe(call: AdminCall) -> bytes:
        response = await webhooks_common.test_probe(request, subscription_id, call.context())
        return bytes(response.content)

    try:
        result = await admin_run(request, session, "testWebhookSubscription", "webhook", probe,
                                 resource_id=subscription_id)
        await _audit_success(request, session, "testWebhookSubscription", subscription_id,
                             form_text(form, "tenant_id"), {"event_id": result.get("event_id"),
                                                            "success": result.get("success")})
    except DashboardError as exc:
        return _detail(subscription_id, error=f"Test delivery refused: {exc.error}: {exc.message}")
    if result.get("success"):
        return _detail(subscription_id, notice=(
            f"Test delivery {result.get('event_id')}: HTTP {result.get('response_status')}"
            f" in {result.get('response_time_ms')} ms."))
    return _detail(subscription_id, error=(
        f"Test delivery {result.get('event_id')} failed: "
        f"{result.get('error_message') or 'HTTP ' + str(result.get('response_status'))}"))


def _timestamp(form: Mapping[str, Any], name: str) -> tuple[str | None, str | None]:
    raw = form_text(form, name)
    if raw is None:
        return None, None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        return None, f"{name} must be an ISO-8601 date-time, e.g. 2026-01-01T00:00:00Z"
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat(), None


@post("/webhooks/replay", status_code=303)
async def replay(request: Request[Any, Any, Any]) -> Response[Any]:
    """Queues the window's stored events again for this subscription (as
    POST .../replay does)."""
    session, form, refusal = await checked_form(request)
    if refusal is not None or session is None:
        return refusal or login_redirect()
    subscription_id = _subscription(form)
    if subscription_id is None:
        return redirect_back("/dashboard/webhooks", {}, error="Choose a subscription.")
    start, problem = _timestamp(form, "from")
    end, problem_to = _timestamp(form, "to")
    max_events = form_integer(form, "max_events") if form_text(form, "max_events") else None
    if problem or problem_to or (form_text(form, "max_events") and max_events is None):
        return _detail(subscription_id, error=problem or problem_to or "max_events must be a whole number.")
    body = {name: value for name, value in {"from": start, "to": end, "max_events": max_events}.items()
            if value is not None}
    try:
        result = await admin_call(request, session, "replayWebhookEvents", "webhook", webhooks_common.REPLAY_SQL, {
            "id": subscription_id, "request": json_text(body)}, resource_id=subscription_id)
        await _audit_success(request, session, "replayWebhookEvents", subscription_id, form_text(form, "tenant_id"),
                             {"replay_id": result.get("replay_id"), "events_queued": result.get("events_queued")})
    except DashboardError as exc:
        return _detail(subscription_id, error=f"Replay refused: {exc.error}: {exc.message}")
    return _detail(subscription_id, notice=(
        f"Replay {result.get('replay_id')}: {result.get('events_queued')} event(s) queued."))


ROUTES: Final = [webhooks_page, webhook_detail, change_status, test_delivery, replay]
