"""The application role reaches the data only through the public functions."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors


@pytest.fixture
def app_role(db: psycopg.Connection) -> psycopg.Connection:
    db.execute("SET ROLE cycles_app")
    return db


@pytest.mark.parametrize("statement", [
    "SELECT * FROM cycles.budgets",
    "UPDATE cycles.budgets SET allocated = 0",
    "SELECT * FROM cycles.ledger_entries",
    "INSERT INTO cycles.tenants (tenant_id, name) VALUES ('sneaky', 'Sneaky')",
    "DELETE FROM cycles.reservations",
    "SELECT cycles._now_ms()",
    "SELECT cycles._fail('INVALID_REQUEST', 'x')",
])
def test_app_role_cannot_touch_tables_or_private_helpers(app_role: psycopg.Connection, statement: str) -> None:
    with pytest.raises(errors.InsufficientPrivilege):
        app_role.execute(statement)


def test_app_role_can_call_public_functions(app_role: psycopg.Connection) -> None:
    created = app_role.execute("SELECT cycles.create_tenant(p_tenant_id => 'grants-ok', p_name => 'Grants')").fetchone()
    assert created is not None and created[0]["tenant_id"] == "grants-ok"
    app_role.execute("RESET ROLE")
    assert app_role.execute("SELECT count(*) FROM cycles.tenants WHERE tenant_id = 'grants-ok'").fetchone() == (1,)


def test_public_functions_are_security_definer_with_pinned_search_path(db: psycopg.Connection) -> None:
    loose = db.execute("""
        SELECT p.oid::regprocedure::text
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'cycles'::regnamespace AND p.proname !~ '^_' AND p.prokind = 'f'
          AND NOT (p.prosecdef AND p.proconfig @> ARRAY['search_path=pg_catalog, cycles, pg_temp'])
    """).fetchall()
    assert loose == []


def test_private_helpers_are_not_executable_by_public(db: psycopg.Connection) -> None:
    granted = db.execute("""
        SELECT p.oid::regprocedure::text
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'cycles'::regnamespace AND p.proname ~ '^_'
          AND (has_function_privilege('cycles_app', p.oid, 'EXECUTE')
               OR has_function_privilege('public', p.oid, 'EXECUTE'))
    """).fetchall()
    assert granted == []
