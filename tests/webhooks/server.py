"""A real server (granian, app.main) for the webhook REST tests, with the
webhook settings under test."""

from __future__ import annotations

import os
import secrets
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

from app.migrate import upgrade
from app.pgcluster import Cluster

ROOT = Path(__file__).resolve().parent.parent.parent
GRANIAN = ROOT / ".venv" / "bin" / "granian"


@dataclass(frozen=True)
class Server:
    base_url: str
    admin_key: str
    conninfo: str
    log_file: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fresh_database(cluster: Cluster, name: str) -> str:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    conninfo = cluster.conninfo(name)
    upgrade(conninfo)
    return conninfo


@contextmanager
def running_server(conninfo: str, **env: str) -> Iterator[Server]:
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    admin_key = "admin-" + secrets.token_hex(16)
    log_file = Path(tempfile.mkdtemp(prefix="cycles-webhook-test-")) / "server.log"
    environment = {
        **os.environ, "CYCLES_DATABASE_URL": conninfo, "CYCLES_ADMIN_API_KEY": admin_key,
        "CYCLES_POOL_MIN_SIZE": "1", "CYCLES_POOL_MAX_SIZE": "8", "CYCLES_WEBHOOK_POLL_INTERVAL_MS": "100", **env}
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [str(GRANIAN), "--interface", "asgi", "--factory", "app.main:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{log_file.read_text()}")
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not come up:\n{log_file.read_text()}")
            time.sleep(0.1)
        yield Server(base_url, admin_key, conninfo, log_file)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log_text = log_file.read_text(errors="replace")
    assert "internal error" not in log_text, log_text
