"""The ledger is append-only and its sums equal every budget's counters (cycles.verify_ledger)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

ADMIN_SCRIPT = [
    "SELECT cycles.create_tenant('acme', 'Acme')",
    "SELECT cycles.create_budget('tenant:acme', 'TOKENS', 1000, 100)",
    "SELECT cycles.create_budget('tenant:acme/workspace:w', 'TOKENS', 300)",
    "SELECT cycles.create_budget('tenant:acme', 'USD_MICROCENTS', 0)",
    "SELECT cycles.create_api_key('acme', 'agent')",
    "SELECT cycles.fund_budget('tenant:acme', 'TOKENS', 'CREDIT', 250, 'f1')",
    "SELECT cycles.fund_budget('tenant:acme', 'TOKENS', 'DEBIT', 50, 'f2')",
    "SELECT cycles.fund_budget('tenant:acme', 'TOKENS', 'RESET', 900, 'f3')",
    "SELECT cycles.fund_budget('tenant:acme', 'TOKENS', 'RESET_SPENT', 800, 'f4', p_spent => 120)",
    "SELECT cycles.fund_budget('tenant:acme', 'TOKENS', 'REPAY_DEBT', 30, 'f5')",
    "SELECT cycles.fund_budget('tenant:acme', 'TOKENS', 'CREDIT', 250, 'f1')",  # replay
    "SELECT cycles.update_budget('tenant:acme', 'TOKENS', '{\"overdraft_limit\": 10}')",
    "SELECT cycles.freeze_budget('tenant:acme/workspace:w', 'TOKENS')",
    "SELECT cycles.unfreeze_budget('tenant:acme/workspace:w', 'TOKENS')",
    "SELECT cycles.close_budget('tenant:acme', 'USD_MICROCENTS')",
    "SELECT cycles.suspend_tenant('acme')",
    "SELECT cycles.reactivate_tenant('acme')",
    "SELECT cycles.close_tenant('acme')",
]


def drift(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    return db.execute("SELECT scope, unit, counter, expected, actual FROM cycles.verify_ledger()").fetchall()


def test_verify_ledger_is_empty_after_every_admin_operation(db: psycopg.Connection) -> None:
    for statement in ADMIN_SCRIPT:
        db.execute(statement)
        assert drift(db) == [], statement
    sums = db.execute("""
        SELECT b.scope, b.unit, b.allocated, sum(l.allocated_delta), b.spent, sum(l.spent_delta)
        FROM cycles.budgets AS b JOIN cycles.ledger_entries AS l USING (budget_id)
        GROUP BY b.tenant_id, b.budget_id ORDER BY b.scope, b.unit""").fetchall()
    assert [(r[0], r[1]) for r in sums] == [
        ("tenant:acme", "TOKENS"), ("tenant:acme", "USD_MICROCENTS"), ("tenant:acme/workspace:w", "TOKENS")]
    assert all(r[2] == r[3] and r[4] == r[5] for r in sums)
    assert sums[0][2] == 830 and sums[0][4] == 120


@pytest.mark.parametrize(("counter", "assignment", "expected", "actual"), [
    ("allocated", "allocated = allocated + 5, remaining = remaining + 5", 1000, 1005),
    ("spent", "spent = spent + 5, remaining = remaining - 5", 0, 5),
    ("reserved", "reserved = reserved + 5, remaining = remaining - 5", 0, 5),
    ("debt", "debt = debt + 5, remaining = remaining - 5", 0, 5),
])
def test_verify_ledger_reports_a_counter_changed_behind_its_back(
        db: psycopg.Connection, counter: str, assignment: str, expected: int, actual: int) -> None:
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    db.execute("SELECT cycles.create_budget('tenant:acme', 'TOKENS', 1000)")
    db.execute("SELECT cycles.create_budget('tenant:acme/app:a', 'TOKENS', 10)")
    assert drift(db) == []
    db.execute(f"UPDATE cycles.budgets SET {assignment} WHERE scope = 'tenant:acme'")
    found = drift(db)
    assert ("tenant:acme", "TOKENS", counter, expected, actual) in found
    # remaining still satisfies the identity on the row, but not on the ledger's sums.
    assert [r[2] for r in found] == sorted([counter, "remaining"])


def test_verify_ledger_reports_a_budget_without_ledger_rows(db: psycopg.Connection) -> None:
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    db.execute("INSERT INTO cycles.budgets (tenant_id, scope, unit, allocated, remaining) "
               "VALUES ('acme', 'tenant:acme', 'CREDITS', 7, 7)")
    assert drift(db) == [("tenant:acme", "CREDITS", "allocated", 0, 7), ("tenant:acme", "CREDITS", "remaining", 0, 7)]


@pytest.mark.parametrize("statement", [
    "UPDATE cycles.ledger_entries SET allocated_delta = allocated_delta + 1",
    "UPDATE cycles.ledger_entries SET reason = 'rewritten'",
    "DELETE FROM cycles.ledger_entries",
    "TRUNCATE cycles.ledger_entries",
    "TRUNCATE cycles.ledger_entries CASCADE",
])
def test_ledger_is_append_only(db: psycopg.Connection, statement: str) -> None:
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    db.execute("SELECT cycles.create_budget('tenant:acme', 'TOKENS', 1000)")
    before = db.execute("SELECT * FROM cycles.ledger_entries ORDER BY entry_id").fetchall()
    with pytest.raises(psycopg.Error) as caught:
        db.execute(statement)
    assert caught.value.sqlstate == "CY0LA"
    assert db.execute("SELECT * FROM cycles.ledger_entries ORDER BY entry_id").fetchall() == before
