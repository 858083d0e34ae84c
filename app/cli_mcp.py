"""``cycles mcp serve`` and ``cycles mcp gateway``: the Model Context Protocol
servers (app.mcp), configured by ``CYCLES_BASE_URL``, ``CYCLES_API_KEY`` and
the default subject ``CYCLES_TENANT`` ... ``CYCLES_TOOLSET``.

stdio is the default transport (an MCP host starts the command);
``--transport http`` serves Streamable HTTP on ``/mcp`` plus ``/health``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import click

from app.mcp.errors import UpstreamError

DEFAULT_MCP_PORT = 7879

_transport = click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio",
                          show_default=True, help="stdio for a host that starts this command; http to serve "
                                                  "Streamable HTTP on /mcp.")
_host = click.option("--host", default="127.0.0.1", show_default=True, help="HTTP: address to listen on.")
_port = click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_MCP_PORT, show_default=True,
                     help="HTTP: port to listen on.")
_token = click.option("--token", envvar="CYCLES_MCP_TOKEN", default=None,
                      help="HTTP: require 'Authorization: Bearer TOKEN' on /mcp [env CYCLES_MCP_TOKEN].")


def _first_line(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _run(main: Callable[[], Awaitable[None]]) -> None:
    # stdout carries the stdio protocol: diagnostics go to stderr only.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="cycles mcp: %(message)s")
    try:
        anyio.run(main)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        raise click.ClickException(str(exc) if isinstance(exc, UpstreamError) else _first_line(exc)) from exc


def _settings() -> Any:
    from app.mcp.settings import McpSettings, SettingsError

    try:
        return McpSettings.from_env()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from exc


@click.group(name="mcp")
def mcp_group() -> None:
    """Model Context Protocol servers for agents (Claude Desktop, Cursor, ...).

    Both talk to a running Cycles server: CYCLES_BASE_URL (default
    http://127.0.0.1:7878), CYCLES_API_KEY (required) and the default subject
    CYCLES_TENANT, CYCLES_WORKSPACE, CYCLES_APP, CYCLES_WORKFLOW, CYCLES_AGENT,
    CYCLES_TOOLSET.
    """


@mcp_group.command(name="serve")
@_transport
@_host
@_port
@_token
def serve_command(transport: str, host: str, port: int, token: str | None) -> None:
    """Budget tools, resources and prompts an agent calls itself (reserve, commit, ...)."""
    from app.mcp.budget_server import build_budget_server
    from app.mcp.transport import http_app, run_stdio

    settings = _settings()
    if transport == "stdio":
        async def main() -> None:
            async with settings.client() as client:
                await run_stdio(build_budget_server(settings, client))

        _run(main)
        return
    client = settings.client()

    @contextlib.asynccontextmanager
    async def around() -> AsyncIterator[None]:
        async with client:
            yield

    app = http_app(build_budget_server(settings, client), host=host, token=token, around=around)
    click.echo(f"cycles mcp: serving MCP on http://{host}:{port}/mcp (Ctrl-C to stop)", err=True)
    _run_http(app, host, port)


def _run_http(app: Any, host: str, port: int) -> None:
    from app.mcp.transport import run_http

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="cycles mcp: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        run_http(app, host, port)


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"{value!r} is not 'Name: value'", param_hint="--upstream-header")
        headers[name.strip()] = content.strip()
    return headers


@mcp_group.command(name="gateway")
@click.option("--upstream", required=True,
              help="The MCP server to front: a command line (started over stdio) or an http(s) URL.")
@click.option("--costs", "costs_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Cost map file (TOML, or JSON by suffix): estimate per tool. Default: 1 USD_MICROCENTS a call.")
@click.option("--toolset", default=None, help="Budget level of the calls [default: cost map's, else the "
                                              "upstream's server name].")
@click.option("--upstream-header", "upstream_headers", multiple=True,
              help="HTTP upstream: a header to send, 'Name: value' (repeatable).")
@_transport
@_host
@_port
@_token
def gateway_command(upstream: str, costs_path: Path | None, toolset: str | None,
                    upstream_headers: tuple[str, ...], transport: str, host: str, port: int,
                    token: str | None) -> None:
    """Front another MCP server: every tool call is reserved first, run only if allowed,
    then committed (or released if it fails)."""
    from app.mcp.costmap import CostMapError, load_cost_map, toolset_name
    from app.mcp.gateway import Gateway, build_gateway_server
    from app.mcp.transport import http_app, run_stdio
    from app.mcp.upstream import connect_upstream

    settings = _settings()
    try:
        costs = load_cost_map(costs_path)
    except CostMapError as exc:
        raise click.UsageError(str(exc)) from exc
    if toolset is not None and toolset_name(toolset) != toolset:
        raise click.BadParameter("letters, digits, '_', '.' and '-' only (1-128)", param_hint="--toolset")
    headers = _headers(upstream_headers)
    client = settings.client()
    gateway = Gateway(settings, client, costs, toolset)
    server = build_gateway_server(gateway)

    @contextlib.asynccontextmanager
    async def connected() -> AsyncIterator[None]:
        async with client, contextlib.AsyncExitStack() as stack:
            try:
                gateway.upstream = await stack.enter_async_context(connect_upstream(upstream, headers))
            except Exception as exc:
                raise UpstreamError(f"cannot connect to the upstream {upstream!r}: {_first_line(exc)}") from exc
            yield

    if transport == "stdio":
        async def main() -> None:
            async with connected():
                await run_stdio(server)

        _run(main)
        return

    async def health() -> dict[str, Any]:
        return {"upstream": gateway.upstream.name if gateway.upstream else None}

    app = http_app(server, host=host, token=token, around=connected, health=health)
    click.echo(f"cycles mcp: gateway for {upstream} on http://{host}:{port}/mcp (Ctrl-C to stop)", err=True)
    _run_http(app, host, port)


def register(cli: click.Group) -> None:
    cli.add_command(mcp_group)
