"""``cycles mcp serve``: the budget tools, resources and prompts as one MCP server."""

from __future__ import annotations

from typing import Any

from cycles_sdk import AsyncCyclesClient
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.lowlevel.helper_types import ReadResourceContents

from app.mcp.resources import PROMPTS, BudgetPrompts, BudgetResources
from app.mcp.settings import McpSettings
from app.mcp.tool_schemas import TOOLS
from app.mcp.tools import BudgetTools

INSTRUCTIONS = (
    "Budget authority for this agent. Call `reserve` before any step that costs money or counts against a "
    "limit, do the step only if allowed, then `commit` the actual cost (or `release`). A denial says which "
    "budget is exhausted: do not do the step. Read cycles://guide for details.")


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("cycles-authority")
    except metadata.PackageNotFoundError:
        return "0"


def build_budget_server(settings: McpSettings, client: AsyncCyclesClient) -> Server[Any, Any]:
    """The MCP server; ``client`` must stay open while it runs."""
    server: Server[Any, Any] = Server("cycles", version=version(), instructions=INSTRUCTIONS)
    tools = BudgetTools(settings, client)
    resources = BudgetResources(client, settings.subject.get("tenant"))
    prompts = BudgetPrompts(client, settings.subject.get("tenant"))

    async def list_tools() -> list[types.Tool]:
        return list(TOOLS)

    async def call_tool(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        return await tools.call(name, arguments)

    async def list_resources() -> list[types.Resource]:
        return await resources.list_resources()

    async def list_templates() -> list[types.ResourceTemplate]:
        return await resources.list_templates()

    async def read_resource(uri: Any) -> list[ReadResourceContents]:
        return await resources.read(uri)

    async def list_prompts() -> list[types.Prompt]:
        return list(PROMPTS)

    async def get_prompt(name: str, arguments: dict[str, str] | None) -> types.GetPromptResult:
        return await prompts.get(name, arguments)

    # The SDK's registration decorators are untyped; the handlers above are.
    server.list_tools()(list_tools)  # type: ignore[no-untyped-call]
    server.call_tool()(call_tool)
    server.list_resources()(list_resources)  # type: ignore[no-untyped-call]
    server.list_resource_templates()(list_templates)  # type: ignore[no-untyped-call]
    server.read_resource()(read_resource)  # type: ignore[no-untyped-call]
    server.list_prompts()(list_prompts)  # type: ignore[no-untyped-call]
    server.get_prompt()(get_prompt)  # type: ignore[no-untyped-call]
    return server
