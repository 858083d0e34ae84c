"""`cycles serve` on the embedded default: first start, clean stop, restart on the same data."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from app.pgcluster import Cluster

pytestmark = pytest.mark.slow

START_DEADLINE_S = 60.0


def cycles_command() -> list[str]:
    """The installed `cycles` entry point of this interpreter's environment."""
    script = Path(sys.executable).parent / "cycles"
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def embedded_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CYCLES_DATABASE_URL", "CYCLES_ADMIN_API_KEY")}
    env.update(CYCLES_DATA_DIR=str(data_dir), CYCLES_PORT=str(port), CYCLES_WORKERS="1")
    return env


@pytest.fixture
def base_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are private to us, and when we are
    # root the cluster runs as another user, who must traverse to its files.
    base = Path(tempfile.mkdtemp(prefix="cycles-embedded-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        cluster_dir = base / "data" / "postgres"
        if (cluster_dir / "data" / "postmaster.pid").exists():
            Cluster(cluster_dir).stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


class Server:
    """One `cycles serve` process, its output in a file (a pipe could fill up)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.port = int(env["CYCLES_PORT"])
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [*cycles_command(), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"cycles serve exited with {self.process.returncode}:\n{self.output}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"/ready never answered 200:\n{self.output}")

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_serve_starts_stops_and_restarts_on_the_same_data(base_dir: Path) -> None:
    data_dir = base_dir / "data"
    env = embedded_env(data_dir, free_port())
    cluster = Cluster(data_dir / "postgres")

    first = Server(env, base_dir / "first.log")
    try:
        first.wait_ready()
        key_file = data_dir / "admin_api_key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        admin_key = key_file.read_text().strip()
        assert admin_key.startswith("cyc_admin_") and len(admin_key) >= len("cyc_admin_") + 32
        assert admin_key in first.output
        assert f"http://127.0.0.1:{env['CYCLES_PORT']}" in first.output
        with psycopg.connect(cluster.conninfo("cycles"), autocommit=True) as conn:
            conn.execute("INSERT INTO cycles.tenants (tenant_id, name) VALUES ('survivor', 'Survives restarts')")

        assert first.terminate() == 0
    finally:
        first.kill()
    assert not cluster.running
    assert not (cluster.data_dir / "postmaster.pid").exists()

    second = Server(env, base_dir / "second.log")
    try:
        second.wait_ready()
        assert "initializing a new PostgreSQL cluster" not in second.output
        assert key_file.read_text().strip() == admin_key
        assert admin_key in second.output
        with psycopg.connect(cluster.conninfo("cycles")) as conn:
            assert conn.execute(
                "SELECT name FROM cycles.tenants WHERE tenant_id = 'survivor'").fetchone() == ("Survives restarts",)
        assert second.terminate() == 0
    finally:
        second.kill()
    assert not cluster.running


def test_serve_refuses_a_taken_port_before_starting_anything(base_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        result = subprocess.run(
            [*cycles_command(), "serve"], env=embedded_env(base_dir / "data", port),
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"cycles: error: port {port} on 127.0.0.1 is already in use (set CYCLES_PORT to another port)")
    assert not (base_dir / "data" / "postgres").exists()
