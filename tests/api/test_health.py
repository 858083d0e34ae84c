"""GET /health and GET /ready."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg
from litestar.testing import TestClient

from app.config import Settings
from app.main import create_app
from app.migrate import head_revision
from app.pgcluster import Cluster
from tests.api.checks import assert_error, assert_ids
from tests.api.conftest import ApiServer


def test_health_is_up(http: httpx.Client) -> None:
    response = http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "UP"}
    assert_ids(response)


def test_ready_when_schema_is_at_head(http: httpx.Client) -> None:
    response = http.get("/ready")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "READY", "schema_revision": head_revision()}


def test_ready_is_503_when_schema_is_behind(api_server: ApiServer, pg_cluster: Cluster) -> None:
    with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS cycles_api_empty")
        conn.execute("CREATE DATABASE cycles_api_empty")
    app = create_app(Settings(database_url=pg_cluster.conninfo("cycles_api_empty"), pool_min_size=1))
    with TestClient(app) as client:
        response = client.get("/ready")
    body = assert_error(response, 503, "INTERNAL_ERROR")
    assert body["details"] == {"expected_revision": head_revision()}


def test_ready_is_503_when_database_does_not_answer(tmp_path: Path) -> None:
    url = f"host={tmp_path} port=1 dbname=nothing connect_timeout=1"
    with TestClient(create_app(Settings(database_url=url, pool_min_size=0))) as client:
        assert_error(client.get("/ready"), 503, "INTERNAL_ERROR")
        # The process itself is up.
        assert client.get("/health").status_code == 200
