"""``cycles mcp gateway``: an MCP server in front of another one, which
reserves budget before every upstream tool call.

For each call: reserve the tool's estimate (one reservation per unit of its
cost) against the configured subject with toolset = the upstream's name and
action ``tool.<name>``; forward the call only when every reservation is
allowed (caps applied); then commit the actual cost (the estimate, or what
the tool reports in ``_meta["io.cycles/actual"]``) or, when the upstream
fails, release the holds. A denied call never reaches the upstream.

Retries: a client that sends ``_meta["io.cycles/idempotency_key"]`` with a
call gets the first result back for every retry with that key; the tool runs
and is charged once. The state lives in the Cycles server (the reservations'
idempotency keys), so this holds across gateway restarts, except that a
result is only remembered by the process that produced it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

import anyio
from cycles_sdk import AsyncCyclesClient, CyclesResponse
from mcp import types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import McpError

from app.mcp import results
from app.mcp.costmap import CostMap, ToolCost, toolset_name
from app.mcp.settings import McpSettings
from app.mcp.upstream import Upstream

log = logging.getLogger("cycles.mcp.gateway")

KEY_META: Final = "io.cycles/idempotency_key"
ACTUAL_META: Final = "io.cycles/actual"
GATEWAY_META: Final = "io.cycles/gateway"
MAX_ATTEMPTS: Final = 50
REMEMBERED_RESULTS: Final = 1024
SETTLE_TRIES: Final = 3


@dataclass
class Hold:
    unit: str
    estimate: int
    reservation_id: str
    key: str


def _base_key(client_key: str) -> str:
    # Reservation keys must stay within 256 characters with their suffixes.
    if len(client_key) <= 160:
        return f"mcpgw:{client_key}"
    return "mcpgw:sha256:" + hashlib.sha256(client_key.encode()).hexdigest()


def _reserve_key(base: str, attempt: int, unit: str) -> str:
    return f"{base}:{attempt}:{unit}"


def reported_actual(result: types.CallToolResult, cost: ToolCost) -> dict[str, int]:
    """What the upstream says the call cost (``_meta["io.cycles/actual"]``: a
    number in the tool's first unit or a table unit -> amount), else the estimate."""
    actual = dict(cost.cost)
    reported = (result.meta or {}).get(ACTUAL_META)
    first_unit = next(iter(cost.cost))
    if isinstance(reported, int) and not isinstance(reported, bool) and reported >= 0:
        actual[first_unit] = reported
    elif isinstance(reported, dict):
        for unit, amount in reported.items():
            if unit in actual and isinstance(amount, int) and not isinstance(amount, bool) and amount >= 0:
                actual[unit] = amount
    return actual


def _with_meta(result: types.CallToolResult, info: dict[str, Any]) -> types.CallToolResult:
    meta = {**(result.meta or {}), GATEWAY_META: info}
    return result.model_copy(update={"meta": meta})


def _key_reused(tool: str) -> types.CallToolResult:
    return results.error(
        f"The tool {tool} was not run: this idempotency key was already used for a different call. Use a new "
        "key for a new call; repeat the original call exactly to get its result.",
        {"tool": tool, "error": "IDEMPOTENCY_MISMATCH"})


def _caps_refusal(tool: str, caps: dict[str, Any]) -> str | None:
    allow = caps.get("tool_allowlist")
    deny = caps.get("tool_denylist")
    if isinstance(allow, list):
        return None if tool in allow else f"the budget's caps allow only the tools {allow}"
    if isinstance(deny, list) and tool in deny:
        return f"the budget's caps forbid the tool {tool}"
    return None


class Gateway:
    """The call path of the gateway; ``upstream`` must be connected first."""

    def __init__(self, settings: McpSettings, client: AsyncCyclesClient, costs: CostMap,
                 toolset: str | None = None) -> None:
        self.settings = settings
        self.client = client
        self.costs = costs
        self.toolset_override = toolset
        self.upstream: Upstream | None = None
        self.tools: dict[str, types.Tool] = {}
        # Per idempotency key: its lock and how many calls hold or wait for it.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._done: OrderedDict[str, tuple[str, types.CallToolResult]] = OrderedDict()

    # --- configuration ---------------------------------------------------------

    def _upstream(self) -> Upstream:
        if self.upstream is None:
            raise RuntimeError("the gateway has no upstream connected")
        return self.upstream

    def toolset_for(self, cost: ToolCost) -> str:
        return (cost.toolset or self.toolset_override or self.costs.toolset
                or toolset_name(self._upstream().name))

    def subject_for(self, cost: ToolCost) -> dict[str, Any]:
        return {**self.settings.subject, "toolset": self.toolset_for(cost)}

    async def list_tools(self) -> list[types.Tool]:
        tools = await self._upstream().list_tools()
        self.tools = {tool.name: tool for tool in tools}
        listed = []
        for tool in tools:
            cost = self.costs.for_tool(tool.name)
            price = ", ".join(f"{amount} {unit}" for unit, amount in cost.cost.items())
            note = f"[Budgeted by Cycles: each call reserves {price} before it runs.]"
            description = f"{tool.description}\n\n{note}" if tool.description else note
            listed.append(tool.model_copy(update={"description": description}))
        return listed

    # --- one call ----------------------------------------------------------------

    async def call(self, name: str, arguments: dict[str, Any], client_key: str | None) -> types.CallToolResult:
        if name not in self.tools:
            await self.list_tools()  # the upstream may have added it since
            if name not in self.tools:
                # Nothing to run, so nothing is reserved.
                return results.error(f"Unknown tool {name!r}: the upstream has {', '.join(sorted(self.tools))}.",
                                     {"tool": name, "error": "UNKNOWN_TOOL"})
        if client_key is None:
            return await self._call_once(name, arguments, f"mcpgw:{uuid.uuid4().hex}", 1)
        lock, users = self._locks.get(client_key, (asyncio.Lock(), 0))
        self._locks[client_key] = (lock, users + 1)
        try:
            async with lock:
                return await self._call_keyed(name, arguments, client_key)
        finally:
            lock, users = self._locks[client_key]
            if users == 1:
                del self._locks[client_key]
            else:
                self._locks[client_key] = (lock, users - 1)

    async def _call_keyed(self, name: str, arguments: dict[str, Any], client_key: str) -> types.CallToolResult:
        """One call under its key's lock: calls with the same key run one at a time."""
        call_id = json.dumps([name, arguments], sort_keys=True, default=str)
        remembered = self._done.get(client_key)
        if remembered is not None:
            self._done.move_to_end(client_key)
            if remembered[0] != call_id:
                return _key_reused(name)
            return remembered[1]
        base = _base_key(client_key)
        found = await self._attempt(name, base)
        if isinstance(found, types.CallToolResult):
            return found
        result = await self._call_once(name, arguments, base, found)
        if not result.isError:
            self._done[client_key] = (call_id, result)
            while len(self._done) > REMEMBERED_RESULTS:
                self._done.popitem(last=False)
        return result

    async def _attempt(self, name: str, base: str) -> int | types.CallToolResult:
        """The first attempt number whose reservation does not exist yet: an
        earlier attempt that was released (the upstream failed) or expired may
        be retried; one that committed or is still held is not run again."""
        unit = next(iter(self.costs.for_tool(name).cost))
        for attempt in range(1, MAX_ATTEMPTS + 1):
            key = _reserve_key(base, attempt, unit)
            response = await self.client.list_reservations(idempotency_key=key, limit=1)
            if not response.is_success:
                return results.failure(response, self.settings.base_url, prefix=f"The tool {name} was not run: ")
            rows = response.body.get("reservations", [])
            if not rows:
                return attempt
            status, reservation_id = rows[0].get("status"), rows[0].get("reservation_id")
            if (rows[0].get("action") or {}).get("name") != name:
                return _key_reused(name)
            info = {"tool": name, "reservation_id": reservation_id, "status": status}
            if status == "COMMITTED":
                return results.error(
                    f"This call of {name} already ran and was charged (reservation {reservation_id}); it was "
                    "not run again. Its result is no longer held by this gateway.", info)
            if status == "ACTIVE":
                return results.error(
                    f"A call of {name} with this idempotency key is still running (reservation "
                    f"{reservation_id}); it was not run again. Retry later.", info)
        return results.error(f"The tool {name} was not run: too many failed attempts with this idempotency key.")

    async def _call_once(self, name: str, arguments: dict[str, Any], base: str,
                         attempt: int) -> types.CallToolResult:
        cost = self.costs.for_tool(name)
        holds: list[Hold] = []
        caps: dict[str, Any] = {}
        for unit, estimate in cost.cost.items():
            key = _reserve_key(base, attempt, unit)
            response = await self.client.create_reservation({
                "idempotency_key": key, "subject": self.subject_for(cost),
                "action": {"kind": f"tool.{name}"[:64], "name": name[:256]},
                "estimate": {"unit": unit, "amount": estimate}, "ttl_ms": self.costs.ttl_ms,
                "overage_policy": self.costs.overage_policy,
                "metadata": {"mcp_gateway": self._upstream().name, "tool": name}})
            if not response.is_success or response.body.get("decision") not in ("ALLOW", "ALLOW_WITH_CAPS"):
                await self._release(holds, "another unit of the call was denied")
                return results.failure(response, self.settings.base_url, prefix=f"The tool {name} was not run: ",
                                       tool=name)
            holds.append(Hold(unit, estimate, response.body["reservation_id"], key))
            caps.update(response.body.get("caps") or {})
            refusal = _caps_refusal(name, caps)
            if refusal is not None:
                await self._release(holds, refusal)
                return results.error(f"The tool {name} was not run: {refusal}.", {"tool": name, "caps": caps})
        arguments = self._capped(name, arguments, caps)
        info: dict[str, Any] = {"reservations": [h.reservation_id for h in holds], "toolset": self.toolset_for(cost)}
        try:
            result = await self._upstream().session.call_tool(name, arguments)
        except (McpError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream,
                OSError) as exc:
            await self._release(holds, "upstream call failed")
            message = exc.error.message if isinstance(exc, McpError) else type(exc).__name__
            return results.error(f"The tool {name} failed upstream ({message}); its budget hold was released.",
                                 {"tool": name, "error": "UPSTREAM_FAILED", "message": message, **info})
        if result.isError:
            await self._release(holds, "upstream tool reported an error")
            return _with_meta(result, {**info, "released": True})
        actual = reported_actual(result, cost)
        charged = await self._commit(holds, actual)
        return _with_meta(result, {**info, "charged": charged})

    def _capped(self, name: str, arguments: dict[str, Any], caps: dict[str, Any]) -> dict[str, Any]:
        """ALLOW_WITH_CAPS max_tokens lowers a tool's max_tokens argument."""
        limit = caps.get("max_tokens")
        if not isinstance(limit, int):
            return arguments
        tool = self.tools.get(name)
        declared = tool is not None and "max_tokens" in (tool.inputSchema.get("properties") or {})
        current = arguments.get("max_tokens")
        if (isinstance(current, int) and current > limit) or (current is None and declared):
            return {**arguments, "max_tokens": limit}
        return arguments

    async def _settle(self, what: str, hold: Hold, body: dict[str, Any]) -> CyclesResponse:
        # The same key makes a retry of a lost answer safe.
        response = CyclesResponse(-1, transport_error="not sent")
        for _ in range(SETTLE_TRIES):
            if what == "commit":
                response = await self.client.commit_reservation(hold.reservation_id, body)
            else:
                response = await self.client.release_reservation(hold.reservation_id, body)
            if not (response.is_transport_error or response.is_server_error):
                break
        if not response.is_success:
            log.warning("%s of %s failed: %s %s", what, hold.reservation_id, response.error_code,
                        response.error_message)
        return response

    async def _release(self, holds: list[Hold], reason: str) -> None:
        for hold in holds:
            await self._settle("release", hold, {"idempotency_key": f"{hold.key}:release", "reason": reason[:256]})

    async def _commit(self, holds: list[Hold], actual: dict[str, int]) -> dict[str, int]:
        charged: dict[str, int] = {}
        for hold in holds:
            response = await self._settle("commit", hold, {
                "idempotency_key": f"{hold.key}:commit",
                "actual": {"unit": hold.unit, "amount": actual.get(hold.unit, hold.estimate)}})
            if response.is_success:
                charged[hold.unit] = int(response.body.get("charged", {}).get("amount", 0))
        return charged


def _client_key(server: Server[Any, Any]) -> str | None:
    meta = server.request_context.meta
    extra = (meta.model_extra or {}) if meta is not None else {}
    key = extra.get(KEY_META)
    return key if isinstance(key, str) and key else None


def build_gateway_server(gateway: Gateway, name: str = "cycles-gateway") -> Server[Any, Any]:
    server: Server[Any, Any] = Server(name, instructions=(
        "Every tool call is budgeted: it runs only when the budget allows it. A denial is a tool error that "
        "names the exhausted budget; do not retry it unchanged."))

    async def list_tools() -> list[types.Tool]:
        return await gateway.list_tools()

    async def call_tool(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        return await gateway.call(name, arguments, _client_key(server))

    server.list_tools()(list_tools)  # type: ignore[no-untyped-call]
    # The upstream validates its own arguments; a second check here could only disagree.
    server.call_tool(validate_input=False)(call_tool)
    return server
