"""JSON schemas and descriptions of the budget tools, as the model sees them.

Amounts are integers in the unit named beside them (USD_MICROCENTS are
millionths of a cent: $1 = 100,000,000). Every level of ``subject`` is
optional: levels the call leaves out come from the server's configured
default subject (CYCLES_TENANT ... CYCLES_TOOLSET).
"""

from __future__ import annotations

from typing import Any, Final

from mcp import types

from app.mcp.settings import UNITS

_NAME: Final = {"type": "string", "pattern": "^[a-zA-Z0-9_.-]+$", "maxLength": 128}
SUBJECT: Final = {
    "type": "object",
    "description": "Who spends: budget levels, each optional (defaults come from the server's configuration).",
    "properties": {
        "tenant": _NAME, "workspace": _NAME, "app": _NAME, "workflow": _NAME, "agent": _NAME, "toolset": _NAME,
        "dimensions": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 256},
                       "description": "Free-form labels kept with the reservation (not budget levels)."},
    },
    "additionalProperties": False,
}
ACTION: Final = {
    "type": "object",
    "description": "What is about to happen, e.g. {\"kind\": \"llm.completion\", \"name\": \"gpt-4o\"} or "
                   "{\"kind\": \"tool.search\", \"name\": \"web.search\"}.",
    "properties": {
        "kind": {"type": "string", "minLength": 1, "maxLength": 64},
        "name": {"type": "string", "minLength": 1, "maxLength": 256},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": 10},
    },
    "required": ["kind", "name"],
    "additionalProperties": False,
}
AMOUNT: Final = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
UNIT: Final = {"type": "string", "enum": list(UNITS),
               "description": "Unit of the amount (default: the server's CYCLES_UNIT, normally USD_MICROCENTS)."}
IDEMPOTENCY_KEY: Final = {
    "type": "string", "minLength": 1, "maxLength": 256,
    "description": "Makes a retry safe: the same key with the same arguments replays the first result instead "
                   "of acting twice. Generated when absent (and returned)."}
RESERVATION_ID: Final = {"type": "string", "minLength": 1, "maxLength": 128,
                         "description": "The reservation_id that reserve returned."}
OVERAGE: Final = {"type": "string", "enum": ["REJECT", "ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT"]}
METADATA: Final = {"type": "object", "description": "Free-form JSON kept with the record."}
METRICS: Final = {
    "type": "object",
    "properties": {
        "tokens_input": AMOUNT, "tokens_output": AMOUNT, "latency_ms": AMOUNT,
        "model_version": {"type": "string", "maxLength": 128}, "custom": {"type": "object"},
    },
    "additionalProperties": False,
}


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


_MUTATES = types.ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True,
                                 openWorldHint=False)
_READS = types.ToolAnnotations(readOnlyHint=True, openWorldHint=False)

TOOLS: Final = [
    types.Tool(
        name="reserve",
        title="Reserve budget before acting",
        description=(
            "Hold an estimated cost against the budget BEFORE doing something that costs money or counts "
            "against a limit (an LLM call, a paid API, a tool run). If the result is ALLOW, do the work, then "
            "call commit with the actual cost (or release if you did not do it). A denial is an error that "
            "names the exhausted scope and what remains: do not do the work then. ALLOW_WITH_CAPS comes with "
            "limits (max_tokens, tool allow/deny lists) you must respect. dry_run=true only checks."),
        inputSchema=_schema({
            "action": ACTION, "estimate": AMOUNT, "unit": UNIT, "subject": SUBJECT,
            "ttl_ms": {"type": "integer", "minimum": 1000, "maximum": 86_400_000,
                       "description": "How long the hold lives before it expires (default 60000)."},
            "grace_period_ms": {"type": "integer", "minimum": 0, "maximum": 60_000},
            "overage_policy": OVERAGE, "dry_run": {"type": "boolean"}, "metadata": METADATA,
            "idempotency_key": IDEMPOTENCY_KEY,
        }, ["action", "estimate"]),
        annotations=_MUTATES,
    ),
    types.Tool(
        name="commit",
        title="Commit the actual cost",
        description=(
            "Settle a reservation with what the work really cost. Any unused part of the hold goes back to "
            "the budget. Call once per reservation, after the work is done. The unit defaults to the "
            "reservation's own."),
        inputSchema=_schema({
            "reservation_id": RESERVATION_ID, "actual": AMOUNT, "unit": UNIT, "metrics": METRICS,
            "metadata": METADATA, "idempotency_key": IDEMPOTENCY_KEY,
        }, ["reservation_id", "actual"]),
        annotations=_MUTATES,
    ),
    types.Tool(
        name="release",
        title="Release a reservation",
        description="Give a whole reservation back to the budget: the work was not done (or failed before "
                    "costing anything).",
        inputSchema=_schema({
            "reservation_id": RESERVATION_ID, "reason": {"type": "string", "maxLength": 256},
            "idempotency_key": IDEMPOTENCY_KEY,
        }, ["reservation_id"]),
        annotations=_MUTATES,
    ),
    types.Tool(
        name="extend",
        title="Extend a reservation",
        description="Keep a reservation alive longer while long work is still running (before it expires).",
        inputSchema=_schema({
            "reservation_id": RESERVATION_ID,
            "extend_by_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000},
            "metadata": METADATA, "idempotency_key": IDEMPOTENCY_KEY,
        }, ["reservation_id", "extend_by_ms"]),
        annotations=_MUTATES,
    ),
    types.Tool(
        name="decide",
        title="Ask whether an action would be allowed",
        description=(
            "Check, without holding anything, whether an action of this estimated cost would be allowed now. "
            "Returns ALLOW, ALLOW_WITH_CAPS or DENY (a denial is an error naming the exhausted scope). Use "
            "reserve to actually hold the budget."),
        inputSchema=_schema({
            "action": ACTION, "estimate": AMOUNT, "unit": UNIT, "subject": SUBJECT, "metadata": METADATA,
            "idempotency_key": IDEMPOTENCY_KEY,
        }, ["action", "estimate"]),
        annotations=types.ToolAnnotations(readOnlyHint=True, openWorldHint=False),
    ),
    types.Tool(
        name="check_balance",
        title="Check budget balances",
        description="The budgets of a subject and its descendants: allocated, spent, reserved, remaining and "
                    "debt per scope and unit.",
        inputSchema=_schema({
            "subject": SUBJECT, "unit": UNIT,
            "include_children": {"type": "boolean", "description": "Also list budgets below the subject "
                                                                   "(default true)."},
            "limit": {"type": "integer", "minimum": 1, "maximum": 200},
        }, []),
        annotations=_READS,
    ),
    types.Tool(
        name="list_reservations",
        title="List reservations",
        description="Reservations of this tenant, newest first, filtered by status and subject levels.",
        inputSchema=_schema({
            "status": {"type": "string", "enum": ["ACTIVE", "COMMITTED", "RELEASED", "EXPIRED"]},
            "subject": SUBJECT,
            "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 256,
                                "description": "Only the reservation made with this key."},
            "sort_by": {"type": "string", "enum": ["created_at_ms", "expires_at_ms", "reserved", "status",
                                                   "scope_path", "reservation_id"]},
            "sort_dir": {"type": "string", "enum": ["asc", "desc"]},
            "limit": {"type": "integer", "minimum": 1, "maximum": 200},
            "cursor": {"type": "string", "maxLength": 2048, "description": "next_cursor of the previous page."},
        }, []),
        annotations=_READS,
    ),
    types.Tool(
        name="get_reservation",
        title="Get a reservation",
        description="One reservation: status, amounts reserved and committed, expiry.",
        inputSchema=_schema({"reservation_id": RESERVATION_ID}, ["reservation_id"]),
        annotations=_READS,
    ),
    types.Tool(
        name="create_event",
        title="Record spend that already happened",
        description=(
            "Charge a cost that was not reserved beforehand (it already happened, e.g. a cheap call made "
            "without a reservation). Prefer reserve/commit for anything that should be stopped when the "
            "budget runs out."),
        inputSchema=_schema({
            "action": ACTION, "actual": AMOUNT, "unit": UNIT, "subject": SUBJECT, "overage_policy": OVERAGE,
            "metrics": METRICS, "metadata": METADATA, "idempotency_key": IDEMPOTENCY_KEY,
        }, ["action", "actual"]),
        annotations=_MUTATES,
    ),
]
