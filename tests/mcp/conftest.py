"""The MCP tests' world: the real Cycles server (its own database), MCP
servers started as real processes (``cycles mcp ...``), and MCP client
sessions over real transports (stdio pipes, Streamable HTTP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from app.pgcluster import Cluster
from tests.api.provision import Tenant, create_budget, new_tenant, unique
from tests.server import ROOT, ApiServer, free_port, fresh_database, running_server, wait_until_healthy

CYCLES = str(ROOT / ".venv" / "bin" / "cycles")
PYTHON = str(ROOT / ".venv" / "bin" / "python")


@pytest.fixture(scope="session")
def cycles_server(pg_cluster: Cluster) -> Iterator[ApiServer]:
    with running_server(fresh_database(pg_cluster, "cycles_mcp")) as server:
        yield server


@pytest.fixture(scope="session")
def admin_conn(cycles_server: ApiServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(cycles_server.conninfo, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def tenant(admin_conn: psycopg.Connection[Any]) -> Tenant:
    """The tenant the session's MCP servers act for, with a large tenant budget."""
    tenant = new_tenant(admin_conn)
    create_budget(admin_conn, tenant.scope, 10**12)
    return tenant


def mcp_env(server: ApiServer, tenant: Tenant, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("CYCLES_")}
    env.update({"CYCLES_BASE_URL": server.base_url, "CYCLES_API_KEY": tenant.api_key,
                "CYCLES_TENANT": tenant.tenant_id, **extra})
    return env


def funded_workspace(conn: psycopg.Connection[Any], tenant: Tenant, allocated: int, unit: str = "USD_MICROCENTS",
                     ) -> str:
    """A new workspace of the tenant with a budget of its own."""
    workspace = unique("w")
    create_budget(conn, f"{tenant.scope}/workspace:{workspace}", allocated, unit)
    return workspace


@contextmanager
def http_process(args: list[str], env: dict[str, str]) -> Iterator[str]:
    """``args`` (a command taking --port) serving HTTP; yields its base URL."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="mcp-test-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen([*args, "--port", str(port)], env=env, cwd=ROOT, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, base, Path(log.name))
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        os.unlink(log.name)


@asynccontextmanager
async def http_session(base: str, token: str | None = None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30.0, read=60.0)) as http,
                streamable_http_client(f"{base}/mcp", http_client=http) as (read, write, _),
                ClientSession(read, write) as session):
        await session.initialize()
        yield session


@asynccontextmanager
async def stdio_session(args: list[str], env: dict[str, str]) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=args[0], args=args[1:], env=env, cwd=str(ROOT))
    async with stdio_client(params, errlog=sys.stderr) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@pytest.fixture(scope="session")
def serve_http(cycles_server: ApiServer, tenant: Tenant) -> Iterator[str]:
    """``cycles mcp serve --transport http`` for the session tenant."""
    with http_process([CYCLES, "mcp", "serve", "--transport", "http"], mcp_env(cycles_server, tenant)) as base:
        yield base
