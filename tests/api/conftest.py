"""The real server, once per session: granian serving app.main:create_app on
a free port, in front of a database migrated to head in the session cluster.

Tests talk to it over HTTP with httpx and provision what they need (a tenant
of their own, keys, budgets) through the admin SQL functions (provision.py),
so they never share state and run in any order.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import psycopg
import pytest

from app.pgcluster import Cluster
from tests.server import ROOT, ApiServer, fresh_database, running_server

__all__ = ["ROOT", "ApiServer"]


@pytest.fixture(scope="session")
def api_server(pg_cluster: Cluster) -> Iterator[ApiServer]:
    with running_server(fresh_database(pg_cluster, "cycles_api")) as server:
        yield server


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
