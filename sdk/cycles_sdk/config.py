"""Client configuration, from code or from ``CYCLES_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_JOURNAL_DIR = Path("~/.cycles-sdk/commit-journal")


@dataclass
class CyclesConfig:
    """Where the server is, who we are, the default subject, and retry settings.

    Times are in seconds, like the official client's. ``tenant`` ...
    ``toolset`` form the default subject of every reservation.
    """

    base_url: str
    api_key: str
    tenant: str | None = None
    workspace: str | None = None
    app: str | None = None
    workflow: str | None = None
    agent: str | None = None
    toolset: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    retry_enabled: bool = True
    retry_max_attempts: int = 5
    retry_initial_delay: float = 0.5
    retry_multiplier: float = 2.0
    retry_max_delay: float = 30.0
    # Bounded wait at interpreter exit for unresolved settlements; whatever is
    # left stays in the journal and is replayed on the next start.
    retry_flush_timeout: float = 10.0
    journal_enabled: bool = True
    journal_dir: str | None = None

    @classmethod
    def from_env(cls, prefix: str = "CYCLES_") -> CyclesConfig:
        """Read ``<prefix>BASE_URL`` and ``<prefix>API_KEY`` (both required) and the
        optional subject, timeout, retry and journal variables. Boolean
        variables count as true only when they are the string ``true`` (any case)."""

        def text(name: str) -> str | None:
            return os.environ.get(prefix + name)

        def number(name: str, default: float) -> float:
            value = text(name)
            return default if value is None else float(value)

        def flag(name: str) -> bool:
            return (text(name) or "true").lower() == "true"

        base_url = text("BASE_URL") or ""
        api_key = text("API_KEY") or ""
        if not base_url:
            raise ValueError(f"{prefix}BASE_URL environment variable is required")
        if not api_key:
            raise ValueError(f"{prefix}API_KEY environment variable is required")
        return cls(
            base_url=base_url,
            api_key=api_key,
            tenant=text("TENANT"),
            workspace=text("WORKSPACE"),
            app=text("APP"),
            workflow=text("WORKFLOW"),
            agent=text("AGENT"),
            toolset=text("TOOLSET"),
            connect_timeout=number("CONNECT_TIMEOUT", 2.0),
            read_timeout=number("READ_TIMEOUT", 5.0),
            retry_enabled=flag("RETRY_ENABLED"),
            retry_max_attempts=int(text("RETRY_MAX_ATTEMPTS") or "5"),
            retry_initial_delay=number("RETRY_INITIAL_DELAY", 0.5),
            retry_multiplier=number("RETRY_MULTIPLIER", 2.0),
            retry_max_delay=number("RETRY_MAX_DELAY", 30.0),
            retry_flush_timeout=number("RETRY_FLUSH_TIMEOUT", 10.0),
            journal_enabled=flag("JOURNAL_ENABLED"),
            journal_dir=text("JOURNAL_DIR"),
        )

    def journal_path(self) -> Path:
        return Path(self.journal_dir).expanduser() if self.journal_dir else DEFAULT_JOURNAL_DIR.expanduser()

    def retry_delay(self, attempt: int) -> float:
        """Backoff before retry number ``attempt`` (0-based): exponential, capped."""
        delay: float = self.retry_initial_delay * self.retry_multiplier ** attempt
        return min(delay, self.retry_max_delay)

    @property
    def attempts(self) -> int:
        return max(1, self.retry_max_attempts) if self.retry_enabled else 1
