"""A real server for the demos, on its own database in the session cluster."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from app.demos.sandbox import Target
from app.pgcluster import Cluster
from tests.server import ApiServer, fresh_database, running_server


@pytest.fixture(scope="session")
def demo_server(pg_cluster: Cluster) -> Iterator[ApiServer]:
    with running_server(fresh_database(pg_cluster, "cycles_demos")) as server:
        yield server


@pytest.fixture(scope="session")
def target(demo_server: ApiServer) -> Target:
    return Target(demo_server.base_url, demo_server.admin_key)


@pytest.fixture(scope="session")
def demo_conn(demo_server: ApiServer) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(demo_server.conninfo, autocommit=True) as conn:
        yield conn
