"""The `cycles` command: version, migrate, psql, and one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from app import migrate
from app.pgcluster import Cluster
from app.server import cluster_url


def cycles_command() -> list[str]:
    script = Path(sys.executable).parent / "cycles"
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def run_cycles(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cycles_command(), *args], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def base_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYCLES_")}
    env.update(overrides)
    return env


@pytest.fixture
def database_url(pg_cluster: Cluster) -> Iterator[str]:
    """An empty database on the session cluster, as a URL."""
    name = f"cli_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield cluster_url(pg_cluster, name)
    with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_version_names_the_package_and_the_schema_head() -> None:
    result = run_cycles("version", env=base_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("cycles 0.")
    assert f"schema migration head {migrate.head_revision()}" in result.stdout


def test_migrate_brings_the_configured_database_to_head(database_url: str) -> None:
    env = base_env(CYCLES_DATABASE_URL=database_url)
    for _ in range(2):  # the second run finds nothing to do
        result = run_cycles("migrate", env=env)
        assert result.returncode == 0, result.stderr
        assert f"database at revision {migrate.head_revision()}" in result.stdout
    with psycopg.connect(database_url) as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
        assert conn.execute("SELECT pg_catalog.to_regclass('cycles.budgets') IS NOT NULL").fetchone() == (True,)


def test_psql_passes_its_arguments_to_psql(database_url: str) -> None:
    env = base_env(CYCLES_DATABASE_URL=database_url)
    assert run_cycles("migrate", env=env).returncode == 0
    result = run_cycles("psql", "-tA", "-c", "SELECT count(*) FROM cycles.tenants", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
    failing = run_cycles("psql", "--", "-v", "ON_ERROR_STOP=1", "-c", "SELECT no_such_column", env=env)
    assert failing.returncode != 0
    assert "no_such_column" in failing.stderr


def test_embedded_migrate_and_psql_start_and_stop_the_cluster() -> None:
    base = Path(tempfile.mkdtemp(prefix="cycles-cli-"))
    base.chmod(0o755)  # the cluster may run as another user, who must reach it
    cluster_dir = base / "data" / "postgres"
    env = base_env(CYCLES_DATA_DIR=str(base / "data"))
    try:
        result = run_cycles("migrate", env=env)
        assert result.returncode == 0, result.stderr
        assert f"database at revision {migrate.head_revision()}" in result.stdout
        cluster = Cluster(cluster_dir)
        assert cluster.initialized
        assert not cluster.running  # the command started it, so it stopped it

        result = run_cycles("psql", "-tA", "-c", "SELECT version_num FROM public.alembic_version", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == migrate.head_revision()
        assert not cluster.running
    finally:
        if (cluster_dir / "data" / "postmaster.pid").exists():
            Cluster(cluster_dir).stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def test_unreachable_database_is_one_line_and_a_failure(tmp_path: Path) -> None:
    env = base_env(CYCLES_DATABASE_URL=f"postgresql://nobody@/nothing?host={tmp_path}&port=1")
    result = run_cycles("migrate", env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cycles: error: cannot reach the database:")
