"""The hot runtime routes, answered without the framework's per-request work.

Reserve, commit, extend, decide and events are each an API key, a JSON body
checked by msgspec and one cycles.* call whose JSON is the response. For
them Litestar's routing, Request, handler signature and Response cost more
CPU than everything else the server does for the request but the database
call. ``DirectRoutes`` sits in front of the router (inside Litestar's
exception middleware) and serves a plain request of these routes itself:

- It only takes the exact path, with a valid Host, a Content-Length within
  the body limit, no Transfer-Encoding and an X-Cycles-API-Key. Anything
  else goes to the router untouched.
- It sets the scope as the router would (route handler, path template, path
  parameters, the route's exception handlers), so a failure of the database
  call goes through the same exception handlers, and the request observer
  (metrics, access log, spans) records the same route.
- It reads the body, then checks what the route handler checks, with the
  same functions. A request the handler would refuse before calling SQL is
  handed to the router with the body replayed: the refusal is the route
  handler's own response.
- Live reserves and commits go through the reserve and settle batchers,
  as in their route handlers.
- A success is sent as the two ASGI messages Litestar sends for the
  handler's ``Response(bytes, media_type=JSON)``; the id headers are added
  by the app's send wrapper as for every response.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from litestar import Litestar
from litestar.types import ASGIApp, Receive, Send
from litestar.utils.scope.state import ScopeState

from app.api import decide, events, reservations
from app.api.request_parsing import (
    api_key_of,
    check_idempotency_key,
    checked_reservation_id,
    decode_body,
    scope_context_json,
)
from app.db import Database
from app.errors import ApiError
from app.reserve_batcher import ReserveBatcher
from app.settle_batcher import SettleBatcher

logger = logging.getLogger("cycles.api")

_JSON_HEADER: Final = (b"content-type", b"application/json")
_RESERVATIONS: Final = "/v1/reservations/"


@dataclass(frozen=True)
class BodyCall:
    """A route that is one cycles.* call on an API key and a JSON body
    (and, for ``id_suffix`` routes, a reservation id in the path)."""

    example_path: str  # a path the router maps to the route
    sql: str
    decoder: msgspec.json.Decoder[Any]
    status: int = 200
    id_suffix: str | None = None  # "/commit": /v1/reservations/{reservation_id}/commit
    # Which batcher the route's calls go through, as in the route handler:
    # "reserve" (live reserves), "commit" (the settle batcher), or none.
    batcher: str | None = None


CALLS: Final = (
    BodyCall("/v1/reservations", reservations.RESERVE_SQL, reservations.create_decoder, batcher="reserve"),
    BodyCall("/v1/reservations/x/commit", reservations.COMMIT_SQL, reservations.commit_decoder,
             id_suffix="/commit", batcher="commit"),
    BodyCall("/v1/reservations/x/extend", reservations.EXTEND_SQL, reservations.extend_decoder,
             id_suffix="/extend"),
    BodyCall("/v1/decide", decide.DECIDE_SQL, decide.decoder),
    BodyCall("/v1/events", events.CREATE_EVENT_SQL, events.decoder, status=201),
)


@dataclass(frozen=True)
class _Route:
    """A BodyCall with what the router resolves for it."""

    call: BodyCall
    route_handler: Any
    path_template: str
    param_name: str | None
    exception_handlers: Any


class _Replay:
    """An ASGI receive that first gives back the messages already read."""

    def __init__(self, messages: list[Any], receive: Receive) -> None:
        self.messages = deque(messages)
        self.receive = receive

    async def __call__(self) -> Any:
        if self.messages:
            return self.messages.popleft()
        return await self.receive()


class DirectRoutes:
    """ASGI app in front of Litestar's router (see the module docstring)."""

    def __init__(self, app: Litestar, database: Database, reserve_batcher: ReserveBatcher | None,
                 settle_batcher: SettleBatcher | None, max_body_bytes: int,
                 is_valid_host: Callable[[Any], bool]) -> None:
        self.router: ASGIApp = app.asgi_router
        self.is_valid_host = is_valid_host
        self.database = database
        self.reserve_batcher = reserve_batcher
        self.settle_batcher = settle_batcher
        self.max_body_bytes = max_body_bytes
        self.exact: dict[str, _Route] = {}
        self.by_suffix: dict[str, _Route] = {}
        for call in CALLS:
            _, handler, _, params, template = app.asgi_router.handle_routing(path=call.example_path, method="POST")
            route = _Route(call, handler, template, next(iter(params), None),
                           handler.resolve_exception_handlers())
            if call.id_suffix is None:
                self.exact[call.example_path] = route
            else:
                self.by_suffix[call.id_suffix] = route

    def _route(self, path: str) -> tuple[_Route, str | None] | None:
        route = self.exact.get(path)
        if route is not None:
            return route, None
        if not path.startswith(_RESERVATIONS):
            return None
        cut = path.rfind("/")
        route = self.by_suffix.get(path[cut:])
        if route is None or cut <= len(_RESERVATIONS) or "/" in path[len(_RESERVATIONS):cut]:
            return None
        return route, path[len(_RESERVATIONS):cut]

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        found = (self._route(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST"
                 and not scope.get("root_path") else None)
        if found is None:
            await self.router(scope, receive, send)
            return
        route, path_id = found
        key = idempotency_key = length = host = None
        for name, value in scope["headers"]:
            if name == b"x-cycles-api-key":
                key = value if key is None else key
            elif name == b"content-length":
                length = value if length is None else length
            elif name == b"host":
                host = value if host is None else host
            elif name == b"x-idempotency-key":
                idempotency_key = value if idempotency_key is None else idempotency_key
            elif name == b"transfer-encoding":
                length = b"chunked"
        if (not key or length is None or not length.isdigit() or int(length) > self.max_body_bytes
                or (host is not None and not self.is_valid_host(host))):
            await self.router(scope, receive, send)
            return
        # What the router sets for the route (and nothing it would not).
        scope["path_params"] = {route.param_name: path_id} if route.param_name is not None else {}
        scope["route_handler"] = route.route_handler
        scope["path_template"] = route.path_template
        ScopeState.from_scope(scope).exception_handlers = route.exception_handlers

        messages: list[Any] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                await self.router(scope, _Replay(messages, receive), send)
                return
            chunk: bytes = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body_bytes:
                await self.router(scope, _Replay(messages, receive), send)
                return
            if not message.get("more_body", False):
                break
        call = route.call
        try:
            caller = api_key_of(key.decode("latin-1"))
            path_id = checked_reservation_id(path_id) if path_id is not None else None
            parsed, body = decode_body(b"".join(chunks) if len(chunks) != 1 else chunks[0], call.decoder)
            check_idempotency_key(
                idempotency_key.decode("latin-1") if idempotency_key is not None else None, parsed.idempotency_key)
        except ApiError:
            # Refused before SQL: the route handler refuses it again, itself.
            await self.router(scope, _Replay(messages, receive), send)
            return
        ctx = scope_context_json(scope, caller)
        assert caller.api_key is not None
        if call.batcher == "reserve" and self.reserve_batcher is not None and parsed.dry_run is not True:
            content = await self.reserve_batcher.reserve(caller.api_key, body, ctx)
        elif call.batcher == "commit" and self.settle_batcher is not None and path_id is not None:
            content = await self.settle_batcher.commit(caller.api_key, path_id, body, ctx)
        else:
            params: dict[str, Any] = {"key": caller.api_key, "request": body, "ctx": ctx}
            if path_id is not None:
                params["id"] = path_id
            content = await self.database.fetch_json(call.sql, params)
        await send({"type": "http.response.start", "status": call.status,
                    "headers": [_JSON_HEADER, (b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content, "more_body": False})


def install(app: Litestar, database: Database, reserve_batcher: ReserveBatcher | None,
            settle_batcher: SettleBatcher | None, max_body_bytes: int) -> bool:
    """Put DirectRoutes between Litestar's exception middleware and its
    router; False (the framework's path serves every route) when that layout
    or the framework's host check is not where this Litestar release was
    known to keep them."""
    try:
        # Internal to Litestar: a release that moves them only costs speed.
        from litestar._asgi.utils import is_valid_host
        from litestar.middleware._internal.exceptions.middleware import ExceptionHandlerMiddleware
    except ImportError:
        logger.warning("direct routes off: this Litestar release does not have the internals they use")
        return False
    handler = app.asgi_handler
    if not isinstance(handler, ExceptionHandlerMiddleware) or handler.app is not app.asgi_router:
        # Another layer (CORS, a plugin) sits in between: keep the framework's path.
        return False
    handler.app = DirectRoutes(app, database, reserve_batcher, settle_batcher, max_body_bytes, is_valid_host)
    return True
