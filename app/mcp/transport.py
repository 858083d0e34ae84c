"""Running an MCP server over stdio, or over Streamable HTTP (``/mcp``) with
an optional bearer token and an open ``/health`` for load balancers."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

import anyio
import uvicorn
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

MCP_PATH: Final = "/mcp"
LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")


async def run_stdio(server: Server[Any, Any]) -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


class BearerToken:
    """Refuses requests to the MCP endpoint without ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse({"error": "UNAUTHORIZED", "message": "missing or wrong bearer token"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Endpoint:
    def __init__(self, manager: StreamableHTTPSessionManager) -> None:
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.manager.handle_request(scope, receive, send)


def http_app(
    server: Server[Any, Any], *, host: str, token: str | None = None,
    around: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
    health: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> ASGIApp:
    """The ASGI app: ``/mcp`` (Streamable HTTP) and ``/health``. ``around`` is
    entered for the app's lifetime, before the sessions start (the gateway
    opens its upstream there)."""
    security = None
    if host in LOOPBACK:
        # Bound to loopback: refuse other Host headers (DNS rebinding from a browser).
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"])
    manager = StreamableHTTPSessionManager(app=server, security_settings=security)

    async def health_route(_: Request) -> Response:
        body: dict[str, Any] = {"status": "ok", "server": server.name}
        if health is not None:
            body.update(await health())
        return JSONResponse(body)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if around is not None:
                await stack.enter_async_context(around())
            await stack.enter_async_context(manager.run())
            yield

    app: ASGIApp = Starlette(
        # An ASGI-app endpoint: /mcp itself, every method, no redirect to /mcp/.
        routes=[Route("/health", health_route, methods=["GET"]), Route(MCP_PATH, endpoint=_Endpoint(manager))],
        lifespan=lifespan)
    if token:
        app = BearerToken(app, token)
    return app


def run_http(app: ASGIApp, host: str, port: int, log_level: str = "warning") -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on")
    anyio.run(uvicorn.Server(config).serve)
