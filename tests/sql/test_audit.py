"""The audit log in SQL: append-only, one row per successful admin call (psql
callers as admin), failures recorded with their sentinel tenant, listing
filters and cursor."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.admin_calls import call, fails

LIST = "SELECT cycles.list_audit_logs(p_filter => %(filter)s, p_limit => %(limit)s, p_cursor => %(cursor)s)"


def listed(db: psycopg.Connection, limit: int | None = None, cursor: str | None = None,
           **filter_: Any) -> dict[str, Any]:
    result: dict[str, Any] = call(db, LIST, filter=Jsonb(filter_), limit=limit, cursor=cursor)
    return result


def audit_count(db: psycopg.Connection) -> int:
    count: int = call(db, "SELECT count(*) FROM cycles.audit_logs")
    return count


@pytest.fixture
def acme(db: psycopg.Connection) -> psycopg.Connection:
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    db.execute("SELECT cycles.create_budget('tenant:acme', 'TOKENS', 100)")
    return db


def test_rows_cannot_be_changed(acme: psycopg.Connection) -> None:
    assert audit_count(acme) == 2
    for statement in ("UPDATE cycles.audit_logs SET status = 500", "DELETE FROM cycles.audit_logs",
                      "TRUNCATE cycles.audit_logs"):
        with pytest.raises(psycopg.Error) as caught:
            acme.execute(statement)
        assert caught.value.sqlstate == "CY0LA"
    assert audit_count(acme) == 2


def test_one_row_per_successful_call_as_admin_from_psql(acme: psycopg.Connection) -> None:
    before = audit_count(acme)
    acme.execute("SELECT cycles.get_tenant('acme')")
    acme.execute("SELECT cycles.fund_budget('tenant:acme', 'TOKENS', 'CREDIT', 5, 'k1')")
    acme.execute("SELECT cycles.fund_budget('tenant:acme', 'TOKENS', 'CREDIT', 5, 'k1')")
    acme.execute("SELECT cycles.list_budgets('acme')")
    rows = acme.execute("SELECT operation, tenant_id, actor_type, status, metadata ->> 'db_user'"
                        " FROM cycles.audit_logs ORDER BY seq OFFSET %s", (before,)).fetchall()
    assert [row[:4] for row in rows] == [
        ("getTenant", "acme", "admin", 200), ("fundBudget", "acme", "admin", 200),
        ("fundBudget", "acme", "admin", 200), ("listBudgets", "acme", "admin", 200)]
    assert all(row[4] for row in rows)


def test_a_failed_call_leaves_no_row_of_its_own(acme: psycopg.Connection) -> None:
    before = audit_count(acme)
    fails(acme, "BUDGET_NOT_FOUND", "SELECT cycles.get_budget('tenant:acme', 'CREDITS')")
    assert audit_count(acme) == before


def test_record_audit_failure_picks_the_tenant(acme: psycopg.Connection) -> None:
    secret = call(acme, "SELECT cycles.create_api_key('acme', 'k') ->> 'key_secret'")
    key_id = call(acme, "SELECT key_id FROM cycles.api_keys")
    cases = [
        ({"api_key": secret, "request_id": "r1"}, 403, "INSUFFICIENT_PERMISSIONS", None, ("acme", key_id)),
        ({"api_key": secret, "request_id": "r2"}, 401, "UNAUTHORIZED", None, ("__unauth__", key_id)),
        ({"api_key": "cyc_live_nope", "request_id": "r3"}, 404, "NOT_FOUND", None, ("__unauth__", None)),
        ({"request_id": "r4"}, 404, "TENANT_NOT_FOUND", "ghost-tenant", ("ghost-tenant", None)),
        ({"request_id": "r5"}, 400, "INVALID_REQUEST", "Not A Tenant", ("__admin__", None)),
    ]
    for ctx, status, code, tenant, expected in cases:
        acme.execute("SELECT cycles.record_audit_failure(%s, 'getTenant', %s, %s, 'it\nfailed', 'tenant', 'x', %s)",
                     (Jsonb(ctx), status, code, tenant))
        row = acme.execute("SELECT tenant_id, key_id, status, error_code, metadata FROM cycles.audit_logs"
                           " WHERE request_id = %s", (ctx["request_id"],)).fetchone()
        assert row is not None and row[:2] == expected and row[2:4] == (status, code)
        assert row[4]["error_message"] == "it failed"
    secrets = call(acme, "SELECT count(*) FROM cycles.audit_logs WHERE audit_logs::text LIKE %(s)s", s=f"%{secret}%")
    assert secrets == 0


def test_list_filters_and_cursor(acme: psycopg.Connection) -> None:
    acme.execute("SELECT cycles.record_audit_failure('{\"request_id\": \"rq\"}', 'getTenant', 404, 'NOT_FOUND')")
    acme.execute("SELECT cycles.record_audit_failure('{}', 'updateTenant', 409, 'TENANT_CLOSED', p_tenant_id => 'acme')")
    everything = listed(acme, limit=100)["logs"]
    assert [log["operation"] for log in everything][:4] == ["updateTenant", "getTenant", "createBudget", "createTenant"]
    assert {log["operation"] for log in listed(acme, operation="getTenant,createTenant")["logs"]} == {
        "getTenant", "createTenant"}
    assert [log["status"] for log in listed(acme, status_min=400)["logs"]] == [409, 404]
    assert [log["operation"] for log in listed(acme, error_code=["TENANT_CLOSED"])["logs"]] == ["updateTenant"]
    assert [log["operation"] for log in listed(acme, error_code_exclude="TENANT_CLOSED", status_min=400)["logs"]] == [
        "getTenant"]
    assert [log["operation"] for log in listed(acme, request_id="rq")["logs"]] == ["getTenant"]
    assert {log["tenant_id"] for log in listed(acme, tenant_id="acme")["logs"]} == {"acme"}
    assert listed(acme, resource_type="budget")["logs"][0]["operation"] == "createBudget"
    assert listed(acme, search="BUDGET")["logs"][0]["operation"] == "createBudget"
    # Listing audits itself: page over the other operations only.
    ops = "getTenant,updateTenant,createBudget,createTenant"
    page = listed(acme, limit=2, operation=ops)
    rest = listed(acme, limit=100, cursor=page["next_cursor"], operation=ops)
    assert page["has_more"] and not rest["has_more"]
    assert [log["log_id"] for log in page["logs"] + rest["logs"]] == [
        log["log_id"] for log in listed(acme, limit=100, operation=ops)["logs"]]
    before = audit_count(acme)
    for bad in ({"status": 200, "status_min": 100}, {"status_min": 500, "status_max": 400}, {"status": 99},
                {"operation": ",".join(str(i) for i in range(26))}, {"from": "yesterday"}, {"to": "2026-13-45T00:00:00Z"}, {"colour": "red"},
                {"search": "s" * 129}):
        fails(acme, "INVALID_REQUEST", LIST, filter=Jsonb(bad), limit=None, cursor=None)
    fails(acme, "INVALID_REQUEST", LIST, filter=Jsonb({}), limit=None, cursor="audit_nope")
    assert audit_count(acme) == before


@pytest.mark.parametrize("statement", [
    "SELECT * FROM cycles.audit_logs",
    "INSERT INTO cycles.audit_logs (log_id, tenant_id, actor_type, operation, status) "
    "VALUES ('audit_x', '__admin__', 'admin', 'forged', 200)",
    "SELECT cycles._audit('{}', 'forged', NULL, NULL)",
])
def test_the_app_role_reaches_the_log_only_through_functions(db: psycopg.Connection, statement: str) -> None:
    db.execute("SET ROLE cycles_app")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db.execute(statement)
        assert call(db, "SELECT cycles.record_audit_failure('{}', 'getTenant', 404, 'NOT_FOUND')").startswith(
            "audit_")
    finally:
        db.execute("RESET ROLE")
