"""Test infrastructure: one private PostgreSQL cluster per test session.

The cluster is started the same way as the embedded default (app.pgcluster):
as an unprivileged user when the tests run as root. pytest-postgresql's
``postgresql_noproc`` then builds a template database from ``sql/`` once, and
its ``postgresql`` fixture hands each test a fresh clone of it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from click.testing import CliRunner, Result
from pytest_postgresql import factories
from pytest_postgresql.executors import NoopExecutor

from app.cli import cli
from app.pgcluster import Cluster
from app.schema import sql_files

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="cycles-test-pg-"))
    base.chmod(0o755)
    cluster = Cluster(base / "cluster", port=5432)
    cluster.start("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(pg_cluster: Cluster) -> NoopExecutor:
    """Connection details of the session cluster, in pytest-postgresql's shape.

    postgresql_noproc(depends_on=...) clones its template from this executor's
    template database, which is created empty here.
    """
    executor = NoopExecutor(
        host=str(pg_cluster.socket_dir), port=pg_cluster.port, user=pg_cluster.superuser,
        options="", dbname="cycles_base")
    with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{executor.template_dbname}"')
    return executor


def load_schema(host: str, port: int, user: str, dbname: str, password: str | None = None, **_: object) -> None:
    """Load sql/ in file order: the canonical schema."""
    with psycopg.connect(host=host, port=port, user=user, dbname=dbname, password=password) as conn:
        for path in sql_files():
            conn.execute(path.read_text())


postgresql_schema = factories.postgresql_noproc(depends_on="pg_server", load=[load_schema], dbname="cycles")
postgresql = factories.postgresql("postgresql_schema")


@pytest.fixture
def db(postgresql: psycopg.Connection) -> psycopg.Connection:
    """A fresh database with the schema loaded, in autocommit mode: each
    cycles.* call is its own transaction, as it is for the server."""
    postgresql.autocommit = True
    return postgresql


@pytest.fixture
def run(db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Runs the ``cycles`` command (click's CliRunner) against the test database."""
    url = (f"postgresql://{quote(db.info.user)}@/{quote(db.info.dbname)}"
           f"?host={quote(db.info.host, safe='')}&port={db.info.port}")
    monkeypatch.setenv("CYCLES_DATABASE_URL", url)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, list(args), input=input, catch_exceptions=False)

    return invoke


def ok_json(result: Result) -> Any:
    """The JSON a successful ``--json`` command printed."""
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)
