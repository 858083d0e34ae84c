"""The cycles_reporting role reads the reports and nothing else, and writes nothing."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from tests.reporting import workload

REPORTS = [
    "SELECT count(*) FROM cycles_reporting.ledger",
    "SELECT count(*) FROM cycles_reporting.utilisation",
    "SELECT count(*) FROM cycles_reporting.reconciliation",
    "SELECT count(*) FROM cycles_reporting.chain_heads",
    "SELECT count(*) FROM cycles_reporting.spend('2000-01-01', '2100-01-01', 'month', '{tenant,agent}')",
    "SELECT count(*) FROM cycles_reporting.top_spenders('2000-01-01', '2100-01-01', 'agent')",
    "SELECT count(*) FROM cycles_reporting.denials_and_expiries('2000-01-01', '2100-01-01')",
    "SELECT count(*) FROM cycles_reporting.balance_as_of('tenant:t-alpha', 'TOKENS', '2100-01-01')",
    "SELECT count(*) FROM cycles_reporting.statement('t-alpha', '2026-02-01')",
    "SELECT count(*) FROM cycles_reporting.statement_funding('t-alpha', '2026-02-01')",
    "SELECT count(*) FROM cycles_reporting.verify_ledger_chain()",
]

FORBIDDEN = [
    "SELECT * FROM cycles.api_keys",
    "SELECT key_hash FROM cycles.api_keys",
    "SELECT * FROM cycles.ledger_entries",
    "SELECT * FROM cycles.budgets",
    "SELECT * FROM cycles.reservations",
    "SELECT * FROM cycles.events",
    "SELECT * FROM cycles.tenants",
    "SELECT * FROM cycles.webhook_subscriptions",
    "SELECT cycles.list_api_keys('t-alpha')",
    "SELECT cycles.create_tenant('sneaky', 'Sneaky')",
    "SELECT cycles.fund_budget('tenant:t-alpha', 'TOKENS', 'CREDIT', 5, 'k')",
    "SELECT cycles.expire_due()",
    "SELECT cycles._append_ledger(1, 't-alpha', 'tenant:t-alpha', 'TOKENS', 'CREDIT', '{}', 5)",
    "SELECT cycles_reporting.spend IS NULL FROM cycles.budgets",
    "INSERT INTO cycles_reporting.ledger (tenant_id) VALUES ('t-alpha')",
    "UPDATE cycles_reporting.utilisation SET allocated = 0",
    "DELETE FROM cycles_reporting.ledger",
    "CREATE VIEW cycles_reporting.mine AS SELECT 1",
    "CREATE TABLE cycles_reporting.mine (x int)",
]


@pytest.fixture
def reporting(db: psycopg.Connection) -> psycopg.Connection:
    workload.run(db, seed=3, operations_per_tenant=5)
    db.execute("SET ROLE cycles_reporting")
    return db


@pytest.mark.parametrize("statement", REPORTS)
def test_reporting_role_reads_every_report(reporting: psycopg.Connection, statement: str) -> None:
    row = reporting.execute(statement).fetchone()  # type: ignore[arg-type]
    assert row is not None and row[0] >= 0


@pytest.mark.parametrize("statement", FORBIDDEN)
def test_reporting_role_cannot_read_or_write_anything_else(reporting: psycopg.Connection, statement: str) -> None:
    with pytest.raises(errors.InsufficientPrivilege):
        reporting.execute(statement)  # type: ignore[arg-type]


def test_reporting_role_has_no_table_privilege_outside_its_views(db: psycopg.Connection) -> None:
    granted = db.execute("""
        SELECT c.oid::regclass::text, p.privilege
        FROM pg_catalog.pg_class AS c
        CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(privilege)
        WHERE c.relnamespace IN ('cycles'::regnamespace, 'cycles_reporting'::regnamespace)
          AND c.relkind IN ('r', 'v', 'm', 'p', 'S')
          AND has_table_privilege('cycles_reporting', c.oid, p.privilege)
        ORDER BY 1, 2""").fetchall()
    assert granted == [(f"cycles_reporting.{view}", "SELECT")
                       for view in ("chain_heads", "ledger", "reconciliation", "utilisation")]


def test_report_functions_only_read(db: psycopg.Connection) -> None:
    functions = db.execute("""
        SELECT p.proname, p.provolatile, p.prosecdef, p.proconfig
        FROM pg_catalog.pg_proc AS p WHERE p.pronamespace = 'cycles_reporting'::regnamespace
        ORDER BY 1""").fetchall()
    assert [f[0] for f in functions] == ["balance_as_of", "denials_and_expiries", "spend", "statement",
                                        "statement_funding", "top_spenders", "verify_ledger_chain"]
    for name, volatility, definer, config in functions:
        assert volatility == "s", name  # STABLE: PostgreSQL refuses any write inside it
        assert definer and config == ["search_path=pg_catalog, cycles, pg_temp", "jit=off",
                                      "random_page_cost=1.1"], name
    public = db.execute("""
        SELECT count(*) FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'cycles_reporting'::regnamespace
          AND (has_function_privilege('public', p.oid, 'EXECUTE')
               OR has_function_privilege('cycles_app', p.oid, 'EXECUTE'))""").fetchone()
    assert public == (0,)


def test_app_role_cannot_read_the_reports(db: psycopg.Connection) -> None:
    db.execute("SET ROLE cycles_app")
    with pytest.raises(errors.InsufficientPrivilege):
        db.execute("SELECT * FROM cycles_reporting.ledger")
