"""SDK tests run against the real server: granian serving app.main in front of
a database of their own in the session cluster, started the way tests/api
starts its server (and with its helpers) but as a separate instance, so the
two session fixtures never fight over one database."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cycles_sdk import CyclesConfig

from app.migrate import upgrade
from app.pgcluster import Cluster
from tests.api.conftest import GRANIAN, ROOT, ApiServer, _free_port, _wait_until_healthy
from tests.api.provision import Tenant

DATABASE = "cycles_sdk_tests"


@pytest.fixture(scope="session")
def api_server(pg_cluster: Cluster) -> Iterator[ApiServer]:
    with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}"')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    conninfo = pg_cluster.conninfo(DATABASE)
    upgrade(conninfo)
    base_url = f"http://127.0.0.1:{_free_port()}"
    admin_key = "admin-" + secrets.token_hex(16)
    log_dir = Path(tempfile.mkdtemp(prefix="cycles-sdk-test-"))
    log_file = log_dir / "server.log"
    env = {**os.environ, "CYCLES_DATABASE_URL": conninfo, "CYCLES_ADMIN_API_KEY": admin_key,
           "CYCLES_SWEEP_INTERVAL_MS": "200", "CYCLES_POOL_MIN_SIZE": "2", "CYCLES_POOL_MAX_SIZE": "8"}
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [str(GRANIAN), "--interface", "asgi", "--factory", "app.main:create_app", "--host", "127.0.0.1",
             "--port", base_url.rsplit(":", 1)[1], "--workers", "1"],
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
    if "internal error" in log_text:
        pytest.fail(f"the server logged internal errors:\n{log_text}")


@pytest.fixture(scope="session")
def admin_conn(api_server: ApiServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(api_server.conninfo, autocommit=True) as conn:
        yield conn


@pytest.fixture
def make_config(api_server: ApiServer, tmp_path: Path) -> Callable[..., CyclesConfig]:
    """A config for a tenant: short retry delays, a private journal directory."""

    def build(tenant: Tenant, **overrides: Any) -> CyclesConfig:
        settings: dict[str, Any] = {
            "base_url": api_server.base_url, "api_key": tenant.api_key, "tenant": tenant.tenant_id,
            "workspace": "w1", "retry_initial_delay": 0.01, "retry_max_delay": 0.05,
            "journal_dir": str(tmp_path / "journal"), "retry_flush_timeout": 2.0}
        settings.update(overrides)
        return CyclesConfig(**settings)

    return build
