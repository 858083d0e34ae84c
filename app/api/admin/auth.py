"""Who is calling an admin endpoint, and the p_ctx every admin function takes.

Two credentials open the admin plane:
- X-Admin-API-Key equal to the server's admin key (compared in constant time
  here, because only the server knows that secret): the platform admin;
- X-Cycles-API-Key, a tenant key: its secret is passed to SQL inside p_ctx,
  where cycles._admin_principal authenticates it, checks the permission the
  function needs and confines the call to the key's tenant. Python never
  decides what a tenant key may do.
The admin key wins when both headers are present.
"""

from __future__ import annotations

import hmac
from typing import Any, Final, Literal, NamedTuple

import msgspec
from litestar import Request

from app.api.request_parsing import ADMIN_KEY_HEADER, API_KEY_HEADER
from app.errors import ApiError
from app.tracing import request_ids

MAX_USER_AGENT_LENGTH: Final = 512

ActorType = Literal["admin", "admin_on_behalf_of", "api_key"]


class AdminPrincipal(NamedTuple):
    """kind "admin": the server's admin key; kind "tenant": a tenant key whose
    secret SQL authenticates (api_key)."""

    kind: Literal["admin", "tenant"]
    api_key: str | None = None


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "UNAUTHORIZED", message)


def admin_principal(request: Request[Any, Any, Any], *, allow_tenant_key: bool = True) -> AdminPrincipal:
    """The caller of an admin endpoint. Raises 401 UNAUTHORIZED when neither
    credential is usable. With allow_tenant_key=False a tenant key is still
    returned as such (SQL refuses it with 403 INSUFFICIENT_PERMISSIONS, so
    that the refusal is audited with the key's identity); the flag only
    changes the wording of the 401 when no credential is sent."""
    presented = request.headers.get(ADMIN_KEY_HEADER)
    if presented:
        expected: str | None = request.app.state.admin_api_key
        if expected is None or not hmac.compare_digest(presented.encode(), expected.encode()):
            raise _unauthorized("invalid admin API key")
        return AdminPrincipal("admin")
    key = request.headers.get(API_KEY_HEADER)
    if key:
        if "\x00" in key:
            raise _unauthorized("missing, unknown, revoked or expired API key")
        return AdminPrincipal("tenant", key)
    if allow_tenant_key:
        raise _unauthorized("missing X-Admin-API-Key or X-Cycles-API-Key header")
    raise _unauthorized("missing X-Admin-API-Key header")


def admin_context(
    request: Request[Any, Any, Any],
    principal: AdminPrincipal | None,
    *,
    on_behalf_of: bool = False,
) -> dict[str, Any]:
    """p_ctx of an admin call: request and trace ids, source address, user
    agent, actor type and, for a tenant key, its secret (SQL strips it after
    authenticating). on_behalf_of marks an admin acting inside one tenant
    (dual-auth endpoints), recorded as actor admin_on_behalf_of."""
    ids = request_ids(request.scope)
    context: dict[str, Any] = {"request_id": ids.request_id, "trace_id": ids.trace_id}
    client = request.scope.get("client")
    if client:
        context["source_ip"] = str(client[0])
    user_agent = request.headers.get("user-agent")
    if user_agent:
        context["user_agent"] = user_agent[:MAX_USER_AGENT_LENGTH]
    if principal is None:
        context["actor_type"] = "admin"
    elif principal.kind == "tenant":
        context["actor_type"] = "api_key"
        context["api_key"] = principal.api_key
    else:
        context["actor_type"] = "admin_on_behalf_of" if on_behalf_of else "admin"
    return context


def context_text(context: dict[str, Any]) -> str:
    return msgspec.json.encode(context).decode()
