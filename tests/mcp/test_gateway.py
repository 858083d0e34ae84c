"""``cycles mcp gateway`` in front of a small upstream MCP server
(tests/mcp/upstream_server.py), over stdio and over HTTP: what runs upstream
is exactly what was allowed, and the ledger shows exactly the calls that ran."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from mcp import ClientSession, types

from tests.api.provision import Tenant, budget, create_budget, unique
from tests.mcp.conftest import CYCLES, PYTHON, http_process, http_session, mcp_env, stdio_session
from tests.server import ApiServer

Conn = psycopg.Connection[Any]
TOOLSET = "test-mail-server"  # the upstream's name "Test Mail Server" as a budget level
UPSTREAM_TOOLS = {"echo", "send_email", "metered", "fails", "crash", "generate"}
COSTS = """\
default = 100
[tools]
send_email = { USD_MICROCENTS = 1000, CREDITS = 1 }
metered = 500
"""
KEY = "io.cycles/idempotency_key"


class World:
    """One workspace of the tenant, the upstream's invocation log and the
    gateway's environment and cost map."""

    def __init__(self, server: ApiServer, tenant: Tenant, conn: Conn, tmp_path: Path, allocated: int) -> None:
        self.tenant = tenant
        self.conn = conn
        self.workspace = unique("gw")
        self.scope = f"{tenant.scope}/workspace:{self.workspace}"
        self.toolset_scope = f"{self.scope}/toolset:{TOOLSET}"
        create_budget(conn, self.scope, allocated)
        self.log = tmp_path / "upstream.log"
        self.costs = tmp_path / "costs.toml"
        self.costs.write_text(COSTS)
        self.env = mcp_env(server, tenant, CYCLES_WORKSPACE=self.workspace, UPSTREAM_LOG=str(self.log))

    def ran(self) -> list[str]:
        if not self.log.exists():
            return []
        return [json.loads(line)["tool"] for line in self.log.read_text().splitlines()]

    def ledger(self, operation: str, unit: str = "USD_MICROCENTS") -> list[tuple[str, int]]:
        """(action name, spent delta) of the workspace's ledger rows of one operation, in order."""
        rows = self.conn.execute(
            "SELECT action_name, spent_delta FROM cycles.ledger_entries WHERE scope = %s AND unit = %s"
            " AND operation = %s ORDER BY entry_id", (self.scope, unit, operation)).fetchall()
        return [(str(name), int(spent)) for name, spent in rows]

    def gateway_args(self, upstream: str) -> list[str]:
        return [CYCLES, "mcp", "gateway", "--upstream", upstream, "--costs", str(self.costs)]


def stdio_upstream() -> str:
    return f"{PYTHON} -m tests.mcp.upstream_server stdio"


def text(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def call(session: ClientSession, name: str, arguments: dict[str, Any] | None = None,
               key: str | None = None) -> types.CallToolResult:
    return await session.call_tool(name, arguments or {}, meta={KEY: key} if key else None)


def test_stdio_gateway_runs_only_what_the_budget_allows(
        cycles_server: ApiServer, tenant: Tenant, admin_conn: Conn, tmp_path: Path) -> None:
    world = World(cycles_server, tenant, admin_conn, tmp_path, allocated=100_000)
    # An action budget: two emails, counted in CREDITS on the upstream's toolset level.
    create_budget(admin_conn, world.toolset_scope, 2, unit="CREDITS")
    outcomes: dict[str, types.CallToolResult] = {}

    async def run() -> list[types.Tool]:
        async with stdio_session(world.gateway_args(stdio_upstream()), world.env) as session:
            tools = (await session.list_tools()).tools
            outcomes["echo"] = await call(session, "echo", {"text": "hi"})
            outcomes["email1"] = await call(session, "send_email", {"to": "a@example.com"})
            outcomes["email2"] = await call(session, "send_email", {"to": "b@example.com"})
            outcomes["email3"] = await call(session, "send_email", {"to": "c@example.com"})
            outcomes["metered"] = await call(session, "metered", {"cost": 250})
            outcomes["fails"] = await call(session, "fails")
            return tools

    tools = anyio.run(run)
    assert {tool.name for tool in tools} == UPSTREAM_TOOLS
    email = next(tool for tool in tools if tool.name == "send_email")
    assert "Pretends to send an email." in (email.description or "")
    assert "reserves 1000 USD_MICROCENTS, 1 CREDITS" in (email.description or "")

    for name in ("echo", "email1", "email2", "metered"):
        assert not outcomes[name].isError, text(outcomes[name])
    assert outcomes["echo"].structuredContent == {"tool": "echo", "arguments": {"text": "hi"}}
    assert (outcomes["echo"].meta or {})["io.cycles/gateway"]["charged"] == {"USD_MICROCENTS": 100}
    assert (outcomes["metered"].meta or {})["io.cycles/gateway"]["charged"] == {"USD_MICROCENTS": 250}

    denied = outcomes["email3"]
    assert denied.isError and (denied.structuredContent or {})["error"] == "BUDGET_EXCEEDED"
    assert "The tool send_email was not run" in text(denied)
    assert world.toolset_scope.lower() in text(denied) and "0 CREDITS left" in text(denied)

    assert outcomes["fails"].isError and "boom" in text(outcomes["fails"])
    assert (outcomes["fails"].meta or {})["io.cycles/gateway"]["released"] is True

    # The third email never reached the upstream; everything else ran exactly once.
    assert world.ran() == ["echo", "send_email", "send_email", "metered", "fails"]
    # The ledger: a commit for each call that ran and succeeded, a release for the one that failed.
    assert world.ledger("COMMIT") == [("echo", 100), ("send_email", 1000), ("send_email", 1000), ("metered", 250)]
    assert [name for name, _ in world.ledger("RELEASE")] == ["send_email", "fails"]
    assert world.ledger("COMMIT", "CREDITS") == []  # CREDITS live on the toolset level only
    row = budget(admin_conn, world.scope)
    assert (row["spent"], row["reserved"]) == (2350, 0)
    credits = budget(admin_conn, world.toolset_scope, "CREDITS")
    assert (credits["spent"], credits["reserved"], credits["remaining"]) == (2, 0, 0)


def test_stdio_gateway_retries_with_one_key_run_and_charge_once(
        cycles_server: ApiServer, tenant: Tenant, admin_conn: Conn, tmp_path: Path) -> None:
    world = World(cycles_server, tenant, admin_conn, tmp_path, allocated=100_000)

    async def first_process() -> tuple[types.CallToolResult, ...]:
        async with stdio_session(world.gateway_args(stdio_upstream()), world.env) as session:
            first = await call(session, "echo", {"text": "once"}, key="retry-1")
            again = await call(session, "echo", {"text": "once"}, key="retry-1")
            reused = await call(session, "echo", {"text": "other"}, key="retry-1")
            assert reused.isError and "already used for a different call" in text(reused)
            failed = await call(session, "fails", key="retry-2")
            failed_again = await call(session, "fails", key="retry-2")
            concurrent: list[types.CallToolResult] = []

            async def one() -> None:
                concurrent.append(await call(session, "echo", {"text": "together"}, key="retry-3"))

            async with anyio.create_task_group() as group:
                group.start_soon(one)
                group.start_soon(one)
            return first, again, failed, failed_again, concurrent

    first, again, failed, failed_again, concurrent = anyio.run(first_process)
    # Two simultaneous calls with one key: one ran, the other waited and got its result.
    assert not concurrent[0].isError and concurrent[0].model_dump() == concurrent[1].model_dump()
    assert not first.isError and again.model_dump() == first.model_dump()
    assert failed.isError and failed_again.isError
    # A failed call released its hold, so its retry ran again (and was released again).
    assert world.ran() == ["echo", "fails", "fails", "echo"]

    async def restarted_process() -> tuple[types.CallToolResult, types.CallToolResult]:
        async with stdio_session(world.gateway_args(stdio_upstream()), world.env) as session:
            return (await call(session, "echo", {"text": "once"}, key="retry-1"),
                    await call(session, "metered", {"cost": 1}, key="retry-1"))

    after_restart, other_tool = anyio.run(restarted_process)
    assert other_tool.isError and "already used for a different call" in text(other_tool)
    assert after_restart.isError and "already ran and was charged" in text(after_restart)
    assert world.ran() == ["echo", "fails", "fails", "echo"]
    assert world.ledger("COMMIT") == [("echo", 100), ("echo", 100)]
    assert [name for name, _ in world.ledger("RELEASE")] == ["fails", "fails"]
    assert budget(admin_conn, world.scope)["spent"] == 200


@pytest.fixture
def http_upstream(tmp_path: Path, cycles_server: ApiServer, tenant: Tenant) -> Any:
    log = tmp_path / "upstream.log"
    env = mcp_env(cycles_server, tenant, UPSTREAM_LOG=str(log))
    with http_process([PYTHON, "-m", "tests.mcp.upstream_server", "http"], env) as base:
        yield f"{base}/mcp"


def test_http_gateway_over_http_upstream(
        cycles_server: ApiServer, tenant: Tenant, admin_conn: Conn, tmp_path: Path, http_upstream: str) -> None:
    world = World(cycles_server, tenant, admin_conn, tmp_path, allocated=250)
    env = {**world.env, "CYCLES_MCP_TOKEN": "gw-token"}
    with http_process([*world.gateway_args(http_upstream), "--transport", "http"], env) as base:
        health = httpx.get(f"{base}/health").json()
        assert health == {"status": "ok", "server": "cycles-gateway", "upstream": "Test Mail Server"}
        assert httpx.post(f"{base}/mcp", json={}).status_code == 401

        async def run() -> list[types.CallToolResult]:
            async with http_session(base, token="gw-token") as session:
                outcomes = [await call(session, "echo", {"text": "a"}, key="http-1")]
                outcomes.append(await call(session, "echo", {"text": "b"}))
            async with http_session(base, token="gw-token") as session:
                outcomes.append(await call(session, "echo", {"text": "a"}, key="http-1"))  # a retry
                outcomes.append(await call(session, "echo", {"text": "c"}))  # 50 left: over budget
                outcomes.append(await call(session, "no_such_tool", {}))
            return outcomes

        first, second, retry, over, unknown = anyio.run(run)
    assert not first.isError and not second.isError
    assert retry.model_dump() == first.model_dump()
    assert over.isError and (over.structuredContent or {})["details"]["remaining"] == 50
    assert unknown.isError and "Unknown tool 'no_such_tool'" in text(unknown)
    assert world.ran() == ["echo", "echo"]
    assert world.ledger("COMMIT") == [("echo", 100), ("echo", 100)]
    assert budget(admin_conn, world.scope)["remaining"] == 50


def test_zero_budget_tool_is_never_executed(
        cycles_server: ApiServer, tenant: Tenant, admin_conn: Conn, tmp_path: Path, http_upstream: str) -> None:
    world = World(cycles_server, tenant, admin_conn, tmp_path, allocated=0)

    async def run() -> list[types.CallToolResult]:
        async with stdio_session(world.gateway_args(http_upstream), world.env) as session:
            return [await call(session, name, arguments) for name, arguments in
                    [("echo", {"text": "x"}), ("send_email", {"to": "x@example.com"}), ("fails", {})]]

    for result in anyio.run(run):
        assert result.isError and "was not run" in text(result)
    assert world.ran() == []
    operations = admin_conn.execute(
        "SELECT DISTINCT operation FROM cycles.ledger_entries WHERE scope = %s", (world.scope,)).fetchall()
    assert operations == [("CREATE",)]


def test_caps_deny_a_tool_and_lower_max_tokens_and_a_dead_upstream_releases(
        cycles_server: ApiServer, tenant: Tenant, admin_conn: Conn, tmp_path: Path) -> None:
    world = World(cycles_server, tenant, admin_conn, tmp_path, allocated=100_000)
    create_budget(admin_conn, world.toolset_scope, 10, unit="CREDITS")
    admin_conn.execute(
        "SELECT cycles.create_policy(p_tenant_id => %s, p_name => %s, p_scope_pattern => %s, p_caps => %s)",
        (tenant.tenant_id, unique("caps-"), f"{world.scope}/*",
         json.dumps({"tool_denylist": ["send_email"], "max_tokens": 64})))

    async def run() -> list[types.CallToolResult]:
        async with stdio_session(world.gateway_args(stdio_upstream()), world.env) as session:
            return [await call(session, "send_email", {"to": "x@example.com"}),
                    await call(session, "generate", {"max_tokens": 1000}),
                    await call(session, "generate", {}),
                    await call(session, "crash"),
                    await call(session, "echo", {"text": "after the crash"})]

    email, capped, defaulted, crashed, after = anyio.run(run)
    assert email.isError and "caps forbid the tool send_email" in text(email)
    assert not capped.isError and (capped.structuredContent or {})["arguments"] == {"max_tokens": 64}
    assert not defaulted.isError and (defaulted.structuredContent or {})["arguments"] == {"max_tokens": 64}
    assert crashed.isError and "failed upstream" in text(crashed) and "released" in text(crashed)
    assert after.isError and "failed upstream" in text(after)
    assert world.ran() == ["generate", "generate", "crash"]
    assert world.ledger("COMMIT") == [("generate", 100), ("generate", 100)]
    assert [name for name, _ in world.ledger("RELEASE")] == ["send_email", "crash", "echo"]
    assert budget(admin_conn, world.scope)["reserved"] == 0
