"""A real server for the operations tests, with metrics per tenant on (the
opt-in label is the one that needs checking; it needs a metrics token, which
the client sends on every request), its log file readable, and a superuser
connection to its database for provisioning."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from app.pgcluster import Cluster
from tests.ops.scrape import METRICS_TOKEN
from tests.server import ApiServer, fresh_database, running_server


@pytest.fixture(scope="session")
def ops_server(pg_cluster: Cluster) -> Iterator[ApiServer]:
    with running_server(fresh_database(pg_cluster, "cycles_ops"), CYCLES_METRICS_TENANT_LABEL="true",
                        CYCLES_METRICS_TOKEN=METRICS_TOKEN, CYCLES_LOG_FORMAT="auto") as server:
        yield server


@pytest.fixture(scope="session")
def ops_http(ops_server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ops_server.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as client:
        yield client


@pytest.fixture(scope="session")
def ops_conn(ops_server: ApiServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(ops_server.conninfo, autocommit=True) as conn:
        yield conn
