"""``cycles serve``: the database (embedded by default), migrations, the admin key, HTTP.

With no CYCLES_DATABASE_URL the server owns a private PostgreSQL cluster in
``<data dir>/postgres``: created on first run, started here, brought to the
head migration, and stopped again when the server stops. With a URL it only
migrates that database and never starts a cluster.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from urllib.parse import quote

import psycopg
from psycopg import sql

from app import logs, migrate
from app.config import Settings
from app.observability import metrics_dir, otel
from app.pgcluster import Cluster

DATABASE_NAME = "cycles"
ADMIN_KEY_FILE = "admin_api_key"
ADMIN_KEY_PREFIX = "cyc_admin_"
APP_FACTORY = "app.main:create_app"


class ServeError(RuntimeError):
    """A problem the operator can fix, reported as one line."""


def say(message: str) -> None:
    print(f"cycles: {message}", file=sys.stderr, flush=True)


# Embedded database -----------------------------------------------------------


def embedded_cluster(settings: Settings) -> Cluster:
    """The private cluster of this data directory (raises PostgresNotInstalled)."""
    return Cluster(settings.data_dir / "postgres")


def cluster_url(cluster: Cluster, dbname: str = DATABASE_NAME) -> str:
    """A postgresql:// URI for the cluster's socket, usable by psycopg and psql alike."""
    return (f"postgresql://{cluster.superuser}@/{dbname}"
            f"?host={quote(str(cluster.socket_dir), safe='')}&port={cluster.port}")


def prepare_data_dir(settings: Settings) -> None:
    """Create the data directory. It stays traversable (0755): when we are root
    the cluster runs as an unprivileged user who must reach ``postgres/`` inside.
    Its secrets are protected file by file (the admin key is 0600)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        settings.data_dir.chmod(settings.data_dir.stat().st_mode | 0o755)


def ensure_database(cluster: Cluster, dbname: str = DATABASE_NAME) -> None:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            say(f"created database {dbname}")


@dataclass
class Database:
    """The database the server uses, and the cluster it started (if any)."""

    url: str
    cluster: Cluster | None
    started_cluster: bool


@contextmanager
def open_database(settings: Settings, *, migrate_to_head: bool = True) -> Iterator[Database]:
    """The configured database, migrated to head. An embedded cluster that this
    call started is stopped (fast) on exit, whatever happens inside."""
    if settings.database_url:
        if migrate_to_head:
            migrate.upgrade(settings.database_url)
        yield Database(url=settings.database_url, cluster=None, started_cluster=False)
        return

    cluster = embedded_cluster(settings)
    prepare_data_dir(settings)
    if not cluster.initialized:
        say(f"initializing a new PostgreSQL cluster in {cluster.base_dir}")
    started = not cluster.running
    if started:
        cluster.start()
    try:
        ensure_database(cluster)
        url = cluster_url(cluster)
        if migrate_to_head:
            migrate.upgrade(url)
        yield Database(url=url, cluster=cluster, started_cluster=started)
    finally:
        if started:
            cluster.stop("fast")


def database_revision(url: str) -> str | None:
    with psycopg.connect(url) as conn:
        return migrate.current_revision(conn)


# Admin key -------------------------------------------------------------------


def new_admin_key() -> str:
    return ADMIN_KEY_PREFIX + secrets.token_urlsafe(32)


def admin_key(settings: Settings) -> tuple[str, str]:
    """The admin API key and where it came from. CYCLES_ADMIN_API_KEY wins;
    otherwise the key stored in the data directory, generated on first run."""
    if settings.admin_api_key:
        return settings.admin_api_key, "CYCLES_ADMIN_API_KEY"
    path = settings.data_dir / ADMIN_KEY_FILE
    try:
        # O_EXCL: two servers starting at once cannot both write a key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if not key:
            raise ServeError(f"{path} is empty: delete it to generate a new admin key") from None
        return key, str(path)
    key = new_admin_key()
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key, str(path)


# HTTP ------------------------------------------------------------------------


def check_port_free(host: str, port: int) -> None:
    """Fail early, in one line, if the HTTP address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot resolve CYCLES_HOST {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # The same option the HTTP server sets: a port in TIME_WAIT is not "taken".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(
                    f"port {port} on {host} is already in use (set CYCLES_PORT to another port)") from None
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def display_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def run_http(settings: Settings) -> None:
    """Serve the ASGI app until SIGINT/SIGTERM; granian stops its workers gracefully."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    try:
        log_level = LogLevels(settings.log_level.lower())
    except ValueError:
        choices = ", ".join(level.value for level in LogLevels)
        raise ServeError(f"CYCLES_LOG_LEVEL must be one of {choices}, got {settings.log_level!r}") from None
    server = Granian(
        APP_FACTORY,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        factory=True,
        workers=max(1, settings.workers),
        log_level=log_level,
        log_dictconfig=logs.granian_config(settings),
    )
    # Before the workers start: they sum their metrics through this directory.
    directory = metrics_dir.prepare() if settings.metrics_enabled else None
    try:
        server.serve()
    finally:
        if directory is not None:
            metrics_dir.remove(directory)


class _Terminated(Exception):
    """SIGTERM before the HTTP server took over signal handling."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def serve(settings: Settings) -> None:
    """Run the server until interrupted; return normally after a clean stop."""
    otel.check_available(settings)
    check_port_free(settings.host, settings.port)
    # Until granian installs its own handlers, SIGTERM unwinds through the
    # finally blocks below, so an embedded cluster is never left running.
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with open_database(settings) as database:
            key, key_source = admin_key(settings)
            # The app reads both from the environment, in every worker process.
            os.environ["CYCLES_DATABASE_URL"] = database.url
            os.environ["CYCLES_ADMIN_API_KEY"] = key
            revision = database_revision(database.url)
            if database.cluster is not None:
                where = f"embedded PostgreSQL in {database.cluster.base_dir}"
            else:
                where = "CYCLES_DATABASE_URL"
            say(f"database: {where} (migration revision {revision})")
            if key_source == "CYCLES_ADMIN_API_KEY":
                say(f"admin API key: from CYCLES_ADMIN_API_KEY ({key[:len(ADMIN_KEY_PREFIX) + 4]}...)")
            else:
                say(f"admin API key: {key}  (stored in {key_source})")
            say(f"serving the Cycles API on {display_url(settings.host, settings.port)}  (Ctrl-C to stop)")
            run_http(settings)
            say("HTTP server stopped")
            if database.started_cluster:
                say("stopping the embedded PostgreSQL cluster")
    except (KeyboardInterrupt, _Terminated):
        say("interrupted during start-up; stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
