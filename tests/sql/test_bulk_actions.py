"""cycles.bulk_tenant_action and cycles.bulk_budget_action: per-row outcomes,
the count and size gates (no writes when they refuse), the 15-minute
idempotency window, correlation ids and the single audit row."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.admin_calls import call, fails

TENANT_BULK = """SELECT cycles.bulk_tenant_action(p_filter => %(filter)s, p_action => %(action)s,
                 p_idempotency_key => %(key)s, p_expected_count => %(expected)s, p_ctx => %(ctx)s)"""
BUDGET_BULK = """SELECT cycles.bulk_budget_action(p_filter => %(filter)s, p_action => %(action)s,
                 p_idempotency_key => %(key)s, p_amount => %(amount)s, p_unit => %(unit)s, p_spent => %(spent)s,
                 p_expected_count => %(expected)s, p_ctx => %(ctx)s)"""
CTX = Jsonb({"request_id": "req_bulk", "trace_id": "ab" * 16})


def tenant_bulk(db: psycopg.Connection, filter_: dict[str, Any], action: str, key: str = "k1",
                expected: int | None = None) -> Any:
    return call(db, TENANT_BULK, filter=Jsonb(filter_), action=action, key=key, expected=expected, ctx=CTX)


def budget_bulk(db: psycopg.Connection, filter_: dict[str, Any], action: str, amount: int | None, key: str = "b1",
                unit: str | None = None, spent: int | None = None, expected: int | None = None) -> Any:
    return call(db, BUDGET_BULK, filter=Jsonb(filter_), action=action, key=key, amount=amount, unit=unit,
                spent=spent, expected=expected, ctx=CTX)


def state(db: psycopg.Connection) -> list[Any]:
    return [*db.execute("SELECT * FROM cycles.tenants ORDER BY tenant_id").fetchall(),
            *db.execute("SELECT * FROM cycles.budgets ORDER BY budget_id").fetchall(),
            db.execute("SELECT count(*) FROM cycles.events").fetchone(),
            db.execute("SELECT count(*) FROM cycles.bulk_action_records").fetchone()]


@pytest.fixture
def tenants(db: psycopg.Connection) -> psycopg.Connection:
    for tenant_id in ("acme-a", "acme-b", "acme-c", "other"):
        db.execute("SELECT cycles.create_tenant(%s, %s)", (tenant_id, tenant_id.upper()))
    db.execute("SELECT cycles.close_tenant('acme-c')")
    db.execute("SELECT cycles.suspend_tenant('acme-b')")
    return db


def test_tenant_suspend_outcomes(tenants: psycopg.Connection) -> None:
    result = tenant_bulk(tenants, {"search": "ACME"}, "SUSPEND", expected=3)
    assert result == {
        "action": "SUSPEND", "total_matched": 3, "idempotency_key": "k1",
        "succeeded": [{"id": "acme-a"}],
        "skipped": [{"id": "acme-b", "reason": "ALREADY_IN_TARGET_STATE"}],
        "failed": [{"id": "acme-c", "error_code": "INVALID_TRANSITION", "message": result["failed"][0]["message"]}]}
    assert call(tenants, "SELECT status FROM cycles.tenants WHERE tenant_id = 'acme-a'") == "SUSPENDED"
    assert call(tenants, "SELECT correlation_id FROM cycles.events WHERE tenant_id = 'acme-a'"
                         " AND event_type = 'tenant.suspended'") == "tenant_bulk_action:suspend:req_bulk"
    rows = tenants.execute("SELECT operation, status, tenant_id, metadata FROM cycles.audit_logs"
                           " WHERE request_id = 'req_bulk'").fetchall()
    assert len(rows) == 1 and rows[0][:3] == ("bulkActionTenants", 200, "__admin__")
    assert rows[0][3]["succeeded_ids"] == ["acme-a"]


def test_tenant_close_cascades_each_row(tenants: psycopg.Connection) -> None:
    tenants.execute("SELECT cycles.create_budget('tenant:acme-a', 'TOKENS', 10)")
    result = tenant_bulk(tenants, {"status": "SUSPENDED"}, "CLOSE")
    assert result["succeeded"] == [{"id": "acme-b"}]
    result = tenant_bulk(tenants, {"search": "acme-a"}, "CLOSE", key="k2")
    assert result["succeeded"] == [{"id": "acme-a"}]
    assert call(tenants, "SELECT status FROM cycles.budgets WHERE scope = 'tenant:acme-a'") == "CLOSED"
    correlations = dict(tenants.execute(
        "SELECT event_type, correlation_id FROM cycles.events WHERE tenant_id = 'acme-a'"
        " AND event_type IN ('tenant.closed', 'budget.closed_via_tenant_cascade')").fetchall())
    assert correlations == {"tenant.closed": "tenant_bulk_action:close:req_bulk",
                            "budget.closed_via_tenant_cascade": "tenant_close_cascade:acme-a:req_bulk"}


def test_gates_refuse_without_writing(tenants: psycopg.Connection) -> None:
    before = state(tenants)
    fails(tenants, "COUNT_MISMATCH", TENANT_BULK, filter=Jsonb({"search": "acme"}), action="SUSPEND", key="k",
          expected=2, ctx=CTX)
    for filter_, action, key in (({}, "SUSPEND", "k"), ({"status": "GONE"}, "SUSPEND", "k"),
                                 ({"colour": "red"}, "SUSPEND", "k"), ({"search": "acme"}, "DELETE", "k"),
                                 ({"search": "acme"}, "SUSPEND", ""), ({"search": "x" * 129}, "SUSPEND", "k")):
        fails(tenants, "INVALID_REQUEST", TENANT_BULK, filter=Jsonb(filter_), action=action, key=key,
              expected=None, ctx=CTX)
    assert state(tenants) == before


def test_more_than_500_rows_is_limit_exceeded(db: psycopg.Connection) -> None:
    db.execute("INSERT INTO cycles.tenants (tenant_id, name) SELECT 'bulk-' || i, 'x' FROM generate_series(1, 501) i")
    before = state(db)
    with pytest.raises(psycopg.Error) as caught:
        tenant_bulk(db, {"status": "ACTIVE"}, "SUSPEND")
    assert caught.value.sqlstate == "CY4LE"
    assert json.loads(caught.value.diag.message_detail or "{}") == {
        "error": "LIMIT_EXCEEDED", "details": {"total_matched": 501, "limit": 500}}
    assert state(db) == before


def test_idempotent_replay_and_mismatch(tenants: psycopg.Connection) -> None:
    first = tenant_bulk(tenants, {"search": "acme"}, "REACTIVATE", key="same")
    events = call(tenants, "SELECT count(*) FROM cycles.events")
    assert tenant_bulk(tenants, {"search": "acme"}, "REACTIVATE", key="same") == first
    assert call(tenants, "SELECT count(*) FROM cycles.events") == events
    fails(tenants, "IDEMPOTENCY_MISMATCH", TENANT_BULK, filter=Jsonb({"search": "acme"}), action="SUSPEND",
          key="same", expected=None, ctx=CTX)
    assert call(tenants, "SELECT count(*) FROM cycles.audit_logs WHERE operation = 'bulkActionTenants'") == 2


@pytest.fixture
def budgets(db: psycopg.Connection) -> psycopg.Connection:
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    for scope, unit, allocated in (("tenant:acme", "TOKENS", 100), ("tenant:acme/workspace:a", "TOKENS", 5),
                                   ("tenant:acme/workspace:b", "TOKENS", 50), ("tenant:acme", "CREDITS", 10)):
        db.execute("SELECT cycles.create_budget(%s, %s, %s)", (scope, unit, allocated))
    db.execute("SELECT cycles.freeze_budget('tenant:acme/workspace:b', 'TOKENS')")
    return db


def ledger_id(db: psycopg.Connection, scope: str, unit: str = "TOKENS") -> str:
    return str(call(db, "SELECT budget_id FROM cycles.budgets WHERE scope = %(s)s AND unit = %(u)s", s=scope, u=unit))


def test_budget_debit_row_failures(budgets: psycopg.Connection) -> None:
    result = budget_bulk(budgets, {"tenant_id": "acme"}, "DEBIT", 10, unit="TOKENS", expected=4)
    assert result["succeeded"] == [{"id": ledger_id(budgets, "tenant:acme")}]
    failed = {row["id"]: row["error_code"] for row in result["failed"]}
    assert failed == {ledger_id(budgets, "tenant:acme", "CREDITS"): "INVALID_TRANSITION",
                      ledger_id(budgets, "tenant:acme/workspace:a"): "BUDGET_EXCEEDED",
                      ledger_id(budgets, "tenant:acme/workspace:b"): "BUDGET_FROZEN"}
    assert result["skipped"] == [] and result["total_matched"] == 4
    assert call(budgets, "SELECT allocated FROM cycles.budgets WHERE scope = 'tenant:acme' AND unit = 'TOKENS'") == 90
    assert call(budgets, "SELECT correlation_id FROM cycles.events WHERE event_type = 'budget.debited'") == (
        "budget_bulk_action:debit:req_bulk")
    assert call(budgets, "SELECT count(*) FROM cycles.ledger_entries WHERE operation = 'DEBIT'") == 1
    assert budgets.execute("SELECT * FROM cycles.verify_ledger()").fetchall() == []


def test_budget_reset_spent_by_prefix(budgets: psycopg.Connection) -> None:
    result = budget_bulk(budgets, {"tenant_id": "acme", "scope_prefix": "tenant:acme/workspace:", "status": "ACTIVE"},
                         "RESET_SPENT", 500, spent=7)
    assert result["succeeded"] == [{"id": ledger_id(budgets, "tenant:acme/workspace:a")}]
    assert budgets.execute("SELECT allocated, spent, remaining FROM cycles.budgets"
                           " WHERE scope = 'tenant:acme/workspace:a'").fetchone() == (500, 7, 493)


def test_budget_gates(budgets: psycopg.Connection) -> None:
    before = state(budgets)
    fails(budgets, "COUNT_MISMATCH", BUDGET_BULK, filter=Jsonb({"tenant_id": "acme"}), action="CREDIT", key="k",
          amount=1, unit=None, spent=None, expected=3, ctx=CTX)
    fails(budgets, "TENANT_NOT_FOUND", BUDGET_BULK, filter=Jsonb({"tenant_id": "nobody"}), action="CREDIT", key="k",
          amount=1, unit=None, spent=None, expected=None, ctx=CTX)
    for filter_, action, amount in (({}, "CREDIT", 1), ({"tenant_id": "acme"}, "CREDIT", None),
                                    ({"tenant_id": "acme"}, "CREDIT", 0), ({"tenant_id": "acme"}, "BURN", 1),
                                    ({"tenant_id": "acme", "utilization_min": 0.9, "utilization_max": 0.1},
                                     "CREDIT", 1),
                                    ({"tenant_id": "acme", "has_debt": "yes"}, "CREDIT", 1)):
        fails(budgets, "INVALID_REQUEST", BUDGET_BULK, filter=Jsonb(filter_), action=action, key="k",
              amount=amount, unit=None, spent=None, expected=None, ctx=CTX)
    assert state(budgets) == before


def test_bulk_actions_are_for_the_admin_only(budgets: psycopg.Connection) -> None:
    secret = call(budgets, "SELECT cycles.create_api_key('acme', 'k', ARRAY['admin:write']) ->> 'key_secret'")
    fails(budgets, "INSUFFICIENT_PERMISSIONS", BUDGET_BULK, filter=Jsonb({"tenant_id": "acme"}), action="CREDIT",
          key="k", amount=1, unit=None, spent=None, expected=None, ctx=Jsonb({"api_key": secret}))
    fails(budgets, "INSUFFICIENT_PERMISSIONS", TENANT_BULK, filter=Jsonb({"search": "acme"}), action="CLOSE",
          key="k", expected=None, ctx=Jsonb({"api_key": secret}))
    assert call(budgets, "SELECT status FROM cycles.tenants WHERE tenant_id = 'acme'") == "ACTIVE"


def test_a_close_failing_midway_leaves_that_tenant_untouched(db: psycopg.Connection) -> None:
    """The cascade is one transaction per tenant: a failure in its last step
    (revoking keys) undoes the released reservations and closed budgets too."""
    for tenant_id in ("crash-a", "crash-b"):
        db.execute("SELECT cycles.create_tenant(%s, 'x')", (tenant_id,))
        db.execute("SELECT cycles.create_budget(%s, 'TOKENS', 100)", (f"tenant:{tenant_id}",))
        secret = call(db, "SELECT cycles.create_api_key(%(t)s, 'k') ->> 'key_secret'", t=tenant_id)
        db.execute("SELECT cycles.reserve(%s, %s)", (secret, Jsonb({
            "idempotency_key": "r1", "subject": {"tenant": tenant_id}, "action": {"kind": "llm", "name": "m"},
            "estimate": {"unit": "TOKENS", "amount": 10}})))
    db.execute("""
        CREATE FUNCTION public.fail_revoke() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'disk on fire' USING ERRCODE = 'XX000';
        END;
        $$;
        CREATE TRIGGER fail_revoke BEFORE UPDATE ON cycles.api_keys
            FOR EACH ROW WHEN (old.tenant_id = 'crash-a') EXECUTE FUNCTION public.fail_revoke();""")
    before = db.execute("SELECT status, reserved FROM cycles.budgets WHERE tenant_id = 'crash-a'").fetchall()
    result = tenant_bulk(db, {"search": "crash-"}, "CLOSE")
    assert result["succeeded"] == [{"id": "crash-b"}]
    assert result["failed"] == [{"id": "crash-a", "error_code": "INTERNAL_ERROR", "message": "internal error"}]
    assert call(db, "SELECT status FROM cycles.tenants WHERE tenant_id = 'crash-a'") == "ACTIVE"
    assert db.execute("SELECT status, reserved FROM cycles.budgets WHERE tenant_id = 'crash-a'").fetchall() == before
    assert call(db, "SELECT status FROM cycles.reservations WHERE tenant_id = 'crash-a'") == "ACTIVE"
    assert call(db, "SELECT count(*) FROM cycles.events WHERE tenant_id = 'crash-a' AND correlation_id IS NOT NULL"
                    " AND event_type <> 'api_key.created'") == 0
    assert call(db, "SELECT status FROM cycles.tenants WHERE tenant_id = 'crash-b'") == "CLOSED"
    with pytest.raises(psycopg.Error):
        db.execute("SELECT cycles.close_tenant('crash-a')")
    assert call(db, "SELECT status FROM cycles.reservations WHERE tenant_id = 'crash-a'") == "ACTIVE"
    assert db.execute("SELECT * FROM cycles.verify_ledger()").fetchall() == []
