"""Tool results: one concise line (or a few) for the model, the server's JSON
as structured content, and denials and failures as tool errors that say why
and what to do next."""

from __future__ import annotations

from typing import Any

from cycles_sdk import CyclesResponse
from mcp import types


def ok(text: str, structured: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structuredContent=structured, isError=False)


def error(text: str, structured: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structuredContent=structured, isError=True)


def _amount(value: Any, unit: Any) -> str:
    return f"{value} {unit}" if unit else str(value)


def denial_advice(code: str, details: dict[str, Any]) -> str:
    """What a denied agent should do, naming the scope and what it has left."""
    scope = details.get("scope", "the budget")
    unit = details.get("unit", "")
    remaining = details.get("remaining")
    if code == "BUDGET_EXCEEDED":
        left = "" if remaining is None else f" has {_amount(remaining, unit)} left"
        asked = "" if details.get("requested") is None else f", {_amount(details['requested'], unit)} requested"
        if remaining is not None and int(remaining) <= 0:
            return (f"Scope {scope} is exhausted: it{left}{asked}. Do not perform the action: nothing more can "
                    f"be spent there. Finish with what you have, or ask an operator to fund {scope}.")
        cheaper = "" if remaining is None else f" (estimate at most {remaining})"
        return (f"Scope {scope} cannot cover this: it{left}{asked}. Do not perform the action. Choose a cheaper "
                f"action{cheaper}, finish with what you have, or ask an operator to fund {scope}.")
    if code in ("BUDGET_FROZEN", "BUDGET_CLOSED"):
        state = "frozen" if code == "BUDGET_FROZEN" else "closed"
        return f"Budget {scope} is {state}: nothing may be spent from it. Stop and tell the operator."
    if code == "OVERDRAFT_LIMIT_EXCEEDED":
        return (f"Budget {scope} is over its overdraft limit. Nothing more may be reserved until an operator "
                "repays its debt or raises the limit. Stop and tell the operator.")
    if code == "DEBT_OUTSTANDING":
        return (f"Budget {scope} has unpaid debt {_amount(details.get('debt', '?'), unit)}. Nothing more may be "
                "reserved until an operator repays it. Stop and tell the operator.")
    if code == "BUDGET_NOT_FOUND":
        return ("No budget covers this subject in this unit. Check the subject and unit (check_balance lists "
                "the budgets), or ask an operator to create one.")
    if code in ("TENANT_CLOSED", "TENANT_SUSPENDED"):
        return "The tenant is closed or suspended: no spending is possible. Stop and tell the operator."
    return "The action was not authorized. Do not perform it."


_ADVICE = {
    "NOT_FOUND": "Nothing matches: a reserve needs a budget on some level of the subject (check_balance lists "
                 "them); a reservation id must be one this API key created.",
    "RESERVATION_EXPIRED": "The reservation expired and its hold was returned. Reserve again before acting, or "
                           "record spend that already happened with create_event.",
    "RESERVATION_FINALIZED": "The reservation was already committed or released; it cannot change. Reserve "
                             "again for new work.",
    "IDEMPOTENCY_MISMATCH": "This idempotency key was already used with different parameters. Use a new key "
                            "for a new operation, or repeat the original parameters to replay it.",
    "MAX_EXTENSIONS_EXCEEDED": "The reservation cannot be extended again. Commit what was used so far and "
                               "reserve anew for the rest.",
    "UNIT_MISMATCH": "The budgets of this subject are kept in another unit. Use the unit check_balance shows.",
    "UNAUTHORIZED": "The Cycles API key was refused. The operator must check CYCLES_API_KEY.",
    "KEY_REVOKED": "The Cycles API key was revoked. The operator must configure a new CYCLES_API_KEY.",
    "FORBIDDEN": "This API key may not act for that subject: subject.tenant must be the key's own tenant.",
    "INSUFFICIENT_PERMISSIONS": "The Cycles API key lacks the permission this tool needs. Ask the operator.",
    "INVALID_REQUEST": "Fix the arguments and call again.",
    "LIMIT_EXCEEDED": "Too many requests: wait and call again.",
}

DENIAL_CODES = frozenset({
    "BUDGET_EXCEEDED", "BUDGET_FROZEN", "BUDGET_CLOSED", "OVERDRAFT_LIMIT_EXCEEDED", "DEBT_OUTSTANDING",
    "BUDGET_NOT_FOUND", "TENANT_CLOSED", "TENANT_SUSPENDED"})


def failure(response: CyclesResponse, base_url: str, prefix: str = "", **extra: Any) -> types.CallToolResult:
    """A tool error for a call the Cycles server refused or never answered."""
    if response.is_transport_error:
        return error(
            f"{prefix}Cannot reach the Cycles server at {base_url} ({response.transport_error}). Nothing was recorded; "
            "the operator must check CYCLES_BASE_URL and that the server runs.",
            {"error": "UNREACHABLE", "message": response.transport_error or "", **extra})
    code = response.error_code or f"HTTP_{response.status}"
    message = response.error_message or f"HTTP {response.status}"
    details = response.get_body_attribute("details")
    details = details if isinstance(details, dict) else {}
    if code in DENIAL_CODES:
        text = f"{prefix}DENIED ({code}): {message}. {denial_advice(code, details)}"
    else:
        advice = _ADVICE.get(code, "")
        text = f"{prefix}{code}: {message}." + (f" {advice}" if advice else "")
    structured: dict[str, Any] = {"error": code, "message": message, "http_status": response.status, **extra}
    if details:
        structured["details"] = details
    if response.retry_after_ms is not None:
        structured["retry_after_ms"] = response.retry_after_ms
    if response.request_id:
        structured["request_id"] = response.request_id
    return error(text, structured)
