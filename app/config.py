"""Server settings, read once from CYCLES_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def default_data_dir() -> Path:
    """Per-user data directory. As root, a system location: the cluster runs as
    an unprivileged user, who cannot traverse /root."""
    if os.geteuid() == 0:
        return Path("/var/lib/cycles")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cycles"


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from exc


def _bool_env(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SystemExit(f"{name} must be true or false, got {raw!r}")


def _ranged_int_env(name: str, default: int, low: int, high: int) -> int:
    value = _int_env(name, default)
    if not low <= value <= high:
        raise SystemExit(f"{name} must be between {low} and {high}, got {value}")
    return value


def _choice_env(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name, "").strip().lower() or default
    if raw not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 7878
    admin_api_key: str | None = None
    workers: int = 2
    pool_min_size: int = 2
    pool_max_size: int = 4
    sweep_interval_ms: int = 500
    # A request waits at most this long for a row lock (then 503, nothing
    # done), and a statement runs at most this long; 0 leaves the database's
    # own setting.
    lock_timeout_ms: int = 5000
    statement_timeout_ms: int = 15000
    # How long a request waits for a pooled connection (then 503).
    pool_timeout_ms: int = 3000
    log_level: str = "info"
    # Webhooks: dev mode allows http:// URLs; allow_private lets URLs resolve
    # to private, loopback and link-local addresses (refused otherwise: SSRF).
    dev_mode: bool = False
    webhook_allow_private: bool = False
    webhooks_disabled: bool = False
    webhook_poll_interval_ms: int = 1000
    webhook_timeout_ms: int = 10000
    event_retention_days: int = 90
    delivery_retention_days: int = 14
    # Maintenance (app.maintenance): one elected process per interval prunes
    # in batches; idempotency records are kept 24..168 hours (the protocol
    # asks for at least 24).
    maintenance_interval_ms: int = 600000
    maintenance_batch_size: int = 1000
    idempotency_retention_hours: int = 168
    # "pgbouncer": the database URL leads to a transaction pooler, so no
    # prepared statements, no session state, no LISTEN (app.db).
    database_pooler: str = "none"
    # Concurrent reserves of one API key applied in one transaction
    # (app.reserve_batcher).
    reserve_batching: bool = True

    @classmethod
    def from_env(cls) -> Settings:
        cores = os.cpu_count() or 2
        workers = _int_env("CYCLES_WORKERS", max(2, cores))
        # Every request is one short, CPU-bound call; more connections than a
        # few per core only queue in PostgreSQL (measured: 4 per core beat 16
        # per worker on 2 cores, with a third of the p99).
        pool_max_size = _int_env("CYCLES_POOL_MAX_SIZE", max(2, 4 * cores // max(1, workers)))
        return cls(
            database_url=os.environ.get("CYCLES_DATABASE_URL") or None,
            data_dir=Path(os.environ["CYCLES_DATA_DIR"]) if os.environ.get("CYCLES_DATA_DIR") else default_data_dir(),
            host=os.environ.get("CYCLES_HOST", "127.0.0.1"),
            port=_int_env("CYCLES_PORT", 7878),
            admin_api_key=os.environ.get("CYCLES_ADMIN_API_KEY") or None,
            workers=workers,
            pool_min_size=_int_env("CYCLES_POOL_MIN_SIZE", min(2, pool_max_size)),
            pool_max_size=pool_max_size,
            sweep_interval_ms=_int_env("CYCLES_SWEEP_INTERVAL_MS", 500),
            lock_timeout_ms=_int_env("CYCLES_LOCK_TIMEOUT_MS", 5000),
            statement_timeout_ms=_int_env("CYCLES_STATEMENT_TIMEOUT_MS", 15000),
            pool_timeout_ms=_int_env("CYCLES_POOL_TIMEOUT_MS", 3000),
            log_level=os.environ.get("CYCLES_LOG_LEVEL", "info"),
            dev_mode=_bool_env("CYCLES_DEV_MODE"),
            webhook_allow_private=_bool_env("CYCLES_WEBHOOK_ALLOW_PRIVATE"),
            webhooks_disabled=_bool_env("CYCLES_WEBHOOKS_DISABLED"),
            webhook_poll_interval_ms=_int_env("CYCLES_WEBHOOK_POLL_INTERVAL_MS", 1000),
            webhook_timeout_ms=_int_env("CYCLES_WEBHOOK_TIMEOUT_MS", 10000),
            event_retention_days=_int_env("CYCLES_EVENT_RETENTION_DAYS", 90),
            delivery_retention_days=_int_env("CYCLES_DELIVERY_RETENTION_DAYS", 14),
            maintenance_interval_ms=_int_env("CYCLES_MAINTENANCE_INTERVAL_MS", 600000),
            maintenance_batch_size=_int_env("CYCLES_MAINTENANCE_BATCH_SIZE", 1000),
            idempotency_retention_hours=_ranged_int_env("CYCLES_IDEMPOTENCY_RETENTION_HOURS", 168, 24, 168),
            database_pooler=_choice_env("CYCLES_DATABASE_POOLER", "none", ("none", "pgbouncer")),
            reserve_batching=_bool_env("CYCLES_RESERVE_BATCHING", True),
        )
