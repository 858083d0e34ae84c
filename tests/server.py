"""The real server for tests: granian serving app.main:create_app on a free
port, in front of a database of its own migrated to head in the session
cluster. Used by every test folder that talks HTTP."""

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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from app.migrate import upgrade
from app.pgcluster import Cluster

ROOT = Path(__file__).resolve().parent.parent
GRANIAN = ROOT / ".venv" / "bin" / "granian"
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fresh_database(cluster: Cluster, name: str) -> str:
    """An empty database `name` (dropped first if it exists), migrated to head."""
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    conninfo = cluster.conninfo(name)
    upgrade(conninfo)
    return conninfo


def wait_until_healthy(process: subprocess.Popen[bytes], base_url: str, log_file: Path) -> None:
    """Until the process answers /health with 200; it failing or a minute passing fails the test."""
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


@contextmanager
def running_server(conninfo: str, **env: str) -> Iterator[ApiServer]:
    """A server on `conninfo`, with CYCLES_* settings overridden by `env`.

    On exit the server is stopped, and the test fails if it ever logged an
    internal error: whatever the tests sent, the server must not fail.
    """
    base_url = f"http://127.0.0.1:{free_port()}"
    admin_key = "admin-" + secrets.token_hex(16)
    log_dir = Path(tempfile.mkdtemp(prefix="cycles-test-server-"))
    log_file = log_dir / "server.log"
    environment = {
        **os.environ, "CYCLES_DATABASE_URL": conninfo, "CYCLES_ADMIN_API_KEY": admin_key,
        "CYCLES_SWEEP_INTERVAL_MS": "200", "CYCLES_POOL_MIN_SIZE": "2", "CYCLES_POOL_MAX_SIZE": "8", **env}
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [str(GRANIAN), "--interface", "asgi", "--factory", "app.main:create_app",
             "--host", "127.0.0.1", "--port", base_url.rsplit(":", 1)[1], "--workers", "1"],
            cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(process, base_url, log_file)
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
    if "internal error" in log_text:
        pytest.fail(f"the server logged internal errors:\n{log_text}")


class ServerProcess:
    """The real server (granian with `workers` worker processes, as `cycles
    serve` runs it) in a process group of its own, so that it can be stopped,
    restarted, or SIGKILLed whole. Webhook delivery is off unless `env` turns
    it on."""

    def __init__(self, conninfo: str, log_file: Path, admin_key: str | None = None, workers: int = 1,
                 **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.admin_key = admin_key or "admin-" + secrets.token_hex(16)
        self.log_file = log_file
        self.workers = workers
        self.environment = {
            **os.environ, "CYCLES_DATABASE_URL": conninfo, "CYCLES_ADMIN_API_KEY": self.admin_key,
            "CYCLES_WEBHOOKS_DISABLED": "true", **env}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [str(GRANIAN), "--interface", "asgi", "--factory", "app.main:create_app",
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)],
                cwd=ROOT, env=self.environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until_healthy(self.process, self.base_url, self.log_file)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (granian and every worker)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")
