"""``cycles mcp serve``: every tool, resource and prompt through a real MCP
client session against the real Cycles server."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from mcp import types
from mcp.shared.exceptions import McpError
from pydantic import AnyUrl

from tests.api.provision import Tenant, budget, new_tenant, reservation_status
from tests.mcp.conftest import CYCLES, funded_workspace, http_process, http_session, mcp_env, stdio_session
from tests.server import ApiServer

Conn = psycopg.Connection[Any]
TOOL_NAMES = {"reserve", "commit", "release", "extend", "decide", "check_balance", "list_reservations",
              "get_reservation", "create_event"}
ACTION = {"kind": "llm.completion", "name": "gpt-4o"}


def call(base: str, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
    async def run() -> types.CallToolResult:
        async with http_session(base) as session:
            return await session.call_tool(name, arguments)

    return anyio.run(run)


def text(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


def ok(result: types.CallToolResult) -> dict[str, Any]:
    assert not result.isError, text(result)
    assert result.structuredContent is not None
    return result.structuredContent


def refused(result: types.CallToolResult) -> dict[str, Any]:
    assert result.isError, text(result)
    return result.structuredContent or {}


def scope(tenant: Tenant, workspace: str) -> str:
    return f"{tenant.scope}/workspace:{workspace}"


def reserve(base: str, workspace: str, estimate: int = 1000, **extra: Any) -> dict[str, Any]:
    return ok(call(base, "reserve", {"action": ACTION, "estimate": estimate, "subject": {"workspace": workspace},
                                     **extra}))


# --- stdio ---------------------------------------------------------------------


def test_stdio_session_lists_every_tool_and_runs_a_reservation(
        cycles_server: ApiServer, tenant: Tenant, admin_conn: Conn) -> None:
    workspace = funded_workspace(admin_conn, tenant, 10_000)
    env = mcp_env(cycles_server, tenant, CYCLES_WORKSPACE=workspace)

    async def run() -> None:
        async with stdio_session([CYCLES, "mcp", "serve"], env) as session:
            tools = (await session.list_tools()).tools
            assert {tool.name for tool in tools} == TOOL_NAMES
            for tool in tools:
                assert tool.description and tool.inputSchema["type"] == "object"
            held = await session.call_tool("reserve", {"action": ACTION, "estimate": 4000})
            assert not held.isError, text(held)
            assert held.structuredContent is not None
            reservation_id = held.structuredContent["reservation_id"]
            assert held.structuredContent["idempotency_key"].startswith("mcp-reserve-")
            committed = await session.call_tool("commit", {"reservation_id": reservation_id, "actual": 2500})
            assert not committed.isError, text(committed)
            assert "charged 2500 USD_MICROCENTS" in text(committed)
            resources = (await session.list_resources()).resources
            assert {str(r.uri) for r in resources} == {"cycles://guide", f"cycles://balances/{tenant.tenant_id}"}
            prompts = (await session.list_prompts()).prompts
            assert {p.name for p in prompts} == {"integrate-budgets", "diagnose-overrun"}

    anyio.run(run)
    row = budget(admin_conn, scope(tenant, workspace))
    assert (row["spent"], row["reserved"], row["remaining"]) == (2500, 0, 7500)


def test_stdio_unreachable_cycles_server_is_a_tool_error(cycles_server: ApiServer, tenant: Tenant) -> None:
    env = mcp_env(cycles_server, tenant, CYCLES_BASE_URL="http://127.0.0.1:9")

    async def run() -> types.CallToolResult:
        async with stdio_session([CYCLES, "mcp", "serve"], env) as session:
            return await session.call_tool("reserve", {"action": ACTION, "estimate": 1})

    result = anyio.run(run)
    assert refused(result)["error"] == "UNREACHABLE"
    assert "Cannot reach the Cycles server at http://127.0.0.1:9" in text(result)


# --- reserve / commit / release / extend ------------------------------------------------------


def test_reserve_holds_the_estimate_and_replays_with_the_same_key(
        serve_http: str, tenant: Tenant, admin_conn: Conn) -> None:
    workspace = funded_workspace(admin_conn, tenant, 10_000)
    first = reserve(serve_http, workspace, 3000, idempotency_key="same-key-" + workspace)
    again = reserve(serve_http, workspace, 3000, idempotency_key="same-key-" + workspace)
    assert first["decision"] == "ALLOW" and first["reservation_id"] == again["reservation_id"]
    assert first["idempotency_key"] == "same-key-" + workspace
    assert budget(admin_conn, scope(tenant, workspace))["reserved"] == 3000


def test_reserve_over_budget_names_the_exhausted_scope_and_changes_nothing(
        serve_http: str, tenant: Tenant, admin_conn: Conn) -> None:
    workspace = funded_workspace(admin_conn, tenant, 500)
    result = call(serve_http, "reserve", {"action": ACTION, "estimate": 800, "subject": {"workspace": workspace}})
    error = refused(result)
    assert error["error"] == "BUDGET_EXCEEDED"
    assert error["details"]["scope"] == scope(tenant, workspace) and error["details"]["remaining"] == 500
    message = text(result)
    assert scope(tenant, workspace) in message and "500 USD_MICROCENTS left" in message
    assert "Do not perform the action" in message
    assert budget(admin_conn, scope(tenant, workspace))["reserved"] == 0


def test_reserve_dry_run_denial_is_an_error_naming_the_scope(
        serve_http: str, tenant: Tenant, admin_conn: Conn) -> None:
    workspace = funded_workspace(admin_conn, tenant, 100)
    allowed = reserve(serve_http, workspace, 50, dry_run=True)
    assert allowed["decision"] == "ALLOW" and "reservation_id" not in allowed
    error = refused(call(serve_http, "reserve", {"action": ACTION, "estimate": 101, "dry_run": True,
                                                 "subject": {"workspace": workspace}}))
    assert error["reason_code"] == "BUDGET_EXCEEDED"
    assert error["details"]["scope"] == scope(tenant, workspace)


@pytest.mark.parametrize(("arguments", "fragment"), [
    ({"action": ACTION, "estimate": -1}, "Input validation error"),
    ({"action": {"kind": "x"}, "estimate": 1}, "Input validation error"),
    ({"action": ACTION, "estimate": 1, "unit": "EUR"}, "Input validation error"),
    ({"action": ACTION, "estimate": 1, "subject": {"tenant": "someone-else"}}, "FORBIDDEN"),
    ({"action": ACTION, "estimate": 1, "unit": "TOKENS"}, "UNIT_MISMATCH"),
])
def test_reserve_bad_arguments_are_tool_errors(serve_http: str, arguments: dict[str, Any], fragment: str) -> None:
    result = call(serve_http, "reserve", arguments)
    assert result.isError and fragment in text(result)


def test_commit_charges_the_actual_in_the_reservations_unit(
        serve_http: str, tenant: Tenant, admin_conn: Conn) -> None:
    workspace = funded_workspace(admin_conn, tenant, 10_000)
    reservation_id = reserve(serve_http, workspace, 4000)["reservation_id"]
    committed = ok(call(serve_http, "commit", {"reservation_id": reservation_id, "actual": 1500,
                                               "metrics": {"tokens_input": 10}}))
    assert committed["status"] == "COMMITTED" and committed["charged"] == {"unit": "USD_MICROCENTS", "amount": 1500}
    row = budget(admin_conn, scope(tenant, workspace))
    assert (row["spent"], row["reserved"]) == (1500, 0)
    again = refused(call(serve_http, "commit", {"reservation_id": reservation_id, "actual": 1500}))
    assert again["error"] == "RESERVATION_FINALIZED"
    missing = call(serve_http, "commit", {"reservation_id": "rsv_missing", "actual": 1})
    assert refused(missing)["error"] == "NOT_FOUND"


def test_release_returns_the_hold(serve_http: str, tenant: Tenant, admin_conn: Conn) -> None:
    workspace = funded_workspace(admin_conn, tenant, 10_000)
    reservation_id = reserve(serve_http, workspace, 4000)["reservation_id"]
    released = ok(call(serve_http, "release", {"reservation_id": reservation_id, "reason": "not needed"}))
    assert released["released"]["amount"] == 4000
    assert reservation_status(admin_conn, reservation_id) == "RELEASED"
    assert budget(admin_conn, scope(tenant, workspace))["remaining"] == 10_000
    error = refused(call(serve_http, "release", {"reservation_id": reservation_id}))
    assert error["error"] == "RESERVATION_FINALIZED" and "already committed or released" in text(
        call(serve_http, "release", {"reservation_id": reservation_id}))


def test_extend_moves_the_expiry(serve_http: str, tenant: Tenant, admin_conn: Conn) -> None:
    workspace = funded_workspace(admin_conn, tenant, 10_000)
    held = reserve(serve_http, workspace, 100)
    extended = ok(call(serve_http, "extend", {"reservation_id": held["reservation_id"], "extend_by_ms": 30_000}))
    assert extended["status"] == "ACTIVE" and extended["expires_at_ms"] == held["expires_at_ms"] + 30_000
    assert refused(call(serve_http, "extend", {"reservation_id": "rsv_missing", "extend_by_ms": 1}))[
        "error"] == "NOT_FOUND"
    assert call(serve_http, "extend", {"reservation_id": held["reservation_id"], "extend_by_ms": 0}).isError


# --- decide / events / reads ---------------------------------------------------------------


def test_decide_allows_or_names_the_exhausted_scope(serve_http: str, tenant: Tenant, admin_conn: Conn) -> None:
    workspace = funded_workspace(admin_conn, tenant, 1000)
    allowed = ok(call(serve_http, "decide", {"action": ACTION, "estimate": 1000,
                                             "subject": {"workspace": workspace}}))
    assert allowed["decision"] == "ALLOW"
    result = call(serve_http, "decide", {"action": ACTION, "estimate": 1001, "subject": {"workspace": workspace}})
    denied = refused(result)
    assert denied["decision"] == "DENY" and denied["reason_code"] == "BUDGET_EXCEEDED"
    assert denied["details"] == {"scope": scope(tenant, workspace), "unit": "USD_MICROCENTS", "remaining": 1000,
                                 "requested": 1001}
    assert budget(admin_conn, scope(tenant, workspace))["reserved"] == 0


def test_create_event_charges_directly_and_refuses_over_budget(
        serve_http: str, tenant: Tenant, admin_conn: Conn) -> None:
    workspace = funded_workspace(admin_conn, tenant, 1000)
    applied = ok(call(serve_http, "create_event", {"action": ACTION, "actual": 600,
                                                   "subject": {"workspace": workspace}}))
    assert applied["status"] == "APPLIED" and applied["event_id"]
    assert applied["idempotency_key"].startswith("mcp-event-")
    refusal = refused(call(serve_http, "create_event", {
        "action": ACTION, "actual": 600, "overage_policy": "REJECT", "subject": {"workspace": workspace}}))
    assert refusal["error"] == "BUDGET_EXCEEDED"
    assert budget(admin_conn, scope(tenant, workspace))["spent"] == 600


def test_check_balance_list_and_get_reservations(serve_http: str, tenant: Tenant, admin_conn: Conn) -> None:
    workspace = funded_workspace(admin_conn, tenant, 10_000)
    first = reserve(serve_http, workspace, 700)["reservation_id"]
    second = reserve(serve_http, workspace, 300)["reservation_id"]
    ok(call(serve_http, "commit", {"reservation_id": second, "actual": 300}))

    balances = call(serve_http, "check_balance", {"subject": {"workspace": workspace}})
    rows = {b["scope"]: b for b in ok(balances)["balances"]}
    assert rows[scope(tenant, workspace)]["remaining"]["amount"] == 9000
    assert f"{scope(tenant, workspace)}: remaining 9000 USD_MICROCENTS" in text(balances)

    listed = ok(call(serve_http, "list_reservations", {"subject": {"workspace": workspace}}))
    assert {r["reservation_id"] for r in listed["reservations"]} == {first, second}
    active = ok(call(serve_http, "list_reservations", {"subject": {"workspace": workspace}, "status": "ACTIVE"}))
    assert [r["reservation_id"] for r in active["reservations"]] == [first]
    assert call(serve_http, "list_reservations", {"status": "LOST"}).isError

    got = ok(call(serve_http, "get_reservation", {"reservation_id": second}))
    assert got["status"] == "COMMITTED" and got["committed"]["amount"] == 300
    assert refused(call(serve_http, "get_reservation", {"reservation_id": "rsv_nope"}))["error"] == "NOT_FOUND"


def test_unknown_tool_is_an_error(serve_http: str) -> None:
    result = call(serve_http, "transfer_money", {})
    assert result.isError and "Unknown tool" in text(result)


# --- resources and prompts ---------------------------------------------------------------


def test_resources_guide_balances_and_reservation(serve_http: str, tenant: Tenant, admin_conn: Conn) -> None:
    workspace = funded_workspace(admin_conn, tenant, 10_000)
    reservation_id = reserve(serve_http, workspace, 100)["reservation_id"]

    async def run() -> tuple[Any, ...]:
        async with http_session(serve_http) as session:
            templates = (await session.list_resource_templates()).resourceTemplates
            guide = await session.read_resource(AnyUrl("cycles://guide"))
            balances = await session.read_resource(AnyUrl(f"cycles://balances/{tenant.tenant_id}"))
            reservation = await session.read_resource(AnyUrl(f"cycles://reservations/{reservation_id}"))
            with pytest.raises(McpError, match="NOT_FOUND"):
                await session.read_resource(AnyUrl("cycles://reservations/rsv_nope"))
            with pytest.raises(McpError, match="unknown resource"):
                await session.read_resource(AnyUrl("cycles://elsewhere"))
            return templates, guide, balances, reservation

    templates, guide, balances, reservation = anyio.run(run)
    assert {t.uriTemplate for t in templates} == {"cycles://balances/{tenant}", "cycles://reservations/{reservation_id}"}
    assert "reserve" in guide.contents[0].text and guide.contents[0].mimeType == "text/markdown"
    scopes = {b["scope"] for b in json.loads(balances.contents[0].text)["balances"]}
    assert {tenant.scope, scope(tenant, workspace)} <= scopes
    assert json.loads(reservation.contents[0].text)["reservation_id"] == reservation_id


def test_prompts_integrate_and_diagnose(serve_http: str, tenant: Tenant, admin_conn: Conn) -> None:
    workspace = funded_workspace(admin_conn, tenant, 1000)
    reservation_id = reserve(serve_http, workspace, 900)["reservation_id"]
    ok(call(serve_http, "commit", {"reservation_id": reservation_id, "actual": 1000}))

    async def run() -> tuple[types.GetPromptResult, types.GetPromptResult]:
        async with http_session(serve_http) as session:
            integrate = await session.get_prompt("integrate-budgets", {"agent": "a research agent"})
            diagnose = await session.get_prompt("diagnose-overrun", {"workspace": workspace})
            with pytest.raises(McpError, match="unknown prompt"):
                await session.get_prompt("nope", {})
            return integrate, diagnose

    integrate, diagnose = anyio.run(run)
    rules = integrate.messages[0].content
    assert isinstance(rules, types.TextContent) and "You are a research agent" in rules.text and "`reserve`" in rules.text
    report = diagnose.messages[0].content
    assert isinstance(report, types.TextContent)
    assert scope(tenant, workspace) in report.text and reservation_id in report.text


# --- HTTP transport ------------------------------------------------------------------------


def test_bearer_token_guards_mcp_but_not_health(cycles_server: ApiServer, admin_conn: Conn) -> None:
    tenant = new_tenant(admin_conn)
    env = mcp_env(cycles_server, tenant, CYCLES_MCP_TOKEN="s3cret-token")
    with http_process([CYCLES, "mcp", "serve", "--transport", "http"], env) as base:
        assert httpx.get(f"{base}/health").json()["status"] == "ok"
        refused_post = httpx.post(f"{base}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                  headers={"Authorization": "Bearer wrong"})
        assert refused_post.status_code == 401
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        headers = {"Authorization": "Bearer s3cret-token", "Accept": "application/json, text/event-stream"}
        # /mcp itself answers (no redirect to /mcp/), and only for a local Host (DNS rebinding).
        assert httpx.post(f"{base}/mcp", json=initialize, headers=headers).status_code == 200
        rebound = httpx.post(f"{base}/mcp", json=initialize, headers={**headers, "Host": "evil.example"})
        assert rebound.status_code == 421

        async def run() -> list[str]:
            async with http_session(base, token="s3cret-token") as session:
                return [tool.name for tool in (await session.list_tools()).tools]

        assert set(anyio.run(run)) == TOOL_NAMES


def test_reserve_and_decide_pass_caps_on(serve_http: str, tenant: Tenant, admin_conn: Conn) -> None:
    workspace = funded_workspace(admin_conn, tenant, 10_000)
    admin_conn.execute(
        "SELECT cycles.create_policy(p_tenant_id => %s, p_name => %s, p_scope_pattern => %s, p_caps => %s)",
        (tenant.tenant_id, f"caps-{workspace}", scope(tenant, workspace), json.dumps({"max_tokens": 256})))
    result = call(serve_http, "reserve", {"action": ACTION, "estimate": 10, "subject": {"workspace": workspace}})
    held = ok(result)
    assert held["decision"] == "ALLOW_WITH_CAPS" and held["caps"]["max_tokens"] == 256
    assert 'Respect these caps: {"max_tokens":256}' in text(result)
    decided = call(serve_http, "decide", {"action": ACTION, "estimate": 10, "subject": {"workspace": workspace}})
    assert ok(decided)["decision"] == "ALLOW_WITH_CAPS" and "max_tokens" in text(decided)
