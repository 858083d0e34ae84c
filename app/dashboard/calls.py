"""The dashboard's calls: the same cycles.* functions, SQL text and audit as REST.

Each call runs inside app.api.admin.calls.AdminCall (or, for the runtime
functions the admin uses on a tenant's behalf, on_behalf_failures), with the
session's principal in place of the request headers: a successful call is
audited by its SQL function, a failed one by AdminCall, exactly as the REST
endpoint would be. Failures come back as DashboardError, to be shown on the
page rather than as a JSON error body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from litestar import Request

from app.api.admin.calls import AdminCall, failure_of, on_behalf_failures
from app.api.request_parsing import Caller, context_json, database
from app.dashboard.sessions import Session

logger = logging.getLogger("cycles.dashboard")


class DashboardError(Exception):
    """A refused or failed call: its HTTP status, error code and message."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.status = status
        self.error = error
        self.message = message


def as_dashboard_error(exc: Exception) -> DashboardError:
    status, error, message = failure_of(exc)
    if status >= 500:
        logger.exception("dashboard call failed", exc_info=exc)
    return DashboardError(status, error, message)


async def admin_call(
    request: Request[Any, Any, Any],
    session: Session,
    operation: str,
    resource_type: str | None,
    sql: str,
    params: Mapping[str, Any],
    *,
    on_behalf_of: bool = False,
    tenant_id: str | None = None,
    resource_id: str | None = None,
) -> Any:
    """One admin-plane function call as `session`'s principal; its decoded JSON.
    on_behalf_of mirrors the REST endpoint (dual-auth endpoints record an
    admin as admin_on_behalf_of)."""
    return await admin_run(
        request, session, operation, resource_type,
        lambda call: call.fetch(sql, {**params, "ctx": call.context()}),
        on_behalf_of=on_behalf_of, tenant_id=tenant_id, resource_id=resource_id)


async def admin_run(
    request: Request[Any, Any, Any],
    session: Session,
    operation: str,
    resource_type: str | None,
    run: Callable[[AdminCall], Awaitable[bytes]],
    *,
    on_behalf_of: bool = False,
    tenant_id: str | None = None,
    resource_id: str | None = None,
) -> Any:
    """admin_call for an endpoint whose work is more than one fetch (the
    webhook test probe sends the delivery itself): `run` gets the AdminCall,
    whose context() is the p_ctx to pass, and returns the JSON body."""
    try:
        async with AdminCall(request, operation, resource_type) as call:
            call.principal = session.admin_principal()
            call.on_behalf_of = on_behalf_of
            call.tenant_id = tenant_id
            call.resource_id = resource_id
            raw = await run(call)
    except Exception as exc:
        raise as_dashboard_error(exc) from exc
    return msgspec.json.decode(raw)


async def runtime_call(
    request: Request[Any, Any, Any], session: Session, operation: str, sql: str, params: Mapping[str, Any],
) -> Any:
    """A runtime function (p_api_key first) as the REST endpoint calls it: a
    tenant session passes its key; the admin passes NULL and acts on the
    tenant's behalf (admin_on_behalf_of, audited by the function, failures by
    on_behalf_failures)."""
    caller = Caller(session.api_key, "api_key") if not session.is_admin else Caller(None, "admin_on_behalf_of")
    try:
        async with on_behalf_failures(request, caller.api_key, operation):
            raw = await database(request).fetch_json(
                sql, {**params, "key": caller.api_key, "ctx": context_json(request, caller)})
    except Exception as exc:
        raise as_dashboard_error(exc) from exc
    return msgspec.json.decode(raw)
