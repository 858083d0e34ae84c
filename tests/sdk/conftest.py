"""SDK tests run against the real server: granian serving app.main in front of
a database of their own in the session cluster, started the way tests/api
starts its server (and with its helpers) but as a separate instance, so the
two session fixtures never fight over one database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cycles_sdk import CyclesConfig

from app.pgcluster import Cluster
from tests.api.provision import Tenant
from tests.server import ApiServer, fresh_database, running_server

DATABASE = "cycles_sdk_tests"


@pytest.fixture(scope="session")
def api_server(pg_cluster: Cluster) -> Iterator[ApiServer]:
    with running_server(fresh_database(pg_cluster, DATABASE)) as server:
        yield server


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
