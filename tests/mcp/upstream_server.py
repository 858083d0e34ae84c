"""A small MCP server for the gateway tests: ``python -m tests.mcp.upstream_server stdio``
or ``... http --port PORT``. Every tool call it receives is appended as one JSON
line to the file named by UPSTREAM_LOG, so a test can count what really ran."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio
import uvicorn
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from app.mcp.transport import http_app

TOOLS = [
    types.Tool(name="echo", description="Returns its text.",
               inputSchema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
    types.Tool(name="send_email", description="Pretends to send an email.",
               inputSchema={"type": "object", "properties": {"to": {"type": "string"},
                                                             "subject": {"type": "string"}}}),
    types.Tool(name="metered", description="Reports its own cost in _meta.",
               inputSchema={"type": "object", "properties": {"cost": {"type": "integer"}}}),
    types.Tool(name="fails", description="Always reports an error.",
               inputSchema={"type": "object", "properties": {}}),
    types.Tool(name="crash", description="Kills this server mid-call.",
               inputSchema={"type": "object", "properties": {}}),
    types.Tool(name="generate", description="Takes max_tokens.",
               inputSchema={"type": "object", "properties": {"max_tokens": {"type": "integer"}}}),
]


def _log(name: str, arguments: dict[str, Any]) -> None:
    path = os.environ.get("UPSTREAM_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps({"tool": name, "arguments": arguments}) + "\n")


def build() -> Server[Any, Any]:
    server: Server[Any, Any] = Server("Test Mail Server")

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        return TOOLS

    @server.call_tool(validate_input=False)
    async def call_tool(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        _log(name, arguments)
        text = types.TextContent(type="text", text=f"{name} ran with {json.dumps(arguments, sort_keys=True)}")
        if name == "crash":
            os._exit(3)
        if name == "fails":
            return types.CallToolResult(content=[types.TextContent(type="text", text="boom")], isError=True)
        meta = {"io.cycles/actual": arguments["cost"]} if name == "metered" else None
        return types.CallToolResult(content=[text], structuredContent={"tool": name, "arguments": arguments},
                                    _meta=meta)

    return server


async def _stdio() -> None:
    server = build()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main() -> None:
    if sys.argv[1] == "stdio":
        anyio.run(_stdio)
    else:
        app = http_app(build(), host="127.0.0.1")
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")


if __name__ == "__main__":
    main()
