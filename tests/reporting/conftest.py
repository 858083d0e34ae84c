"""One database with a random workload, shared by the read-only report tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from app.pgcluster import Cluster
from tests.conftest import load_schema
from tests.reporting import workload

SEED = 20261128


@pytest.fixture(scope="session")
def workload_db(pg_cluster: Cluster) -> Iterator[psycopg.Connection]:
    """A database the workload filled; tests must only read it."""
    name = f"reporting_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    load_schema(host=str(pg_cluster.socket_dir), port=pg_cluster.port, user=pg_cluster.superuser, dbname=name)
    conn = psycopg.connect(pg_cluster.conninfo(name), autocommit=True)
    workload.run(conn, SEED)
    # Summarise the first part of the history only, so that every report test
    # reads summaries and ledger rows on either side of SUMMARISED_TO.
    conn.execute("SELECT cycles._report_summarise_spend(p_budget_ms => 600000, p_until => %s)",
                 (workload.SUMMARISED_TO,))
    conn.execute("ANALYZE")
    try:
        yield conn
    finally:
        conn.close()
        with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def ledger(workload_db: psycopg.Connection) -> workload.Ledger:
    return workload.Ledger(workload_db)
