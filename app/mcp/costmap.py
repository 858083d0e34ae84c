"""The gateway's cost map: what each upstream tool is estimated to cost.

A small TOML (or JSON, by file suffix) file::

    toolset = "mail"                 # budget level of every tool (default: the upstream's name)
    unit = "USD_MICROCENTS"          # unit of bare numbers below
    default = 1000                   # tools not listed
    ttl_ms = 60000                   # how long a call may run before its hold expires
    overage_policy = "ALLOW_IF_AVAILABLE"

    [tools]
    read_inbox = 100                                       # a number: in `unit`
    send_email = { USD_MICROCENTS = 5000, CREDITS = 1 }    # several units: one reservation each
    delete_all = { cost = 1, toolset = "mail-dangerous" }  # its own budget level

Several units put several budgets on one call, e.g. money and a count of
actions (CREDITS = 1 per call): the call runs only if every one allows it.
Every call costs something by default (1 in ``unit``), so a zero budget stops
it; a cost of 0 lets a tool run as long as its budgets exist and are open.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from app.mcp.settings import DEFAULT_UNIT, UNITS

INT64_MAX: Final = 2**63 - 1
DEFAULT_COST: Final = 1
DEFAULT_TTL_MS: Final = 60_000
POLICIES: Final = ("REJECT", "ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT")
_LEVEL = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")


class CostMapError(ValueError):
    """The cost map file is unreadable or malformed (the message says where)."""


@dataclass(frozen=True)
class ToolCost:
    """Estimate per unit (reserved in this order) and an optional own toolset."""

    cost: dict[str, int]
    toolset: str | None = None


@dataclass(frozen=True)
class CostMap:
    default: ToolCost = field(default_factory=lambda: ToolCost({DEFAULT_UNIT: DEFAULT_COST}))
    tools: dict[str, ToolCost] = field(default_factory=dict)
    toolset: str | None = None
    ttl_ms: int = DEFAULT_TTL_MS
    overage_policy: str = "ALLOW_IF_AVAILABLE"

    def for_tool(self, name: str) -> ToolCost:
        return self.tools.get(name, self.default)


def toolset_name(text: str) -> str:
    """A budget level from any name (an upstream's server name may hold spaces)."""
    cleaned = re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-")[:128]
    return cleaned or "mcp"


def _amount(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        raise CostMapError(f"{where}: a cost must be an integer from 0 to {INT64_MAX}, not {value!r}")
    return value


def _units(value: Any, unit: str, where: str) -> dict[str, int]:
    if isinstance(value, dict):
        if not value:
            raise CostMapError(f"{where}: names no unit")
        costs = {}
        for name, amount in value.items():
            if name not in UNITS:
                raise CostMapError(f"{where}: unknown unit {name!r} (one of {', '.join(UNITS)})")
            costs[name] = _amount(amount, f"{where}.{name}")
        return costs
    return {unit: _amount(value, where)}


def _level(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _LEVEL.match(value):
        raise CostMapError(f"{where}: must be 1-128 characters of letters, digits, '_', '.' or '-'")
    return value


def _tool(value: Any, unit: str, where: str) -> ToolCost:
    if isinstance(value, dict) and ("cost" in value or "toolset" in value):
        unknown = set(value) - {"cost", "toolset"}
        if unknown:
            raise CostMapError(f"{where}: unknown keys {sorted(unknown)}")
        toolset = _level(value["toolset"], f"{where}.toolset") if "toolset" in value else None
        return ToolCost(_units(value.get("cost", DEFAULT_COST), unit, f"{where}.cost"), toolset)
    return ToolCost(_units(value, unit, where))


def parse_cost_map(document: Any, source: str = "cost map") -> CostMap:
    if not isinstance(document, dict):
        raise CostMapError(f"{source}: must be a table of settings")
    known = {"toolset", "unit", "default", "ttl_ms", "overage_policy", "tools"}
    unknown = set(document) - known
    if unknown:
        raise CostMapError(f"{source}: unknown keys {sorted(unknown)} (known: {', '.join(sorted(known))})")
    unit = document.get("unit", DEFAULT_UNIT)
    if unit not in UNITS:
        raise CostMapError(f"{source}: unit must be one of {', '.join(UNITS)}, not {unit!r}")
    ttl_ms = document.get("ttl_ms", DEFAULT_TTL_MS)
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or not 1_000 <= ttl_ms <= 86_400_000:
        raise CostMapError(f"{source}: ttl_ms must be an integer from 1000 to 86400000")
    policy = document.get("overage_policy", "ALLOW_IF_AVAILABLE")
    if policy not in POLICIES:
        raise CostMapError(f"{source}: overage_policy must be one of {', '.join(POLICIES)}")
    tools = document.get("tools", {})
    if not isinstance(tools, dict):
        raise CostMapError(f"{source}: tools must be a table of tool name = cost")
    return CostMap(
        default=_tool(document.get("default", DEFAULT_COST), unit, f"{source}: default"),
        tools={name: _tool(value, unit, f"{source}: tools.{name}") for name, value in tools.items()},
        toolset=_level(document["toolset"], f"{source}: toolset") if "toolset" in document else None,
        ttl_ms=ttl_ms, overage_policy=policy)


def load_cost_map(path: Path | None) -> CostMap:
    if path is None:
        return CostMap()
    try:
        text = path.read_text()
    except OSError as exc:
        raise CostMapError(f"cannot read the cost map {path}: {exc.strerror}") from exc
    try:
        document = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise CostMapError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from exc
    return parse_cost_map(document, str(path))
