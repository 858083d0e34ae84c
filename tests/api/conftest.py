"""The real server, once per session: granian serving app.main:create_app on
a free port, in front of a database migrated to head in the session cluster.

Tests talk to it over HTTP with httpx and provision what they need (a tenant
of their own, keys, budgets) through the admin SQL functions (provision.py),
so they never share state and run in any order.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from app.migrate import upgrade
from app.pgcluster import Cluster

ROOT = Path(__file__).resolve().parent.parent.parent
GRANIAN = ROOT / ".venv" / "bin" / "granian"
DATABASE = "cycles_api"
STARTUP_TIMEOUT_S = 60


@dataclass(frozen=True)
class ApiServer:
    base_url: str
    admin_key: str
    conninfo: str
    log_file: Path

    def __getitem__(self, name: str) -> str:
        # Also usable as the mapping {base_url, admin_key}.
        value: str = getattr(self, name)
        return value


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _create_database(cluster: Cluster) -> str:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}"')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    conninfo = cluster.conninfo(DATABASE)
    upgrade(conninfo)
    return conninfo


def _wait_until_healthy(process: subprocess.Popen[bytes], base_url: str, log_file: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log_file.read_text()}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server did not come up in {STARTUP_TIMEOUT_S}s:\n{log_file.read_text()}")


@pytest.fixture(scope="session")
def api_server(pg_cluster: Cluster) -> Iterator[ApiServer]:
    conninfo = _create_database(pg_cluster)
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    admin_key = "admin-" + secrets.token_hex(16)
    log_dir = Path(tempfile.mkdtemp(prefix="cycles-api-test-"))
    log_file = log_dir / "server.log"
    env = {
        **os.environ,
        "CYCLES_DATABASE_URL": conninfo,
        "CYCLES_ADMIN_API_KEY": admin_key,
        "CYCLES_SWEEP_INTERVAL_MS": "200",
        "CYCLES_POOL_MIN_SIZE": "2",
        "CYCLES_POOL_MAX_SIZE": "8",
    }
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [str(GRANIAN), "--interface", "asgi", "--factory", "app.main:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_healthy(process, base_url, log_file)
        yield ApiServer(base_url, admin_key, conninfo, log_file)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_text = log_file.read_text(errors="replace")
        shutil.rmtree(log_dir, ignore_errors=True)
    # Whatever the tests sent, the server never failed internally.
    if "internal error" in log_text:
        pytest.fail(f"the server logged internal errors:\n{log_text}")


@pytest.fixture(scope="session")
def http(api_server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_server.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def admin_conn(api_server: ApiServer) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A superuser connection to the server's database, for provisioning and
    for looking at what a request changed."""
    with psycopg.connect(api_server.conninfo, autocommit=True) as conn:
        yield conn
