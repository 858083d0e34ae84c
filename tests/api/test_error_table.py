"""The SQLSTATE table of app.errors agrees with cycles._error_sqlstate, and
every code gets the HTTP status the specs give it."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient

from app.config import Settings
from app.errors import SQLSTATE_ERRORS
from app.main import create_app
from app.pgcluster import Cluster
from tests.api.checks import assert_error
from tests.api.provision import Tenant, reserve_body

SPEC_STATUS = {
    "INVALID_REQUEST": 400, "UNIT_MISMATCH": 400, "UNAUTHORIZED": 401, "FORBIDDEN": 403, "NOT_FOUND": 404,
    "BUDGET_EXCEEDED": 409, "BUDGET_FROZEN": 409, "BUDGET_CLOSED": 409, "RESERVATION_FINALIZED": 409,
    "IDEMPOTENCY_MISMATCH": 409, "OVERDRAFT_LIMIT_EXCEEDED": 409, "DEBT_OUTSTANDING": 409,
    "MAX_EXTENSIONS_EXCEEDED": 409, "TENANT_CLOSED": 409, "RESERVATION_EXPIRED": 410, "LIMIT_EXCEEDED": 429,
    # governance codes
    "TENANT_SUSPENDED": 403, "INSUFFICIENT_PERMISSIONS": 403, "KEY_REVOKED": 401, "TENANT_NOT_FOUND": 404,
    "BUDGET_NOT_FOUND": 404, "DUPLICATE_RESOURCE": 409, "INVALID_TRANSITION": 409,
    "COUNT_MISMATCH": 409,
    "WEBHOOK_NOT_FOUND": 404, "WEBHOOK_URL_INVALID": 400, "REPLAY_IN_PROGRESS": 409,
}

# A second SQLSTATE for a code the spec gives two statuses: raised directly
# (not through cycles._fail), so cycles._error_sqlstate names the first one.
SECOND_STATUS_STATES = {"CY4LE": (400, "LIMIT_EXCEEDED")}


def test_every_sql_error_code_maps_to_its_sqlstate(admin_conn: Any) -> None:
    for sqlstate, (_, code) in SQLSTATE_ERRORS.items():
        if sqlstate in SECOND_STATUS_STATES:
            continue
        row = admin_conn.execute("SELECT cycles._error_sqlstate(%s)", (code,)).fetchone()
        assert row == (sqlstate,), code


def test_every_sqlstate_of_the_schema_is_mapped(admin_conn: Any) -> None:
    """Each code cycles._fail can raise (read from the function's source) is in the table."""
    source = admin_conn.execute(
        "SELECT prosrc FROM pg_catalog.pg_proc WHERE oid = 'cycles._error_sqlstate(text)'::regprocedure"
    ).fetchone()[0]
    codes = {line.split("'")[1] for line in source.splitlines() if line.strip().startswith("WHEN '")}
    assert codes == {code for _, code in SQLSTATE_ERRORS.values()}


def test_statuses_follow_the_spec() -> None:
    primary = {state: entry for state, entry in SQLSTATE_ERRORS.items() if state not in SECOND_STATUS_STATES}
    assert {code: status for status, code in primary.values()} == SPEC_STATUS
    assert {state: SQLSTATE_ERRORS[state] for state in SECOND_STATUS_STATES} == SECOND_STATUS_STATES


def test_an_unexpected_database_error_is_a_logged_500(
    pg_cluster: Cluster, caplog: pytest.LogCaptureFixture,
) -> None:
    """A database without the cycles schema: the function call fails with a
    non-CY SQLSTATE, which is an internal error, in the spec's shape."""
    with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS cycles_api_noschema")
        conn.execute("CREATE DATABASE cycles_api_noschema")
    settings = Settings(database_url=pg_cluster.conninfo("cycles_api_noschema"), pool_min_size=1)
    tenant = Tenant("acme", "some-key")
    with TestClient(create_app(settings)) as client, caplog.at_level(logging.ERROR, logger="cycles.api"):
        response = client.post("/v1/reservations", json=reserve_body(tenant), headers=tenant.headers())
    body = assert_error(response, 500, "INTERNAL_ERROR")
    assert "cycles.reserve" not in body["message"]  # no internals leak to the client
    assert any("InvalidSchemaName" in (record.exc_text or "") for record in caplog.records)
