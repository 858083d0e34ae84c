"""Where the Cycles server is and on whose behalf the MCP servers act.

Read from the environment an MCP host passes to the process: ``CYCLES_BASE_URL``,
``CYCLES_API_KEY`` and the default subject ``CYCLES_TENANT`` ... ``CYCLES_TOOLSET``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from cycles_sdk import AsyncCyclesClient, CyclesConfig
from cycles_sdk.wire import SUBJECT_FIELDS

DEFAULT_BASE_URL: Final = "http://127.0.0.1:7878"
DEFAULT_UNIT: Final = "USD_MICROCENTS"
UNITS: Final = ("USD_MICROCENTS", "TOKENS", "CREDITS", "RISK_POINTS")


class SettingsError(ValueError):
    """A missing or malformed setting, reported to the operator as one line."""


@dataclass(frozen=True)
class McpSettings:
    base_url: str
    api_key: str
    # The subject every call uses unless the call names its own levels.
    subject: dict[str, str] = field(default_factory=dict)
    unit: str = DEFAULT_UNIT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> McpSettings:
        env = os.environ if environ is None else environ
        api_key = env.get("CYCLES_API_KEY", "")
        if not api_key:
            raise SettingsError("CYCLES_API_KEY is required (a Cycles API key of the tenant the agent spends from)")
        unit = env.get("CYCLES_UNIT") or DEFAULT_UNIT
        if unit not in UNITS:
            raise SettingsError(f"CYCLES_UNIT must be one of {', '.join(UNITS)}, not {unit!r}")
        subject = {name: value for name in SUBJECT_FIELDS if (value := env.get(f"CYCLES_{name.upper()}"))}
        return cls(base_url=(env.get("CYCLES_BASE_URL") or DEFAULT_BASE_URL).rstrip("/"),
                   api_key=api_key, subject=subject, unit=unit)

    def client_config(self) -> CyclesConfig:
        # Retries and the on-disk journal belong to long-lived SDK callers: a
        # tool call reports its outcome to the model, which decides what next.
        config = CyclesConfig(base_url=self.base_url, api_key=self.api_key, retry_enabled=False,
                              journal_enabled=False, read_timeout=30.0)
        for name, value in self.subject.items():
            setattr(config, name, value)
        return config

    def client(self) -> AsyncCyclesClient:
        return AsyncCyclesClient(self.client_config())
