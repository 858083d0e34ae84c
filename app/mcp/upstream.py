"""The gateway's connection to the MCP server it fronts: a command started
as a stdio subprocess, or a Streamable HTTP URL."""

from __future__ import annotations

import os
import shlex
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from app.mcp.errors import UpstreamError

# The upstream is someone else's code: it gets the environment, minus the
# secrets that give access to budgets and to this gateway.
WITHHELD_VARIABLES = ("CYCLES_API_KEY", "CYCLES_ADMIN_API_KEY", "CYCLES_MCP_TOKEN")


@dataclass
class Upstream:
    session: ClientSession
    name: str
    target: str

    async def list_tools(self) -> list[types.Tool]:
        tools: list[types.Tool] = []
        cursor: str | None = None
        while True:
            page = await self.session.list_tools(
                params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            tools.extend(page.tools)
            cursor = page.nextCursor
            if not cursor:
                return tools


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def upstream_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {name: value for name, value in env.items() if name not in WITHHELD_VARIABLES}


@asynccontextmanager
async def connect_upstream(target: str, headers: Mapping[str, str] | None = None) -> AsyncIterator[Upstream]:
    """An initialized session with the upstream, closed (and a subprocess
    stopped) on exit."""
    if is_url(target):
        # A response stream may stay open while a long tool runs: generous read timeout.
        http = httpx.AsyncClient(headers=dict(headers or {}), timeout=httpx.Timeout(30.0, read=300.0))
        async with (http, streamable_http_client(target, http_client=http) as (read, write, _),
                    ClientSession(read, write) as session):
            yield await _initialized(session, target)
        return
    argv = shlex.split(target)
    if not argv:
        raise UpstreamError("--upstream is empty: give a command line or an http(s) URL")
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=upstream_environment())
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        yield await _initialized(session, target)


async def _initialized(session: ClientSession, target: str) -> Upstream:
    result = await session.initialize()
    return Upstream(session=session, name=result.serverInfo.name, target=target)
