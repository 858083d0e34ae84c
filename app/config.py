"""Server settings, read once from CYCLES_* environment variables.

Every setting is one declarative entry: a field of ``Settings`` whose default
is ``setting(...)``, naming its variable, meaning, validation (range or
choices) and whether it is a secret. ``SETTINGS`` (the table derived from the
fields) drives ``Settings.from_env``, ``cycles config`` and
docs/configuration.md, so none of them can disagree. A bad value is refused
at start with a one-line ``ConfigError`` naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

_SPEC_KEY: Final = "cycles.setting"
_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")
MASK: Final = "********"
_QUERY_PASSWORD: Final = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)


class ConfigError(ValueError):
    """A setting with a value the server cannot run with (one line, naming the variable)."""


def default_data_dir() -> Path:
    """Per-user data directory. As root, a system location: the cluster runs as
    an unprivileged user, who cannot traverse /root."""
    if os.geteuid() == 0:
        return Path("/var/lib/cycles")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cycles"


@dataclass(frozen=True)
class Spec:
    """How one setting is read, checked, shown and documented."""

    env: str
    meaning: str
    secret: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    # from_env's default when it depends on the machine or on settings read
    # before it (the values so far, by field name); ``default_doc`` says how.
    computed: Callable[[Mapping[str, Any]], Any] | None = None
    default_doc: str | None = None


def setting(
    env: str, default: Any, meaning: str, *, secret: bool = False, choices: tuple[str, ...] = (),
    minimum: int | None = None, maximum: int | None = None,
    computed: Callable[[Mapping[str, Any]], Any] | None = None, default_doc: str | None = None,
) -> Any:
    """A Settings field with its declaration. ``default`` is what a directly
    constructed Settings gets; a callable default is a factory."""
    spec = Spec(env, meaning, secret, choices, minimum, maximum, computed, default_doc)
    # A secret never appears in the repr of Settings (tracebacks, debug logs).
    if callable(default):
        return field(default_factory=default, repr=not secret, metadata={_SPEC_KEY: spec})
    return field(default=default, repr=not secret, metadata={_SPEC_KEY: spec})


def _cores() -> int:
    return os.cpu_count() or 2


@dataclass(frozen=True)
class Settings:
    database_url: str | None = setting(
        "CYCLES_DATABASE_URL", None,
        "PostgreSQL connection URL or conninfo. Unset: the embedded cluster in the data directory.",
        secret=True)
    data_dir: Path = setting(
        "CYCLES_DATA_DIR", default_data_dir,
        "Data directory (embedded cluster, stored admin key).",
        default_doc="~/.local/share/cycles (/var/lib/cycles as root)")
    host: str = setting("CYCLES_HOST", "127.0.0.1", "Address the HTTP server listens on.")
    port: int = setting("CYCLES_PORT", 7878, "Port the HTTP server listens on.", minimum=1, maximum=65535)
    admin_api_key: str | None = setting(
        "CYCLES_ADMIN_API_KEY", None,
        "Admin API key. Unset: generated on first run and stored in the data directory.", secret=True)
    # A process batches only the concurrent reserves it receives itself, so
    # fewer processes make bigger batches (less database CPU per reserve),
    # and a request's server work is a fraction of its database work: on 2
    # cores shared with PostgreSQL one process beat two at 10 and 50
    # connections (docs/performance-profile.md).
    workers: int = setting(
        "CYCLES_WORKERS", 1, "HTTP worker processes.", minimum=1, maximum=256,
        computed=lambda _: max(1, _cores() // 2), default_doc="half the number of CPU cores, at least 1")
    # Every request is one short, CPU-bound call; more connections than a
    # few per core only queue in PostgreSQL (measured: 4 per core beat 16
    # per worker on 2 cores, with a third of the p99).
    pool_max_size: int = setting(
        "CYCLES_POOL_MAX_SIZE", 4, "Most database connections per worker process.", minimum=1, maximum=1000,
        computed=lambda so_far: max(2, 4 * _cores() // max(1, so_far["workers"])),
        default_doc="4 per CPU core shared by the workers, at least 2")
    pool_min_size: int = setting(
        "CYCLES_POOL_MIN_SIZE", 2, "Database connections each worker keeps open.", minimum=0, maximum=1000,
        computed=lambda so_far: min(2, so_far["pool_max_size"]), default_doc="2 (at most the maximum)")
    sweep_interval_ms: int = setting(
        "CYCLES_SWEEP_INTERVAL_MS", 500, "How often expired reservations are swept (ms).",
        minimum=10, maximum=3_600_000)
    # A request waits at most this long for a row lock (then 503, nothing
    # done), and a statement runs at most this long; 0 leaves the database's
    # own setting.
    lock_timeout_ms: int = setting(
        "CYCLES_LOCK_TIMEOUT_MS", 5000,
        "Longest wait for a row lock before a request fails with 503 (ms; 0: the database's setting).",
        minimum=0, maximum=3_600_000)
    statement_timeout_ms: int = setting(
        "CYCLES_STATEMENT_TIMEOUT_MS", 15000,
        "Longest run of one statement before it is cancelled with 503 (ms; 0: the database's setting).",
        minimum=0, maximum=3_600_000)
    pool_timeout_ms: int = setting(
        "CYCLES_POOL_TIMEOUT_MS", 3000,
        "Longest wait for a pooled connection before a request fails with 503 (ms).",
        minimum=1, maximum=3_600_000)
    log_level: str = setting(
        "CYCLES_LOG_LEVEL", "info", "Least severe log level written.",
        choices=("debug", "info", "warning", "error", "critical"))
    log_format: str = setting(
        "CYCLES_LOG_FORMAT", "auto",
        "Log format: json (one object a line), text, or auto (text on a terminal, else json).",
        choices=("auto", "json", "text"))
    access_log: bool = setting("CYCLES_ACCESS_LOG", True, "Log one line per HTTP request.")
    # Webhooks: dev mode allows http:// URLs; allow_private lets URLs resolve
    # to private, loopback and link-local addresses (refused otherwise: SSRF).
    dev_mode: bool = setting("CYCLES_DEV_MODE", False, "Development mode: webhook URLs may use http://.")
    webhook_allow_private: bool = setting(
        "CYCLES_WEBHOOK_ALLOW_PRIVATE", False,
        "Webhook URLs may resolve to private, loopback and link-local addresses.")
    webhooks_disabled: bool = setting(
        "CYCLES_WEBHOOKS_DISABLED", False, "Do not run the webhook delivery worker in the server processes.")
    webhook_poll_interval_ms: int = setting(
        "CYCLES_WEBHOOK_POLL_INTERVAL_MS", 1000, "Longest sleep of the delivery worker between rounds (ms).",
        minimum=10, maximum=3_600_000)
    webhook_timeout_ms: int = setting(
        "CYCLES_WEBHOOK_TIMEOUT_MS", 10000, "Timeout of one webhook delivery request (ms).",
        minimum=1, maximum=600_000)
    event_retention_days: int = setting(
        "CYCLES_EVENT_RETENTION_DAYS", 90, "Days events are kept for webhooks and the events API.",
        minimum=1, maximum=36500)
    delivery_retention_days: int = setting(
        "CYCLES_DELIVERY_RETENTION_DAYS", 14, "Days settled webhook deliveries are kept.",
        minimum=1, maximum=36500)
    # Maintenance (app.maintenance): one elected process per interval prunes
    # in batches; idempotency records are kept 24..168 hours (the protocol
    # asks for at least 24).
    maintenance_interval_ms: int = setting(
        "CYCLES_MAINTENANCE_INTERVAL_MS", 600000,
        "How often each maintenance job runs, once per interval across all instances (ms).",
        minimum=100, maximum=604_800_000)
    maintenance_batch_size: int = setting(
        "CYCLES_MAINTENANCE_BATCH_SIZE", 1000, "Rows deleted per maintenance batch (each its own transaction).",
        minimum=1, maximum=100_000)
    report_summary_retention_days: int = setting(
        "CYCLES_REPORT_SUMMARY_RETENTION_DAYS", 400,
        "Days the spend reports' hourly summaries are kept (older ranges are read from the ledger).",
        minimum=1, maximum=36500)
    idempotency_retention_hours: int = setting(
        "CYCLES_IDEMPOTENCY_RETENTION_HOURS", 168,
        "Hours a request's result can be replayed with its idempotency key (the protocol asks for 24).",
        minimum=24, maximum=168)
    # "pgbouncer": the database URL leads to a transaction pooler, so no
    # prepared statements, no session state, no LISTEN (app.db).
    database_pooler: str = setting(
        "CYCLES_DATABASE_POOLER", "none",
        "pgbouncer: the database URL leads to a transaction pooler (no prepared statements, session state"
        " or LISTEN).", choices=("none", "pgbouncer"))
    reserve_batching: bool = setting(
        "CYCLES_RESERVE_BATCHING", True,
        "Apply concurrent live reserves made with one API key together, one transaction per batch, each with"
        " its own outcome (docs/performance-profile.md); false: one transaction per reserve.")
    settle_batching: bool = setting(
        "CYCLES_SETTLE_BATCHING", True,
        "Apply concurrent commits and releases made with one API key together, one transaction per batch, each"
        " with its own outcome (docs/performance-profile.md); false: one transaction per commit or release.")
    metrics_enabled: bool = setting(
        "CYCLES_METRICS_ENABLED", True, "Serve GET /metrics (Prometheus) and record request metrics.")
    metrics_token: str | None = setting(
        "CYCLES_METRICS_TOKEN", None,
        "Bearer token GET /metrics requires (Authorization: Bearer ...). Unset: /metrics is open.",
        secret=True)
    metrics_tenant_label: bool = setting(
        "CYCLES_METRICS_TENANT_LABEL", False,
        "Add a tenant label to request and decision counters (one series per tenant: mind the cardinality;"
        " needs CYCLES_METRICS_TOKEN).")
    otel_enabled: bool = setting(
        "CYCLES_OTEL_ENABLED", False,
        "Export OpenTelemetry traces over OTLP (needs the otel extra; endpoint from OTEL_EXPORTER_OTLP_ENDPOINT).")
    pg_bindir: str | None = setting(
        "CYCLES_PG_BINDIR", None, "Directory of the PostgreSQL server binaries for the embedded cluster.",
        default_doc="searched in the usual install locations and PATH")
    pg_user: str = setting(
        "CYCLES_PG_USER", "postgres", "Unprivileged user the embedded cluster runs as when started by root.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of the environment; ConfigError on the first bad value."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for entry in SETTINGS:
            raw = env.get(entry.spec.env, "")
            if raw.strip() == "":
                if entry.spec.computed is not None:
                    values[entry.name] = entry.spec.computed(values)
                continue
            values[entry.name] = entry.parse(raw)
        settings = cls(**values)
        if settings.pool_min_size > settings.pool_max_size:
            raise ConfigError(
                f"CYCLES_POOL_MIN_SIZE ({settings.pool_min_size}) must not exceed "
                f"CYCLES_POOL_MAX_SIZE ({settings.pool_max_size})")
        if settings.metrics_enabled and settings.metrics_tenant_label and not settings.metrics_token:
            # /metrics is open without a token: it must not list the tenants.
            raise ConfigError("CYCLES_METRICS_TENANT_LABEL=true needs CYCLES_METRICS_TOKEN (tenant ids on /metrics)")
        return settings

    def effective(self) -> list[tuple[Entry, str]]:
        """Every setting with its value as shown to an operator (secrets masked)."""
        return [(entry, entry.show(getattr(self, entry.name))) for entry in SETTINGS]


@dataclass(frozen=True)
class Entry:
    """One row of the settings table: the field and its declaration."""

    name: str
    kind: str  # "str", "int", "bool" or "path"
    optional: bool
    default: Any
    spec: Spec

    def parse(self, raw: str) -> Any:
        name, value = self.spec.env, raw.strip()
        if self.kind == "bool":
            lowered = value.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ConfigError(f"{name} must be true or false, got {raw!r}")
        if self.kind == "int":
            try:
                number = int(value)
            except ValueError:
                raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
            low, high = self.spec.minimum, self.spec.maximum
            if (low is not None and number < low) or (high is not None and number > high):
                raise ConfigError(f"{name} must be {self.range_text()}, got {number}")
            return number
        if self.spec.choices:
            lowered = value.lower()
            if lowered not in self.spec.choices:
                raise ConfigError(f"{name} must be one of {', '.join(self.spec.choices)}, got {raw!r}")
            return lowered
        if self.kind == "path":
            return Path(value)
        return raw

    def range_text(self) -> str:
        low, high = self.spec.minimum, self.spec.maximum
        if low is not None and high is not None:
            return f"from {low} to {high}"
        return f"at least {low}" if low is not None else f"at most {high}"

    def show(self, value: Any) -> str:
        """The value as printed by ``cycles config``: secrets never in clear."""
        if value is None:
            return "(unset)"
        if isinstance(value, bool):
            return "true" if value else "false"
        if self.spec.secret:
            return mask_url(value) if self.name == "database_url" else MASK
        return str(value)

    def allowed(self) -> str:
        """The accepted values, for the documentation."""
        if self.kind == "bool":
            return "true, false"
        if self.spec.choices:
            return ", ".join(self.spec.choices)
        if self.kind == "int":
            return self.range_text()
        return "path" if self.kind == "path" else "text"

    def default_text(self) -> str:
        if self.spec.default_doc is not None:
            return self.spec.default_doc
        if self.default is None:
            return "unset"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)


def mask_url(url: str) -> str:
    """A database URL or conninfo with its password replaced by the mask."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.password is not None:
            user = parts.username or ""
            host = parts.netloc.rsplit("@", 1)[1]
            parts = parts._replace(netloc=f"{user}:{MASK}@{host}")
        # A password may also be a query parameter (?password=...).
        return urlunsplit(parts._replace(query=_QUERY_PASSWORD.sub(rf"\g<1>{MASK}", parts.query)))
    # key=value conninfo: mask the value of password= (quoted or not).
    words = []
    for word in _conninfo_words(url):
        key, sep, _ = word.partition("=")
        words.append(f"{key}={MASK}" if sep and key.strip().lower() == "password" else word)
    return " ".join(words)


def _conninfo_words(conninfo: str) -> list[str]:
    words: list[str] = []
    current, quoted, escaped = "", False, False
    for char in conninfo:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            current, escaped = current + char, True
        elif char == "'":
            current, quoted = current + char, not quoted
        elif char.isspace() and not quoted:
            if current:
                words.append(current)
            current = ""
        else:
            current += char
    if current:
        words.append(current)
    return words


def _entry(spec_field: dataclasses.Field[Any], annotation: Any) -> Entry:
    args = typing.get_args(annotation)
    optional = isinstance(annotation, types.UnionType) and type(None) in args
    base = next(arg for arg in args if arg is not type(None)) if optional else annotation
    kinds: dict[Any, str] = {str: "str", int: "int", bool: "bool", Path: "path"}
    if spec_field.default is not dataclasses.MISSING:
        default = spec_field.default
    elif spec_field.default_factory is not dataclasses.MISSING:
        default = spec_field.default_factory()
    else:
        default = None
    return Entry(spec_field.name, kinds[base], optional, default, spec_field.metadata[_SPEC_KEY])


def _table() -> tuple[Entry, ...]:
    hints = typing.get_type_hints(Settings)
    return tuple(_entry(item, hints[item.name]) for item in dataclasses.fields(Settings))


# The settings table: one row per Settings field, in declaration order.
SETTINGS: Final[tuple[Entry, ...]] = _table()

# CYCLES_* variables read by other commands than the server, documented where
# those commands are (docs/configuration.md lists them with these pointers).
OTHER_VARIABLES: Final[Mapping[str, str]] = {
    "CYCLES_BASE_URL": "cycles mcp: URL of the Cycles server (docs/mcp.md)",
    "CYCLES_API_KEY": "cycles mcp: API key of the tenant the agent spends from (docs/mcp.md)",
    "CYCLES_MCP_TOKEN": "cycles mcp: bearer token of the HTTP transport (docs/mcp.md)",
    "CYCLES_UNIT": "cycles mcp: default unit (docs/mcp.md)",
    "CYCLES_TENANT": "cycles mcp: default subject tenant (docs/mcp.md)",
    "CYCLES_WORKSPACE": "cycles mcp: default subject workspace (docs/mcp.md)",
    "CYCLES_APP": "cycles mcp: default subject app (docs/mcp.md)",
    "CYCLES_WORKFLOW": "cycles mcp: default subject workflow (docs/mcp.md)",
    "CYCLES_AGENT": "cycles mcp: default subject agent (docs/mcp.md)",
    "CYCLES_TOOLSET": "cycles mcp: default subject toolset (docs/mcp.md)",
}
