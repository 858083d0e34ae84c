"""Fixtures of the reliability tests: one server of their own for the whole
session (its own database, so it never shares state with tests/api), the
admin connection to that database, and the hypothesis settings profiles.

Profiles (CYCLES_RELIABILITY_PROFILE): "ci" (default) keeps the examples few
enough for the CI budget; "long" runs hundreds of examples per property.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, settings

from app.pgcluster import Cluster
from tests.api.provision import Conn
from tests.reliability.processes import private_cluster
from tests.server import ApiServer, fresh_database, running_server

_COMMON = {
    "deadline": None, "database": None, "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
# CI: few examples and no shrinking (a concurrent run is slow to shrink and
# the failing example is printed whole anyway).
settings.register_profile(
    "ci", max_examples=int(os.environ.get("CYCLES_RELIABILITY_EXAMPLES", "10")),
    phases=[Phase.explicit, Phase.generate], **_COMMON)
settings.register_profile(
    "long", max_examples=int(os.environ.get("CYCLES_RELIABILITY_EXAMPLES", "300")), **_COMMON)
PROFILE = os.environ.get("CYCLES_RELIABILITY_PROFILE", "ci")
settings.load_profile(PROFILE)
# The long profile runs for as long as it takes (no per-test timeout).
PROPERTY_TIMEOUT_S = 0 if PROFILE == "long" else 120


@dataclass
class PrivatePg:
    """A PostgreSQL cluster the tests may crash or stop, with one database
    migrated to head, and a directory for server logs."""

    cluster: Cluster
    conninfo: str
    log_dir: Path

    def ensure_running(self) -> None:
        self.cluster.start()


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePg]:
    # Not under pytest's tmp_path: the cluster runs as another user when the
    # tests run as root, and must be able to reach its directory.
    base = Path(tempfile.mkdtemp(prefix="cycles-reliability-"))
    base.chmod(0o755)
    try:
        with private_cluster(base / "pg") as cluster:
            yield PrivatePg(cluster, fresh_database(cluster, "cycles_private"), base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def running_pg(private_pg: PrivatePg) -> PrivatePg:
    """The private cluster, started if an earlier test left it stopped."""
    private_pg.ensure_running()
    return private_pg


@pytest.fixture(scope="session")
def reliability_server(pg_cluster: Cluster) -> Iterator[ApiServer]:
    # The sweeper runs often, so reservations past their deadline are swept
    # while the workers are still busy with them.
    with running_server(fresh_database(pg_cluster, "cycles_reliability"),
                        CYCLES_SWEEP_INTERVAL_MS="50", CYCLES_POOL_MAX_SIZE="16") as server:
        yield server


@pytest.fixture(scope="session")
def reliability_conn(reliability_server: ApiServer) -> Iterator[Conn]:
    with psycopg.connect(reliability_server.conninfo, autocommit=True) as conn:
        yield conn
