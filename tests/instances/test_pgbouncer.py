"""The server behind PgBouncer in transaction pooling mode (Debian's
pgbouncer, installed with apt-get when missing): migrations, a concurrent
reserve/commit load and webhook delivery all go through a pool of three
server connections, with CYCLES_DATABASE_POOLER=pgbouncer.

Checked: every request succeeds and the ledger reconciles; the server
leaves no session state on the shared server connections (no prepared
statements, no SET timeouts: what the role configures is what every client
sees); the server connections stay within the pool."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.migrate import upgrade
from app.pgcluster import Cluster
from tests.api.provision import funded_tenant
from tests.instances.servers import Instance, LoadResult, new_admin_key, run_load
from tests.server import free_port
from tests.sql.admin_calls import call
from tests.webhooks.conftest import emit, subscribe
from tests.webhooks.receiver import Receiver, start_receiver

PGBOUNCER = Path("/usr/sbin/pgbouncer")
POOL_SIZE = 3
DBNAME = "cycles_pgbouncer"
ROLE_LOCK_TIMEOUT = "4321ms"
LOAD_THREADS = 6
LOAD_S = 4.0


def ensure_pgbouncer() -> None:
    if PGBOUNCER.exists():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("pgbouncer is not installed and cannot be installed here (needs root and apt-get)")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "pgbouncer"]
    if subprocess.run(install, env=environment, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=environment, check=True)
        subprocess.run(install, env=environment, check=True)


@dataclass(frozen=True)
class Bouncer:
    url: str
    direct: str
    log_file: Path


def _wait_for(url: str, process: subprocess.Popen[bytes], log_file: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {process.returncode}:\n{log_file.read_text()}")
        try:
            with psycopg.connect(url, prepare_threshold=None, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def bouncer(pg_cluster: Cluster) -> Iterator[Bouncer]:
    ensure_pgbouncer()
    with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DBNAME}"')
        conn.execute(f'CREATE DATABASE "{DBNAME}"')
        # Timeouts come from the role, where every server connection the
        # pooler opens picks them up; statement_timeout deliberately unset.
        conn.execute(f'ALTER ROLE {pg_cluster.superuser} IN DATABASE "{DBNAME}"'
                     f" SET lock_timeout = '{ROLE_LOCK_TIMEOUT}'")
    base = Path(tempfile.mkdtemp(prefix="cycles-pgbouncer-"))
    base.chmod(0o755)
    port = free_port()
    log_file = base / "pgbouncer.log"
    ini = base / "pgbouncer.ini"
    ini.write_text(f"""
[databases]
{DBNAME} = host={pg_cluster.socket_dir} port={pg_cluster.port} dbname={DBNAME} user={pg_cluster.superuser}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = {POOL_SIZE}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 200
max_db_connections = {POOL_SIZE}
logfile = {log_file}
""")
    command = [str(PGBOUNCER), str(ini)]
    if pg_cluster.run_as:
        # PgBouncer refuses to run as root; it runs as the cluster's user,
        # who can also reach the cluster's private socket directory.
        owner = pwd.getpwnam(pg_cluster.run_as)
        for path in (base, ini):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        command = ["runuser", "-u", pg_cluster.run_as, "--", *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    url = f"postgresql://{pg_cluster.superuser}@127.0.0.1:{port}/{DBNAME}"
    try:
        _wait_for(url, process, log_file)
        yield Bouncer(url=url, direct=pg_cluster.conninfo(DBNAME), log_file=log_file)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(base, ignore_errors=True)


def _server_connection_state(bouncer: Bouncer) -> list[tuple[Any, ...]]:
    """Session state of every server connection in the pool: as many
    clients as the pool has connections, each inside a transaction, so
    each holds a different server connection."""
    with ExitStack() as stack:
        conns = [stack.enter_context(psycopg.connect(bouncer.url, prepare_threshold=None))
                 for _ in range(POOL_SIZE)]
        rows = []
        for conn in conns:
            conn.execute("BEGIN")
            row = conn.execute(
                "SELECT pg_backend_pid(), current_setting('lock_timeout'), current_setting('statement_timeout'),"
                " (SELECT count(*) FROM pg_catalog.pg_prepared_statements)").fetchone()
            assert row is not None
            rows.append(row)
        for conn in conns:
            conn.rollback()
    return rows


def test_the_server_behind_pgbouncer_in_transaction_mode(bouncer: Bouncer, tmp_path: Path) -> None:
    # Migrations run through the pooler too: one transaction, a
    # transaction-scoped lock.
    upgrade(bouncer.url)
    receiver: Receiver = start_receiver()
    with psycopg.connect(bouncer.direct, autocommit=True) as conn, ExitStack() as cleanup:
        cleanup.callback(receiver.server.server_close)
        cleanup.callback(receiver.server.shutdown)
        tenant = funded_tenant(conn, 10**12, 10**12)
        conn.execute("SELECT cycles.create_tenant('acme', 'Acme')")
        subscribe(conn, receiver.url)
        instance = Instance(
            bouncer.url, tmp_path / "server.log", new_admin_key(), workers=2,
            CYCLES_DATABASE_POOLER="pgbouncer", CYCLES_POOL_MAX_SIZE="6", CYCLES_WEBHOOKS_DISABLED="false",
            CYCLES_DEV_MODE="true", CYCLES_WEBHOOK_ALLOW_PRIVATE="true", CYCLES_WEBHOOK_POLL_INTERVAL_MS="100",
            CYCLES_SWEEP_INTERVAL_MS="100", CYCLES_MAINTENANCE_INTERVAL_MS="500")
        result = LoadResult()
        stop = threading.Event()
        threads = [threading.Thread(target=run_load, args=([instance], tenant, stop, result, 1.0, 60_000, seed))
                   for seed in range(LOAD_THREADS)]
        instance.start()
        cleanup.callback(instance.stop)
        started = time.monotonic()
        for thread in threads:
            thread.start()
        event_ids = emit(conn, 5)
        time.sleep(LOAD_S)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        elapsed = time.monotonic() - started
        delivered = receiver.wait_for(len(event_ids))
        backends = call(conn, "SELECT count(*) FROM pg_catalog.pg_stat_activity"
                              " WHERE datname = %(d)s AND pid <> pg_backend_pid()", d=DBNAME)
        state = _server_connection_state(bouncer)
        maintenance_runs = call(conn, "SELECT count(*) FROM cycles.maintenance_runs WHERE finished_at IS NOT NULL")

        # Correct under load: every request succeeded, the ledger reconciles.
        assert set(result.statuses) == {200}, result.statuses
        assert result.transport_errors == 0
        assert len(result.committed) == len(result.reserved) > 0
        assert conn.execute("SELECT * FROM cycles.verify_ledger()").fetchall() == []
        budget = conn.execute("SELECT spent, reserved FROM cycles.budgets WHERE scope = %s",
                              (tenant.scope,)).fetchone()
        assert budget == (600 * len(result.committed), 0)
        assert call(conn, "SELECT count(*) FROM cycles.reservations WHERE status = 'COMMITTED'") \
            == len(result.committed)
        # The delivery worker works without LISTEN (it polls), once per event.
        assert sorted(r.event["event_id"] for r in delivered) == sorted(event_ids)
        # The maintenance loop's claims and batches went through the pooler.
        assert maintenance_runs > 0

    # The server's 2 workers x (pool + delivery worker) clients shared the
    # pool's server connections, and left no session state on them: no
    # prepared statement, and the timeouts the role sets and nothing else
    # (the server wanted statement_timeout 15 s but never SET it).
    assert backends <= POOL_SIZE
    assert len({row[0] for row in state}) == POOL_SIZE
    assert [row[1:] for row in state] == [(ROLE_LOCK_TIMEOUT, "0", 0)] * POOL_SIZE
    log = instance.log()
    assert "internal error" not in log, log
    assert "does not SET statement_timeout" in log
    print({"test": "pgbouncer", "requests": result.requests,
           "requests_per_s": round(result.requests / elapsed), "server_connections": backends})
