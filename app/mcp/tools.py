"""The budget tools: each is one call of the Cycles HTTP API through the SDK.

The Cycles server decides everything; these handlers only fill defaults
(subject, unit, idempotency key), turn the answer into a result the model can
act on, and never raise: a bad argument or a refusal is a tool error.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from cycles_sdk import AsyncCyclesClient, CyclesResponse
from cycles_sdk.wire import SUBJECT_FIELDS
from mcp import types

from app.mcp import results
from app.mcp.settings import McpSettings

DEFAULT_TTL_MS = 60_000

Handler = Callable[[dict[str, Any]], Awaitable[types.CallToolResult]]


def new_idempotency_key(tool: str) -> str:
    return f"mcp-{tool}-{uuid.uuid4().hex}"


def _seconds(ms: Any) -> str:
    return f"{int(ms) / 1000:g}s" if isinstance(ms, int) else "?"


def _balances_line(body: Any) -> str:
    """``scope: remaining unit`` for each balance a response carries."""
    balances = body.get("balances") if isinstance(body, dict) else None
    if not isinstance(balances, list) or not balances:
        return ""
    parts = [f"{b.get('scope')}: {b.get('remaining', {}).get('amount')} {b.get('remaining', {}).get('unit')} left"
             for b in balances if isinstance(b, dict)]
    return " Remaining: " + "; ".join(parts) + "."


class BudgetTools:
    """Handlers of the budget tools, sharing one SDK client."""

    def __init__(self, settings: McpSettings, client: AsyncCyclesClient) -> None:
        self.settings = settings
        self.client = client
        self.handlers: dict[str, Handler] = {
            "reserve": self.reserve, "commit": self.commit, "release": self.release, "extend": self.extend,
            "decide": self.decide, "check_balance": self.check_balance,
            "list_reservations": self.list_reservations, "get_reservation": self.get_reservation,
            "create_event": self.create_event,
        }

    async def call(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        handler = self.handlers.get(name)
        if handler is None:
            return results.error(f"Unknown tool {name!r}. Tools: {', '.join(self.handlers)}.")
        try:
            return await handler(arguments)
        except (msgspec.ValidationError, ValueError, TypeError) as exc:
            # The SDK checks a request against the wire format before sending it.
            return results.error(f"INVALID_REQUEST: {exc}. Fix the arguments and call again.",
                                 {"error": "INVALID_REQUEST", "message": str(exc)})

    # --- helpers -------------------------------------------------------------

    def subject(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The configured default subject, overridden level by level by the call's."""
        given = arguments.get("subject") or {}
        merged: dict[str, Any] = {**self.settings.subject, **given}
        if not any(merged.get(name) for name in SUBJECT_FIELDS):
            raise ValueError("no subject: pass subject.tenant (or another level), or configure CYCLES_TENANT")
        return merged

    def _fail(self, response: CyclesResponse, **extra: Any) -> types.CallToolResult:
        return results.failure(response, self.settings.base_url, **extra)

    @staticmethod
    def _key(arguments: dict[str, Any], tool: str) -> str:
        key = arguments.get("idempotency_key")
        return key if isinstance(key, str) and key else new_idempotency_key(tool)

    def _optional(self, arguments: dict[str, Any], *names: str) -> dict[str, Any]:
        return {name: arguments[name] for name in names if arguments.get(name) is not None}

    async def _exhausted_scope(self, subject: dict[str, Any], unit: str, reason: str) -> dict[str, Any]:
        """For a DENY decision (which names no scope): the first budget of the
        subject's path that cannot pay, read from the balances."""
        filters = {name: subject[name] for name in SUBJECT_FIELDS if subject.get(name)}
        response = await self.client.get_balances(**filters, unit=unit)
        if not response.is_success or not isinstance(response.body, dict):
            return {}
        path = "/".join(f"{name}:{subject[name]}" for name in SUBJECT_FIELDS if subject.get(name)).lower()
        candidates = [b for b in response.body.get("balances", []) if isinstance(b, dict)
                      and path.startswith(str(b.get("scope", "")).lower())]
        candidates.sort(key=lambda b: len(str(b.get("scope", ""))))
        for balance in candidates:
            remaining = balance.get("remaining", {}).get("amount", 0)
            if reason != "BUDGET_EXCEEDED" or int(remaining) <= 0 or balance is candidates[-1]:
                return {"scope": balance.get("scope"), "unit": unit, "remaining": remaining}
        return {}

    async def _denied(self, body: dict[str, Any], subject: dict[str, Any], unit: str, estimate: int,
                      key: str) -> types.CallToolResult:
        reason = str(body.get("reason_code") or "DENIED")
        details = await self._exhausted_scope(subject, unit, reason)
        details.setdefault("requested", estimate)
        structured = {**body, "idempotency_key": key, "details": details}
        return results.error(f"DENIED ({reason}): {results.denial_advice(reason, details)}", structured)

    # --- mutating tools --------------------------------------------------------

    async def reserve(self, arguments: dict[str, Any]) -> types.CallToolResult:
        key = self._key(arguments, "reserve")
        unit = arguments.get("unit") or self.settings.unit
        subject = self.subject(arguments)
        request = {
            "idempotency_key": key, "subject": subject, "action": arguments["action"],
            "estimate": {"unit": unit, "amount": arguments["estimate"]},
            "ttl_ms": arguments.get("ttl_ms", DEFAULT_TTL_MS),
            **self._optional(arguments, "grace_period_ms", "overage_policy", "dry_run", "metadata"),
        }
        response = await self.client.create_reservation(request)
        if not response.is_success:
            return self._fail(response, idempotency_key=key)
        body: dict[str, Any] = response.body
        decision = body.get("decision")
        if decision == "DENY":
            return await self._denied(body, subject, unit, int(arguments["estimate"]), key)
        structured = {**body, "idempotency_key": key}
        caps = body.get("caps")
        caps_text = f" Respect these caps: {msgspec.json.encode(caps).decode()}." if caps else ""
        if arguments.get("dry_run"):
            return results.ok(f"{decision} (dry run, nothing held) for {arguments['estimate']} {unit} on "
                              f"{body.get('scope_path', '')}.{caps_text}", structured)
        text = (f"{decision}: reserved {arguments['estimate']} {unit} as {body.get('reservation_id')} on "
                f"{body.get('scope_path')} (expires in {_seconds(body.get('remaining_ttl_ms'))}).{caps_text} "
                "Do the work, then commit the actual cost (or release if you do not do it)."
                + _balances_line(body))
        return results.ok(text, structured)

    async def _reservation_unit(self, reservation_id: str) -> str | CyclesResponse:
        response = await self.client.get_reservation(reservation_id)
        if not response.is_success or not isinstance(response.body, dict):
            return response
        reserved = response.body.get("reserved")
        return str(reserved.get("unit")) if isinstance(reserved, dict) else self.settings.unit

    async def commit(self, arguments: dict[str, Any]) -> types.CallToolResult:
        key = self._key(arguments, "commit")
        reservation_id = arguments["reservation_id"]
        unit = arguments.get("unit")
        if not unit:
            found = await self._reservation_unit(reservation_id)
            if isinstance(found, CyclesResponse):
                return self._fail(found, idempotency_key=key, reservation_id=reservation_id)
            unit = found
        request = {"idempotency_key": key, "actual": {"unit": unit, "amount": arguments["actual"]},
                   **self._optional(arguments, "metrics", "metadata")}
        response = await self.client.commit_reservation(reservation_id, request)
        if not response.is_success:
            return self._fail(response, idempotency_key=key, reservation_id=reservation_id)
        body: dict[str, Any] = response.body
        charged = body.get("charged", {})
        released = body.get("released", {}).get("amount", 0)
        text = (f"COMMITTED {reservation_id}: charged {charged.get('amount')} {charged.get('unit')}"
                f", released {released} back to the budget." + _balances_line(body))
        return results.ok(text, {**body, "reservation_id": reservation_id, "idempotency_key": key})

    async def release(self, arguments: dict[str, Any]) -> types.CallToolResult:
        key = self._key(arguments, "release")
        reservation_id = arguments["reservation_id"]
        request = {"idempotency_key": key, **self._optional(arguments, "reason")}
        response = await self.client.release_reservation(reservation_id, request)
        if not response.is_success:
            return self._fail(response, idempotency_key=key, reservation_id=reservation_id)
        body: dict[str, Any] = response.body
        released = body.get("released", {})
        text = (f"RELEASED {reservation_id}: {released.get('amount')} {released.get('unit')} back to the budget."
                + _balances_line(body))
        return results.ok(text, {**body, "reservation_id": reservation_id, "idempotency_key": key})

    async def extend(self, arguments: dict[str, Any]) -> types.CallToolResult:
        key = self._key(arguments, "extend")
        reservation_id = arguments["reservation_id"]
        request = {"idempotency_key": key, "extend_by_ms": arguments["extend_by_ms"],
                   **self._optional(arguments, "metadata")}
        response = await self.client.extend_reservation(reservation_id, request)
        if not response.is_success:
            return self._fail(response, idempotency_key=key, reservation_id=reservation_id)
        body: dict[str, Any] = response.body
        text = (f"EXTENDED {reservation_id}: now expires at {body.get('expires_at_ms')} (epoch ms), in "
                f"{_seconds(body.get('remaining_ttl_ms'))}.")
        return results.ok(text, {**body, "reservation_id": reservation_id, "idempotency_key": key})

    async def create_event(self, arguments: dict[str, Any]) -> types.CallToolResult:
        key = self._key(arguments, "event")
        unit = arguments.get("unit") or self.settings.unit
        request = {
            "idempotency_key": key, "subject": self.subject(arguments), "action": arguments["action"],
            "actual": {"unit": unit, "amount": arguments["actual"]},
            **self._optional(arguments, "overage_policy", "metrics", "metadata"),
        }
        response = await self.client.create_event(request)
        if not response.is_success:
            return self._fail(response, idempotency_key=key)
        body: dict[str, Any] = response.body
        charged = body.get("charged", {"amount": arguments["actual"], "unit": unit})
        text = (f"APPLIED event {body.get('event_id')}: charged {charged.get('amount')} {charged.get('unit')}."
                + _balances_line(body))
        return results.ok(text, {**body, "idempotency_key": key})

    # --- read-only tools -------------------------------------------------------

    async def decide(self, arguments: dict[str, Any]) -> types.CallToolResult:
        key = self._key(arguments, "decide")
        unit = arguments.get("unit") or self.settings.unit
        subject = self.subject(arguments)
        request = {"idempotency_key": key, "subject": subject, "action": arguments["action"],
                   "estimate": {"unit": unit, "amount": arguments["estimate"]},
                   **self._optional(arguments, "metadata")}
        response = await self.client.decide(request)
        if not response.is_success:
            return self._fail(response, idempotency_key=key)
        body: dict[str, Any] = response.body
        if body.get("decision") == "DENY":
            return await self._denied(body, subject, unit, int(arguments["estimate"]), key)
        caps = body.get("caps")
        caps_text = f" Caps: {msgspec.json.encode(caps).decode()}." if caps else ""
        return results.ok(f"{body.get('decision')}: {arguments['estimate']} {unit} would be allowed now "
                          f"(nothing is held; reserve before acting).{caps_text}", {**body, "idempotency_key": key})

    async def check_balance(self, arguments: dict[str, Any]) -> types.CallToolResult:
        subject = self.subject(arguments)
        filters: dict[str, Any] = {name: subject[name] for name in SUBJECT_FIELDS if subject.get(name)}
        filters["include_children"] = arguments.get("include_children", True)
        filters.update(self._optional(arguments, "unit", "limit"))
        response = await self.client.get_balances(**filters)
        if not response.is_success:
            return self._fail(response)
        body: dict[str, Any] = response.body
        lines = []
        for balance in body.get("balances", []):
            remaining = balance.get("remaining", {})
            parts = [f"{balance.get('scope')}: remaining {remaining.get('amount')} {remaining.get('unit')}"]
            for name in ("allocated", "spent", "reserved", "debt"):
                if isinstance(balance.get(name), dict):
                    parts.append(f"{name} {balance[name].get('amount')}")
            if balance.get("is_over_limit"):
                parts.append("OVER LIMIT")
            lines.append(", ".join(parts))
        text = "\n".join(lines) if lines else "No budgets match this subject."
        if body.get("has_more"):
            text += "\n(more: call again with a larger limit)"
        return results.ok(text, body)

    async def list_reservations(self, arguments: dict[str, Any]) -> types.CallToolResult:
        given = arguments.get("subject") or {}
        filters: dict[str, Any] = {name: given[name] for name in SUBJECT_FIELDS if given.get(name)}
        filters.update(self._optional(arguments, "status", "idempotency_key", "sort_by", "sort_dir", "limit",
                                      "cursor"))
        response = await self.client.list_reservations(**filters)
        if not response.is_success:
            return self._fail(response)
        body: dict[str, Any] = response.body
        rows = body.get("reservations", [])
        lines = [f"{r.get('reservation_id')} {r.get('status')} {r.get('reserved', {}).get('amount')} "
                 f"{r.get('reserved', {}).get('unit')} {r.get('scope_path', '')}" for r in rows]
        text = f"{len(rows)} reservation(s)" + (":\n" + "\n".join(lines) if lines else ".")
        if body.get("next_cursor"):
            text += f"\nMore: call again with cursor={body['next_cursor']}"
        return results.ok(text, body)

    async def get_reservation(self, arguments: dict[str, Any]) -> types.CallToolResult:
        reservation_id = arguments["reservation_id"]
        response = await self.client.get_reservation(reservation_id)
        if not response.is_success:
            return self._fail(response, reservation_id=reservation_id)
        body: dict[str, Any] = response.body
        reserved = body.get("reserved", {})
        committed = body.get("committed")
        text = (f"{reservation_id}: {body.get('status')}, reserved {reserved.get('amount')} "
                f"{reserved.get('unit')} on {body.get('scope_path')}")
        if isinstance(committed, dict):
            text += f", committed {committed.get('amount')}"
        return results.ok(text + ".", body)
