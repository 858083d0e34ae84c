"""cycles.create_budget / get / list / freeze / unfreeze / close / update_budget."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.sql.admin_calls import MAX, call, fails


def snapshot(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    """Everything an admin budget call could change."""
    return [
        *db.execute("SELECT * FROM cycles.budgets ORDER BY budget_id").fetchall(),
        *db.execute("SELECT entry_id FROM cycles.ledger_entries ORDER BY entry_id").fetchall(),
        *db.execute("SELECT seq FROM cycles.events ORDER BY seq").fetchall(),
    ]


def no_drift(db: psycopg.Connection) -> None:
    assert db.execute("SELECT * FROM cycles.verify_ledger()").fetchall() == []


@pytest.fixture
def acme(db: psycopg.Connection) -> psycopg.Connection:
    call(db, "SELECT cycles.create_tenant('acme', 'Acme')")
    return db


def test_create_returns_budget_ledger(acme: psycopg.Connection) -> None:
    budget = call(acme, """SELECT cycles.create_budget(p_scope => 'Tenant:ACME/Workspace:Prod', p_unit => 'TOKENS',
                                                      p_allocated => 1000, p_overdraft_limit => 50,
                                                      p_commit_overage_policy => 'REJECT')""")
    amount = lambda n: {"unit": "TOKENS", "amount": n}  # noqa: E731
    assert budget["scope"] == budget["scope_path"] == "tenant:acme/workspace:prod"
    assert budget["tenant_id"] == "acme" and budget["unit"] == "TOKENS" and budget["status"] == "ACTIVE"
    assert (budget["allocated"], budget["remaining"], budget["reserved"], budget["spent"], budget["debt"],
            budget["overdraft_limit"]) == (amount(1000), amount(1000), amount(0), amount(0), amount(0), amount(50))
    assert budget["is_over_limit"] is False and budget["commit_overage_policy"] == "REJECT"
    assert budget["ledger_id"].isdigit()
    ledger = acme.execute("SELECT operation, allocated_delta, spent_delta, reserved_delta, debt_delta, actor_type "
                          "FROM cycles.ledger_entries").fetchall()
    assert ledger == [("CREATE", 1000, 0, 0, 0, "admin")]
    event = call(acme, "SELECT data FROM cycles.events WHERE event_type = 'budget.created'")
    assert event["operation"] == "CREATE" and event["new_state"]["allocated"] == 1000
    assert "previous_state" not in event
    no_drift(acme)


def test_inherit_policy_is_omitted(acme: psycopg.Connection) -> None:
    budget = call(acme, "SELECT cycles.create_budget('tenant:acme', 'USD_MICROCENTS', 0)")
    assert "commit_overage_policy" not in budget
    assert budget["allocated"] == {"unit": "USD_MICROCENTS", "amount": 0}


def test_same_scope_other_unit_is_a_different_budget(acme: psycopg.Connection) -> None:
    call(acme, "SELECT cycles.create_budget('tenant:acme', 'TOKENS', 1)")
    call(acme, "SELECT cycles.create_budget('tenant:acme', 'CREDITS', 1)")
    before = snapshot(acme)
    fails(acme, "DUPLICATE_RESOURCE", "SELECT cycles.create_budget('TENANT:acme', 'TOKENS', 5)")
    assert snapshot(acme) == before


@pytest.mark.parametrize(("scope", "unit", "allocated", "overdraft", "policy", "options", "code"), [
    ("tenant:acme", "EUROS", 10, 0, None, {}, "INVALID_REQUEST"),
    ("tenant:acme", None, 10, 0, None, {}, "INVALID_REQUEST"),
    ("workspace:prod", "TOKENS", 10, 0, None, {}, "INVALID_REQUEST"),
    ("tenant:acme/agent:a/workspace:w", "TOKENS", 10, 0, None, {}, "INVALID_REQUEST"),
    ("tenant:acme//workspace:w", "TOKENS", 10, 0, None, {}, "INVALID_REQUEST"),
    ("tenant:ac me", "TOKENS", 10, 0, None, {}, "INVALID_REQUEST"),
    ("", "TOKENS", 10, 0, None, {}, "INVALID_REQUEST"),
    ("tenant:acme", "TOKENS", -1, 0, None, {}, "INVALID_REQUEST"),
    ("tenant:acme", "TOKENS", None, 0, None, {}, "INVALID_REQUEST"),
    ("tenant:acme", "TOKENS", 10, -5, None, {}, "INVALID_REQUEST"),
    ("tenant:acme", "TOKENS", 10, 0, "MAYBE", {}, "INVALID_REQUEST"),
    ("tenant:acme", "TOKENS", 10, 0, None, {"rollover": "NONE"}, "INVALID_REQUEST"),
    ("tenant:acme", "TOKENS", 10, 0, None, {"metadata": "x"}, "INVALID_REQUEST"),
    ("tenant:ghost", "TOKENS", 10, 0, None, {}, "TENANT_NOT_FOUND"),
    ("tenant:ghost/workspace:w", "TOKENS", 10, 0, None, {}, "TENANT_NOT_FOUND"),
])
def test_create_rejects_bad_input_and_changes_nothing(
        acme: psycopg.Connection, scope: str, unit: str | None, allocated: int | None, overdraft: int,
        policy: str | None, options: dict[str, Any], code: str) -> None:
    before = snapshot(acme)
    fails(acme, code, "SELECT cycles.create_budget(%(s)s, %(u)s, %(a)s, %(o)s, %(p)s, %(x)s::jsonb)",
          s=scope, u=unit, a=allocated, o=overdraft, p=policy, x=json.dumps(options))
    assert snapshot(acme) == before


def test_create_needs_an_active_tenant(acme: psycopg.Connection) -> None:
    call(acme, "SELECT cycles.suspend_tenant('acme')")
    before = snapshot(acme)
    fails(acme, "TENANT_SUSPENDED", "SELECT cycles.create_budget('tenant:acme', 'TOKENS', 1)")
    assert snapshot(acme) == before
    call(acme, "SELECT cycles.close_tenant('acme')")
    before = snapshot(acme)
    fails(acme, "TENANT_CLOSED", "SELECT cycles.create_budget('tenant:acme', 'TOKENS', 1)")
    assert snapshot(acme) == before
    assert call(acme, "SELECT count(*) FROM cycles.budgets") == 0


def test_get_budget(acme: psycopg.Connection) -> None:
    created = call(acme, "SELECT cycles.create_budget('tenant:acme', 'TOKENS', 7)")
    assert call(acme, "SELECT cycles.get_budget('TENANT:Acme', 'TOKENS')") == created
    fails(acme, "BUDGET_NOT_FOUND", "SELECT cycles.get_budget('tenant:acme', 'CREDITS')")
    fails(acme, "INVALID_REQUEST", "SELECT cycles.get_budget('acme', 'TOKENS')")
    fails(acme, "INVALID_REQUEST", "SELECT cycles.get_budget('tenant:acme', 'tokens')")


def test_list_budgets_filters_and_pages(acme: psycopg.Connection) -> None:
    call(acme, "SELECT cycles.create_tenant('other', 'Other')")
    for scope, unit in [("tenant:acme", "TOKENS"), ("tenant:acme/workspace:a", "TOKENS"),
                        ("tenant:acme/workspace:a/agent:x", "CREDITS"), ("tenant:acme/workspace:b", "TOKENS"),
                        ("tenant:other", "TOKENS")]:
        call(acme, "SELECT cycles.create_budget(%(s)s, %(u)s, 10)", s=scope, u=unit)
    call(acme, "SELECT cycles.freeze_budget('tenant:acme/workspace:b', 'TOKENS')")

    scopes = lambda page: [(b["scope"], b["unit"]) for b in page["ledgers"]]  # noqa: E731
    everything = call(acme, "SELECT cycles.list_budgets('acme')")
    assert scopes(everything) == [("tenant:acme", "TOKENS"), ("tenant:acme/workspace:a", "TOKENS"),
                                  ("tenant:acme/workspace:a/agent:x", "CREDITS"),
                                  ("tenant:acme/workspace:b", "TOKENS")]
    assert everything["has_more"] is False
    page = call(acme, "SELECT cycles.list_budgets('acme', p_limit => 3)")
    assert len(page["ledgers"]) == 3 and page["has_more"] is True
    rest = call(acme, "SELECT cycles.list_budgets('acme', p_limit => 3, p_cursor => %(c)s)", c=page["next_cursor"])
    assert scopes(rest) == [("tenant:acme/workspace:b", "TOKENS")]
    assert scopes(call(acme, "SELECT cycles.list_budgets('acme', p_scope_prefix => 'tenant:acme/workspace:a')")) == [
        ("tenant:acme/workspace:a", "TOKENS"), ("tenant:acme/workspace:a/agent:x", "CREDITS")]
    assert scopes(call(acme, "SELECT cycles.list_budgets('acme', p_unit => 'CREDITS')")) == [
        ("tenant:acme/workspace:a/agent:x", "CREDITS")]
    assert scopes(call(acme, "SELECT cycles.list_budgets('acme', p_status => 'FROZEN')")) == [
        ("tenant:acme/workspace:b", "TOKENS")]
    assert len(call(acme, "SELECT cycles.list_budgets()")["ledgers"]) == 5
    fails(acme, "TENANT_NOT_FOUND", "SELECT cycles.list_budgets('ghost')")
    fails(acme, "INVALID_REQUEST", "SELECT cycles.list_budgets('acme', p_unit => 'EUROS')")
    fails(acme, "INVALID_REQUEST", "SELECT cycles.list_budgets('acme', p_status => 'OPEN')")
    fails(acme, "INVALID_REQUEST", "SELECT cycles.list_budgets('acme', p_cursor => '999999')")


def test_freeze_and_unfreeze(acme: psycopg.Connection) -> None:
    call(acme, "SELECT cycles.create_budget('tenant:acme', 'TOKENS', 10)")
    frozen = call(acme, "SELECT cycles.freeze_budget('tenant:acme', 'TOKENS', 'audit')")
    assert frozen["status"] == "FROZEN"
    before = snapshot(acme)
    fails(acme, "INVALID_TRANSITION", "SELECT cycles.freeze_budget('tenant:acme', 'TOKENS')")
    fails(acme, "BUDGET_FROZEN", "SELECT cycles.fund_budget('tenant:acme', 'TOKENS', 'CREDIT', 5, 'k')")
    assert snapshot(acme) == before
    # Property updates stay allowed while frozen.
    updated = call(acme, "SELECT cycles.update_budget('tenant:acme', 'TOKENS', '{\"overdraft_limit\": 3}')")
    assert updated["overdraft_limit"]["amount"] == 3 and updated["status"] == "FROZEN"
    active = call(acme, "SELECT cycles.unfreeze_budget('tenant:acme', 'TOKENS')")
    assert active["status"] == "ACTIVE"
    fails(acme, "INVALID_TRANSITION", "SELECT cycles.unfreeze_budget('tenant:acme', 'TOKENS')")
    kinds = [r[0] for r in acme.execute("SELECT event_type FROM cycles.events WHERE category = 'budget' ORDER BY seq")]
    assert kinds == ["budget.created", "budget.frozen", "budget.updated", "budget.unfrozen"]
    frozen_event = call(acme, "SELECT data FROM cycles.events WHERE event_type = 'budget.frozen'")
    assert frozen_event["operation"] == "STATUS_CHANGE" and frozen_event["reason"] == "audit"
    assert (frozen_event["previous_state"]["status"], frozen_event["new_state"]["status"]) == ("ACTIVE", "FROZEN")
    # Status changes touch no counter, so they write no ledger row.
    assert call(acme, "SELECT count(*) FROM cycles.ledger_entries") == 1
    fails(acme, "BUDGET_NOT_FOUND", "SELECT cycles.freeze_budget('tenant:acme', 'CREDITS')")
    no_drift(acme)


def test_close_budget(acme: psycopg.Connection) -> None:
    call(acme, "SELECT cycles.create_budget('tenant:acme', 'TOKENS', 10)")
    closed = call(acme, "SELECT cycles.close_budget('tenant:acme', 'TOKENS', 'retired')")
    assert closed["status"] == "CLOSED"
    assert acme.execute("SELECT operation, allocated_delta, reason FROM cycles.ledger_entries "
                        "ORDER BY entry_id DESC LIMIT 1").fetchone() == ("CLOSE", 0, "retired")
    assert call(acme, "SELECT closed_at IS NOT NULL FROM cycles.budgets")
    before = snapshot(acme)
    fails(acme, "INVALID_TRANSITION", "SELECT cycles.close_budget('tenant:acme', 'TOKENS')")
    fails(acme, "INVALID_TRANSITION", "SELECT cycles.freeze_budget('tenant:acme', 'TOKENS')")
    fails(acme, "INVALID_TRANSITION", "SELECT cycles.unfreeze_budget('tenant:acme', 'TOKENS')")
    fails(acme, "BUDGET_CLOSED", "SELECT cycles.fund_budget('tenant:acme', 'TOKENS', 'CREDIT', 5, 'k')")
    fails(acme, "BUDGET_CLOSED", "SELECT cycles.update_budget('tenant:acme', 'TOKENS', '{\"overdraft_limit\": 3}')")
    assert snapshot(acme) == before
    no_drift(acme)


def test_close_budget_refuses_while_reserved(acme: psycopg.Connection) -> None:
    budget_id = call(acme, "SELECT (cycles.create_budget('tenant:acme', 'TOKENS', 10)) ->> 'ledger_id'")
    acme.execute("UPDATE cycles.budgets SET reserved = 4, remaining = 6")
    acme.execute("SELECT cycles._append_ledger(p_budget_id => %(b)s, p_tenant_id => 'acme', p_scope => 'tenant:acme',"
                 " p_unit => 'TOKENS', p_operation => 'RESERVE', p_actor => '{}', p_reserved_delta => 4)",
                 {"b": int(budget_id)})
    before = snapshot(acme)
    fails(acme, "INVALID_TRANSITION", "SELECT cycles.close_budget('tenant:acme', 'TOKENS')")
    assert snapshot(acme) == before


def test_update_budget(acme: psycopg.Connection) -> None:
    call(acme, "SELECT cycles.create_budget('tenant:acme', 'TOKENS', 10, 0, 'REJECT')")
    updated = call(acme, """SELECT cycles.update_budget('tenant:acme', 'TOKENS',
        '{"overdraft_limit": 100, "commit_overage_policy": "ALLOW_WITH_OVERDRAFT", "metadata": {"team": "x"}}')""")
    assert updated["overdraft_limit"]["amount"] == 100
    assert updated["commit_overage_policy"] == "ALLOW_WITH_OVERDRAFT"
    assert call(acme, "SELECT metadata FROM cycles.budgets") == {"team": "x"}
    inherited = call(acme, "SELECT cycles.update_budget('tenant:acme', 'TOKENS', '{\"commit_overage_policy\": null}')")
    assert "commit_overage_policy" not in inherited and inherited["overdraft_limit"]["amount"] == 100
    event = call(acme, "SELECT data FROM cycles.events WHERE event_type = 'budget.updated' ORDER BY seq LIMIT 1")
    assert event["operation"] == "UPDATE"
    # EventDataBudgetLifecycle: the change shows in the states (no changed_fields).
    assert set(event) == {"ledger_id", "scope", "unit", "operation", "previous_state", "new_state"}
    before = snapshot(acme)
    assert call(acme, "SELECT cycles.update_budget('tenant:acme', 'TOKENS', '{}')") == inherited
    for patch in ['{"overdraft_limit": -1}', '{"overdraft_limit": "5"}', '{"overdraft_limit": null}',
                  '{"commit_overage_policy": "NEVER"}', '{"metadata": 3}', '{"allocated": 5}', '[]']:
        fails(acme, "INVALID_REQUEST", "SELECT cycles.update_budget('tenant:acme', 'TOKENS', %(p)s::jsonb)", p=patch)
    assert snapshot(acme) == before


def test_lowering_overdraft_limit_below_debt_raises_over_limit(acme: psycopg.Connection) -> None:
    budget_id = int(call(acme, "SELECT (cycles.create_budget('tenant:acme', 'TOKENS', 10, 100)) ->> 'ledger_id'"))
    # Debt as an overdraft commit leaves it: spent 10 + 30 owed.
    acme.execute("UPDATE cycles.budgets SET spent = 10, debt = 30, remaining = -30")
    acme.execute("SELECT cycles._append_ledger(p_budget_id => %(b)s, p_tenant_id => 'acme', p_scope => 'tenant:acme',"
                 " p_unit => 'TOKENS', p_operation => 'COMMIT', p_actor => '{}', p_spent_delta => 10,"
                 " p_debt_delta => 30)", {"b": budget_id})
    over = call(acme, "SELECT cycles.update_budget('tenant:acme', 'TOKENS', '{\"overdraft_limit\": 20}')")
    assert over["is_over_limit"] is True
    back = call(acme, "SELECT cycles.update_budget('tenant:acme', 'TOKENS', '{\"overdraft_limit\": 30}')")
    assert back["is_over_limit"] is False
    kinds = [r[0] for r in acme.execute("SELECT event_type FROM cycles.events WHERE category = 'budget' ORDER BY seq")]
    assert kinds == ["budget.created", "budget.updated", "budget.over_limit_entered",
                     "budget.updated", "budget.over_limit_exited"]
    no_drift(acme)


def test_huge_amounts_are_exact(acme: psycopg.Connection) -> None:
    budget = call(acme, "SELECT cycles.create_budget('tenant:acme', 'USD_MICROCENTS', %(a)s, %(a)s)", a=MAX)
    assert budget["allocated"]["amount"] == MAX and budget["overdraft_limit"]["amount"] == MAX
    no_drift(acme)
