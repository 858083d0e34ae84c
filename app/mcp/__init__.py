"""``cycles mcp``: the budget authority as a Model Context Protocol server.

Two servers live here, both clients of a running Cycles server over its HTTP
API (the server stays the single authority; nothing is decided locally):

- ``serve`` (``app.mcp.budget_server``): tools, resources and prompts an
  agent uses to reserve, commit and inspect budgets itself (cooperative).
- ``gateway`` (``app.mcp.gateway``): fronts another MCP server and reserves
  before every upstream tool call, so an agent cannot skip the budget.
"""
