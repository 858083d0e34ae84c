"""Resources (a tenant's balances, a reservation, a guide) and prompts
(integrate budgets into an agent; diagnose an overrun from the ledger)."""

from __future__ import annotations

import json
from typing import Any, Final
from urllib.parse import unquote

from cycles_sdk import AsyncCyclesClient, CyclesResponse
from mcp import types
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.shared.exceptions import McpError
from pydantic import AnyUrl

GUIDE_URI: Final = "cycles://guide"
BALANCES_PREFIX: Final = "cycles://balances/"
RESERVATION_PREFIX: Final = "cycles://reservations/"

GUIDE: Final = """\
# Spending under a Cycles budget

Every costly step (an LLM call, a paid API, a tool that sends or deletes
something) is paid for in three moves:

1. `reserve` the estimated cost first (action kind + name, estimate, unit).
   - ALLOW: go ahead. ALLOW_WITH_CAPS: go ahead within the caps (max_tokens,
     tool allow/deny lists).
   - A denial is a tool error naming the exhausted scope and what remains:
     do NOT do the work. Pick a cheaper action, finish with what you have,
     or ask the operator for budget.
2. Do the work.
3. `commit` the actual cost (the unused part of the hold is returned), or
   `release` if the work was not done. Long work: `extend` before expiry.

Other tools: `decide` (would this be allowed? holds nothing), `check_balance`,
`list_reservations`, `get_reservation`, and `create_event` for spend that
already happened without a reservation.

Amounts are integers. USD_MICROCENTS are millionths of a cent
($1 = 100,000,000). Pass the same `idempotency_key` when retrying a call so
it is not applied twice; without one a fresh key is made for every call.
"""


def _not_found(message: str) -> McpError:
    return McpError(types.ErrorData(code=-32002, message=message))


def _json(response: CyclesResponse) -> list[ReadResourceContents]:
    if not response.is_success:
        code = response.error_code or ("UNREACHABLE" if response.is_transport_error else str(response.status))
        raise _not_found(f"{code}: {response.error_message}")
    return [ReadResourceContents(content=json.dumps(response.body, indent=2), mime_type="application/json")]


class BudgetResources:
    def __init__(self, client: AsyncCyclesClient, default_tenant: str | None) -> None:
        self.client = client
        self.default_tenant = default_tenant

    async def list_resources(self) -> list[types.Resource]:
        resources = [types.Resource(uri=AnyUrl(GUIDE_URI), name="guide",
                                    title="How to spend under a Cycles budget", mimeType="text/markdown")]
        if self.default_tenant:
            resources.append(types.Resource(
                uri=AnyUrl(f"{BALANCES_PREFIX}{self.default_tenant}"), name="balances",
                title=f"Budgets of tenant {self.default_tenant}", mimeType="application/json"))
        return resources

    async def list_templates(self) -> list[types.ResourceTemplate]:
        return [
            types.ResourceTemplate(uriTemplate=BALANCES_PREFIX + "{tenant}", name="balances",
                                   title="Budgets of a tenant (all levels)", mimeType="application/json"),
            types.ResourceTemplate(uriTemplate=RESERVATION_PREFIX + "{reservation_id}", name="reservation",
                                   title="A reservation by id", mimeType="application/json"),
        ]

    async def read(self, uri: Any) -> list[ReadResourceContents]:
        text = str(uri)
        if text == GUIDE_URI:
            return [ReadResourceContents(content=GUIDE, mime_type="text/markdown")]
        if text.startswith(BALANCES_PREFIX) and text != BALANCES_PREFIX:
            tenant = unquote(text.removeprefix(BALANCES_PREFIX))
            return _json(await self.client.get_balances(tenant=tenant, include_children=True, limit=200))
        if text.startswith(RESERVATION_PREFIX) and text != RESERVATION_PREFIX:
            return _json(await self.client.get_reservation(unquote(text.removeprefix(RESERVATION_PREFIX))))
        raise _not_found(f"unknown resource {text}: try {GUIDE_URI}, {BALANCES_PREFIX}<tenant> or "
                         f"{RESERVATION_PREFIX}<id>")


PROMPTS: Final = [
    types.Prompt(
        name="integrate-budgets", title="Integrate budgets into an agent",
        description="Instructions that make an agent reserve before every costly step and settle afterwards.",
        arguments=[
            types.PromptArgument(name="agent", description="What the agent does (free text).", required=False),
            types.PromptArgument(name="unit", description="Budget unit (default USD_MICROCENTS).", required=False),
        ]),
    types.Prompt(
        name="diagnose-overrun", title="Diagnose a budget overrun from the ledger",
        description="Collects a tenant's balances and recent committed reservations and asks for the cause.",
        arguments=[
            types.PromptArgument(name="tenant", description="Tenant id (default: the configured tenant).",
                                 required=False),
            types.PromptArgument(name="workspace", description="Narrow to one workspace.", required=False),
        ]),
]


def _user(text: str) -> types.PromptMessage:
    return types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))


class BudgetPrompts:
    def __init__(self, client: AsyncCyclesClient, default_tenant: str | None) -> None:
        self.client = client
        self.default_tenant = default_tenant

    async def get(self, name: str, arguments: dict[str, str] | None) -> types.GetPromptResult:
        args = arguments or {}
        if name == "integrate-budgets":
            return self._integrate(args)
        if name == "diagnose-overrun":
            return await self._diagnose(args)
        raise McpError(types.ErrorData(code=-32602, message=f"unknown prompt {name!r}"))

    def _integrate(self, args: dict[str, str]) -> types.GetPromptResult:
        agent = args.get("agent") or "this agent"
        unit = args.get("unit") or "USD_MICROCENTS"
        text = (
            f"You are {agent}, and you spend from a Cycles budget in {unit}. Follow these rules for the whole "
            "task:\n"
            "1. Before any step that costs money or counts against a limit, call `reserve` with an action "
            "(kind like `llm.completion` or `tool.<name>`, and a name) and an honest estimate.\n"
            "2. Only if it is allowed, do the step. Respect any caps in the answer.\n"
            "3. Afterwards call `commit` with the actual cost, or `release` if you did not do the step.\n"
            "4. If a reservation is denied, do not do the step: read which scope is exhausted and how much "
            "remains, then choose a cheaper step, finish with what you have, or tell the user you are out of "
            "budget.\n"
            "5. Use `check_balance` to plan, and reuse the same `idempotency_key` only when retrying the same "
            "call.\n\n" + GUIDE)
        return types.GetPromptResult(description="Budget rules for an agent", messages=[_user(text)])

    async def _diagnose(self, args: dict[str, str]) -> types.GetPromptResult:
        tenant = args.get("tenant") or self.default_tenant
        if not tenant:
            raise McpError(types.ErrorData(code=-32602, message="diagnose-overrun needs a tenant argument"))
        filters: dict[str, Any] = {"tenant": tenant}
        if args.get("workspace"):
            filters["workspace"] = args["workspace"]
        balances = await self.client.get_balances(**filters, include_children=True, limit=200)
        committed = await self.client.list_reservations(
            **filters, status="COMMITTED", sort_by="created_at_ms", sort_dir="desc", limit=50)
        active = await self.client.list_reservations(**filters, status="ACTIVE", limit=50)

        def dump(response: CyclesResponse) -> str:
            if response.is_success:
                return json.dumps(response.body, indent=1)
            return f"(unavailable: {response.error_code or response.status} {response.error_message})"

        text = (
            f"Diagnose why the budgets of tenant {tenant} ran over or ran out. Below are the current balances "
            "(per scope: allocated, spent, reserved, remaining, debt, is_over_limit), the 50 most recent "
            "committed reservations (the ledger of what ran: reserved estimate vs committed actual) and the "
            "reservations still holding budget.\n"
            "Find: which scope is exhausted or over its limit; which actions (action.kind/name) and which "
            "agents or workflows spent the most; whether commits exceeded their estimates (underestimation) "
            "or holds are left active (leaked reservations); and recommend concrete fixes (better estimates, "
            "a lower cap for one agent, releasing stale holds, funding).\n\n"
            f"## Balances\n{dump(balances)}\n\n## Recent committed reservations\n{dump(committed)}\n\n"
            f"## Active reservations\n{dump(active)}\n")
        return types.GetPromptResult(description=f"Overrun diagnosis for tenant {tenant}", messages=[_user(text)])
