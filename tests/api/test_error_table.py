"""The SQLSTATE table of app.errors agrees with cycles._error_sqlstate, and
every code gets the HTTP status the specs give it."""

from __future__ import annotations

from typing import Any

from app.errors import SQLSTATE_ERRORS

SPEC_STATUS = {
    "INVALID_REQUEST": 400, "UNIT_MISMATCH": 400, "UNAUTHORIZED": 401, "FORBIDDEN": 403, "NOT_FOUND": 404,
    "BUDGET_EXCEEDED": 409, "BUDGET_FROZEN": 409, "BUDGET_CLOSED": 409, "RESERVATION_FINALIZED": 409,
    "IDEMPOTENCY_MISMATCH": 409, "OVERDRAFT_LIMIT_EXCEEDED": 409, "DEBT_OUTSTANDING": 409,
    "MAX_EXTENSIONS_EXCEEDED": 409, "TENANT_CLOSED": 409, "RESERVATION_EXPIRED": 410, "LIMIT_EXCEEDED": 429,
    # governance codes
    "TENANT_SUSPENDED": 403, "INSUFFICIENT_PERMISSIONS": 403, "KEY_REVOKED": 401, "TENANT_NOT_FOUND": 404,
    "BUDGET_NOT_FOUND": 404, "DUPLICATE_RESOURCE": 409, "INVALID_TRANSITION": 409,
}


def test_every_sql_error_code_maps_to_its_sqlstate(admin_conn: Any) -> None:
    for sqlstate, (_, code) in SQLSTATE_ERRORS.items():
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
    assert {code: status for status, code in SQLSTATE_ERRORS.values()} == SPEC_STATUS
