"""cycles.create_tenant / get / list / suspend / reactivate / close, with the close cascade."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.sql.admin_calls import ISO, call, fails


def events(db: psycopg.Connection, tenant_id: str) -> list[tuple[str, dict[str, Any], str | None]]:
    return [(r[0], r[1], r[2]) for r in db.execute(
        "SELECT event_type, data, correlation_id FROM cycles.events WHERE tenant_id = %s ORDER BY seq",
        (tenant_id,))]


def counts(db: psycopg.Connection) -> tuple[int, ...]:
    row = db.execute("""
        SELECT (SELECT count(*) FROM cycles.tenants), (SELECT count(*) FROM cycles.events),
               (SELECT count(*) FROM cycles.budgets), (SELECT count(*) FROM cycles.api_keys),
               (SELECT count(*) FROM cycles.ledger_entries)""").fetchone()
    assert row is not None
    return tuple(row)


def test_create_returns_spec_tenant_with_defaults(db: psycopg.Connection) -> None:
    tenant = call(db, "SELECT cycles.create_tenant(p_tenant_id => 'acme-corp', p_name => 'Acme')")
    assert set(tenant) == {
        "tenant_id", "name", "status", "default_commit_overage_policy", "default_reservation_ttl_ms",
        "max_reservation_ttl_ms", "max_reservation_extensions", "metadata", "created_at", "updated_at"}
    assert tenant["tenant_id"] == "acme-corp" and tenant["name"] == "Acme" and tenant["status"] == "ACTIVE"
    assert tenant["default_commit_overage_policy"] == "ALLOW_IF_AVAILABLE"
    assert (tenant["default_reservation_ttl_ms"], tenant["max_reservation_ttl_ms"],
            tenant["max_reservation_extensions"]) == (60000, 3600000, 10)
    assert ISO.match(tenant["created_at"]) and ISO.match(tenant["updated_at"])
    assert events(db, "acme-corp") == [
        ("tenant.created", {"tenant_id": "acme-corp", "new_status": "ACTIVE", "changed_fields": []}, None)]


def test_create_with_options(db: psycopg.Connection) -> None:
    call(db, "SELECT cycles.create_tenant('parent-co', 'Parent')")
    tenant = call(db, """SELECT cycles.create_tenant('child-co', 'Child', %(o)s::jsonb)""", o=json.dumps({
        "parent_tenant_id": "parent-co", "default_commit_overage_policy": "REJECT",
        "default_reservation_ttl_ms": 5000, "max_reservation_ttl_ms": 86400000,
        "max_reservation_extensions": 0, "metadata": {"plan": "pro"}}))
    assert tenant["parent_tenant_id"] == "parent-co"
    assert tenant["default_commit_overage_policy"] == "REJECT"
    assert (tenant["default_reservation_ttl_ms"], tenant["max_reservation_ttl_ms"],
            tenant["max_reservation_extensions"]) == (5000, 86400000, 0)
    assert tenant["metadata"] == {"plan": "pro"}


def test_create_is_idempotent_on_same_name(db: psycopg.Connection) -> None:
    first = call(db, "SELECT cycles.create_tenant('acme', 'Acme')")
    again = call(db, "SELECT cycles.create_tenant('acme', 'Acme', '{\"default_reservation_ttl_ms\": 2000}')")
    assert again == first
    assert [e[0] for e in events(db, "acme")] == ["tenant.created"]


def test_create_same_id_other_name_is_duplicate(db: psycopg.Connection) -> None:
    call(db, "SELECT cycles.create_tenant('acme', 'Acme')")
    before = counts(db)
    fails(db, "DUPLICATE_RESOURCE", "SELECT cycles.create_tenant('acme', 'Other')")
    assert counts(db) == before


@pytest.mark.parametrize(("tenant_id", "name", "options", "code"), [
    ("ab", "Short id", {}, "INVALID_REQUEST"),
    ("Upper-Case", "Upper", {}, "INVALID_REQUEST"),
    ("under_score", "Underscore", {}, "INVALID_REQUEST"),
    ("x" * 65, "Too long", {}, "INVALID_REQUEST"),
    ("fine-id", "", {}, "INVALID_REQUEST"),
    ("fine-id", "n" * 257, {}, "INVALID_REQUEST"),
    ("fine-id", "Fine", {"colour": "red"}, "INVALID_REQUEST"),
    ("fine-id", "Fine", {"default_reservation_ttl_ms": 999}, "INVALID_REQUEST"),
    ("fine-id", "Fine", {"max_reservation_ttl_ms": 86400001}, "INVALID_REQUEST"),
    ("fine-id", "Fine", {"max_reservation_extensions": -1}, "INVALID_REQUEST"),
    ("fine-id", "Fine", {"max_reservation_extensions": 1.5}, "INVALID_REQUEST"),
    ("fine-id", "Fine", {"default_reservation_ttl_ms": "60000"}, "INVALID_REQUEST"),
    ("fine-id", "Fine", {"default_commit_overage_policy": "SOMETIMES"}, "INVALID_REQUEST"),
    ("fine-id", "Fine", {"metadata": {"n": 1}}, "INVALID_REQUEST"),
    ("fine-id", "Fine", {"metadata": {f"k{i}": "v" for i in range(33)}}, "INVALID_REQUEST"),
    ("fine-id", "Fine", {"parent_tenant_id": "no-such-parent"}, "TENANT_NOT_FOUND"),
    ("fine-id", "Fine", {"parent_tenant_id": "fine-id"}, "TENANT_NOT_FOUND"),
])
def test_create_rejects_bad_input_and_changes_nothing(
        db: psycopg.Connection, tenant_id: str, name: str, options: dict[str, Any], code: str) -> None:
    before = counts(db)
    fails(db, code, "SELECT cycles.create_tenant(%(t)s, %(n)s, %(o)s::jsonb)",
          t=tenant_id, n=name, o=json.dumps(options))
    assert counts(db) == before


def test_get_tenant(db: psycopg.Connection) -> None:
    created = call(db, "SELECT cycles.create_tenant('acme', 'Acme')")
    assert call(db, "SELECT cycles.get_tenant('acme')") == created
    fails(db, "TENANT_NOT_FOUND", "SELECT cycles.get_tenant('nobody')")


def test_list_tenants_filters_and_pages(db: psycopg.Connection) -> None:
    for i in range(5):
        call(db, "SELECT cycles.create_tenant(%(t)s, %(n)s)", t=f"tenant-{i}", n=f"Tenant {i}")
    call(db, "SELECT cycles.suspend_tenant('tenant-3')")

    page = call(db, "SELECT cycles.list_tenants(p_limit => 2)")
    assert [t["tenant_id"] for t in page["tenants"]] == ["tenant-4", "tenant-3"]
    assert page["has_more"] is True and page["next_cursor"] == "tenant-3"
    seen = [t["tenant_id"] for t in page["tenants"]]
    while page["has_more"]:
        page = call(db, "SELECT cycles.list_tenants(p_limit => 2, p_cursor => %(c)s)", c=page["next_cursor"])
        seen += [t["tenant_id"] for t in page["tenants"]]
    assert seen == [f"tenant-{i}" for i in (4, 3, 2, 1, 0)]
    assert "next_cursor" not in page

    suspended = call(db, "SELECT cycles.list_tenants(p_status => 'SUSPENDED')")
    assert [t["tenant_id"] for t in suspended["tenants"]] == ["tenant-3"] and suspended["has_more"] is False
    found = call(db, "SELECT cycles.list_tenants(p_search => 'TENANT 1')")
    assert [t["tenant_id"] for t in found["tenants"]] == ["tenant-1"]
    fails(db, "INVALID_REQUEST", "SELECT cycles.list_tenants(p_status => 'GONE')")
    fails(db, "INVALID_REQUEST", "SELECT cycles.list_tenants(p_limit => 101)")
    fails(db, "INVALID_REQUEST", "SELECT cycles.list_tenants(p_limit => 0)")
    fails(db, "INVALID_REQUEST", "SELECT cycles.list_tenants(p_cursor => 'nobody')")
    fails(db, "INVALID_REQUEST", "SELECT cycles.list_tenants(p_search => %(s)s)", s="x" * 129)


def test_suspend_and_reactivate(db: psycopg.Connection) -> None:
    call(db, "SELECT cycles.create_tenant('acme', 'Acme')")
    suspended = call(db, "SELECT cycles.suspend_tenant('acme')")
    assert suspended["status"] == "SUSPENDED" and ISO.match(suspended["suspended_at"])
    assert call(db, "SELECT cycles.suspend_tenant('acme')") == suspended  # no-op
    active = call(db, "SELECT cycles.reactivate_tenant('acme')")
    assert active["status"] == "ACTIVE" and "suspended_at" not in active
    assert call(db, "SELECT cycles.reactivate_tenant('acme')") == active  # no-op
    assert [(e[0], e[1].get("previous_status"), e[1]["new_status"]) for e in events(db, "acme")] == [
        ("tenant.created", None, "ACTIVE"),
        ("tenant.suspended", "ACTIVE", "SUSPENDED"),
        ("tenant.reactivated", "SUSPENDED", "ACTIVE")]
    fails(db, "TENANT_NOT_FOUND", "SELECT cycles.suspend_tenant('nobody')")
    fails(db, "TENANT_NOT_FOUND", "SELECT cycles.reactivate_tenant('nobody')")


def test_closed_is_terminal(db: psycopg.Connection) -> None:
    call(db, "SELECT cycles.create_tenant('acme', 'Acme')")
    closed = call(db, "SELECT cycles.close_tenant('acme')")
    assert closed["status"] == "CLOSED" and ISO.match(closed["closed_at"])
    before = counts(db)
    fails(db, "INVALID_TRANSITION", "SELECT cycles.suspend_tenant('acme')")
    fails(db, "INVALID_TRANSITION", "SELECT cycles.reactivate_tenant('acme')")
    assert counts(db) == before
    again = call(db, "SELECT cycles.close_tenant('acme')")
    assert again == closed
    assert counts(db) == before  # a repeated close with nothing left open changes nothing
    fails(db, "TENANT_NOT_FOUND", "SELECT cycles.close_tenant('nobody')")


def _reserve(db: psycopg.Connection, reservation_id: str, tenant_id: str, scopes: list[str],
             unit: str, estimate: int) -> None:
    """An ACTIVE reservation as the runtime leaves it: the row plus reserved
    on each budgeted scope with its RESERVE ledger rows (written directly
    here, so these tests depend on the admin plane only)."""
    db.execute("""
        INSERT INTO cycles.reservations (
            reservation_id, tenant_id, idempotency_key, subject, action, unit, estimate, scope_path,
            affected_scopes, budgeted_scopes, overage_policy, created_at_ms, expires_at_ms, grace_period_ms,
            ttl_ms, max_extensions)
        VALUES (%(r)s, %(t)s, %(r)s, '{}', '{}', %(u)s, %(e)s, %(p)s, %(s)s, %(s)s, 'REJECT',
                cycles._now_ms(), cycles._now_ms() + 60000, 0, 60000, 10)""",
        {"r": reservation_id, "t": tenant_id, "u": unit, "e": estimate, "p": scopes[-1], "s": scopes})
    for scope in scopes:
        budget_id = call(db, """
            UPDATE cycles.budgets SET reserved = reserved + %(e)s, remaining = remaining - %(e)s
            WHERE scope = %(s)s AND unit = %(u)s RETURNING budget_id""", e=estimate, s=scope, u=unit)
        db.execute("""SELECT cycles._append_ledger(p_budget_id => %(b)s, p_tenant_id => %(t)s, p_scope => %(s)s,
                          p_unit => %(u)s, p_operation => 'RESERVE', p_actor => '{"type": "api_key"}',
                          p_reserved_delta => %(e)s, p_reservation_id => %(r)s)""",
                   {"b": budget_id, "t": tenant_id, "s": scope, "u": unit, "e": estimate, "r": reservation_id})


def test_close_cascades_atomically(db: psycopg.Connection) -> None:
    call(db, "SELECT cycles.create_tenant('acme', 'Acme')")
    call(db, "SELECT cycles.create_tenant('other', 'Other')")
    call(db, "SELECT cycles.create_budget('tenant:acme', 'TOKENS', 1000)")
    call(db, "SELECT cycles.create_budget('tenant:acme/workspace:w1', 'TOKENS', 500)")
    call(db, "SELECT cycles.create_budget('tenant:acme/workspace:w2', 'CREDITS', 50)")
    call(db, "SELECT cycles.freeze_budget('tenant:acme/workspace:w2', 'CREDITS')")
    call(db, "SELECT cycles.create_budget('tenant:other', 'TOKENS', 70)")
    key = call(db, "SELECT cycles.create_api_key('acme', 'agent')")
    other_key = call(db, "SELECT cycles.create_api_key('other', 'agent')")
    _reserve(db, "res_a", "acme", ["tenant:acme", "tenant:acme/workspace:w1"], "TOKENS", 100)
    _reserve(db, "res_b", "acme", ["tenant:acme"], "TOKENS", 30)
    _reserve(db, "res_o", "other", ["tenant:other"], "TOKENS", 7)

    closed = call(db, "SELECT cycles.close_tenant('acme', p_ctx => '{\"request_id\": \"req-9\"}')")
    assert closed["status"] == "CLOSED"

    budgets = {(r[0], r[1]): r[2:] for r in db.execute(
        "SELECT scope, unit, status, reserved, remaining, allocated, closed_at IS NOT NULL FROM cycles.budgets")}
    assert budgets[("tenant:acme", "TOKENS")] == ("CLOSED", 0, 1000, 1000, True)
    assert budgets[("tenant:acme/workspace:w1", "TOKENS")] == ("CLOSED", 0, 500, 500, True)
    assert budgets[("tenant:acme/workspace:w2", "CREDITS")] == ("CLOSED", 0, 50, 50, True)
    assert budgets[("tenant:other", "TOKENS")] == ("ACTIVE", 7, 63, 70, False)

    reservations = dict(db.execute(
        "SELECT reservation_id, (status, release_reason, released, finalized_at_ms IS NOT NULL)::text "
        "FROM cycles.reservations").fetchall())
    assert reservations == {
        "res_a": "(RELEASED,tenant_closed,100,t)", "res_b": "(RELEASED,tenant_closed,30,t)",
        "res_o": "(ACTIVE,,,f)"}

    keys = dict(db.execute("SELECT key_id, status || ':' || coalesce(revoked_reason, '') FROM cycles.api_keys"))
    assert keys == {key["key_id"]: "REVOKED:tenant_closed", other_key["key_id"]: "ACTIVE:"}

    ledger = db.execute("""
        SELECT scope, operation, reserved_delta, reservation_id FROM cycles.ledger_entries
        WHERE tenant_id = 'acme' AND operation IN ('RELEASE', 'CLOSE') ORDER BY entry_id""").fetchall()
    assert sorted(ledger, key=str) == sorted([
        ("tenant:acme", "RELEASE", -100, "res_a"), ("tenant:acme/workspace:w1", "RELEASE", -100, "res_a"),
        ("tenant:acme", "RELEASE", -30, "res_b"),
        ("tenant:acme", "CLOSE", 0, None), ("tenant:acme/workspace:w1", "CLOSE", 0, None),
        ("tenant:acme/workspace:w2", "CLOSE", 0, None)], key=str)
    assert db.execute("SELECT * FROM cycles.verify_ledger()").fetchall() == []

    cascade = [e for e in events(db, "acme") if e[2] is not None]
    assert {e[2] for e in cascade} == {"tenant_close_cascade:acme:req-9"}
    kinds = [(e[0], e[1].get("scope") or e[1].get("key_id")) for e in cascade]
    assert sorted(kinds, key=str) == sorted([
        ("reservation.released_via_tenant_cascade", "tenant:acme"),
        ("reservation.released_via_tenant_cascade", "tenant:acme/workspace:w1"),
        ("budget.closed_via_tenant_cascade", "tenant:acme"),
        ("budget.closed_via_tenant_cascade", "tenant:acme/workspace:w1"),
        ("budget.closed_via_tenant_cascade", "tenant:acme/workspace:w2"),
        ("api_key.revoked_via_tenant_cascade", key["key_id"]),
        ("tenant.closed", None)], key=str)
    released = {e[1]["scope"]: e[1]["released_amount"] for e in cascade
                if e[0] == "reservation.released_via_tenant_cascade"}
    assert released == {"tenant:acme": 130, "tenant:acme/workspace:w1": 100}
    frozen_close = next(e[1] for e in cascade if e[0] == "budget.closed_via_tenant_cascade"
                        and e[1]["scope"] == "tenant:acme/workspace:w2")
    assert frozen_close["prior_status"] == "FROZEN" and frozen_close["new_status"] == "CLOSED"
    assert frozen_close["cascade_reason"] == "tenant_closed"
    assert cascade[-1][0] == "tenant.closed"  # the tenant flips last
    assert cascade[-1][1] == {"tenant_id": "acme", "previous_status": "ACTIVE", "new_status": "CLOSED",
                              "changed_fields": ["status"]}


def test_close_suspended_tenant_generates_correlation_id(db: psycopg.Connection) -> None:
    call(db, "SELECT cycles.create_tenant('acme', 'Acme')")
    call(db, "SELECT cycles.suspend_tenant('acme')")
    call(db, "SELECT cycles.close_tenant('acme')")
    closed = [e for e in events(db, "acme") if e[0] == "tenant.closed"]
    assert len(closed) == 1 and closed[0][1]["previous_status"] == "SUSPENDED"
    assert closed[0][2] is not None and closed[0][2].startswith("tenant_close_cascade:acme:")


def test_closed_tenant_refuses_child_mutations_but_allows_reads(db: psycopg.Connection) -> None:
    call(db, "SELECT cycles.create_tenant('acme', 'Acme')")
    call(db, "SELECT cycles.create_budget('tenant:acme', 'TOKENS', 10)")
    call(db, "SELECT cycles.close_tenant('acme')")
    before = counts(db)
    fails(db, "TENANT_CLOSED", "SELECT cycles.create_budget('tenant:acme/app:x', 'TOKENS', 10)")
    fails(db, "TENANT_CLOSED", "SELECT cycles.create_api_key('acme', 'late')")
    fails(db, "TENANT_CLOSED", "SELECT cycles.fund_budget('tenant:acme', 'TOKENS', 'CREDIT', 5, 'k1')")
    fails(db, "TENANT_CLOSED", "SELECT cycles.freeze_budget('tenant:acme', 'TOKENS')")
    fails(db, "TENANT_CLOSED", "SELECT cycles.update_budget('tenant:acme', 'TOKENS', '{\"overdraft_limit\": 1}')")
    assert counts(db) == before
    assert call(db, "SELECT cycles.get_budget('tenant:acme', 'TOKENS')")["status"] == "CLOSED"
    assert call(db, "SELECT cycles.get_tenant('acme')")["status"] == "CLOSED"
    assert len(call(db, "SELECT cycles.list_budgets('acme')")["ledgers"]) == 1


def test_actor_and_request_ids_recorded(db: psycopg.Connection) -> None:
    ctx = {"request_id": "req-1", "trace_id": "a" * 32, "actor_type": "admin", "source_ip": "10.0.0.1"}
    call(db, "SELECT cycles.create_tenant('acme', 'Acme', p_ctx => %(c)s::jsonb)", c=json.dumps(ctx))
    row = db.execute("SELECT actor, request_id, trace_id, source FROM cycles.events").fetchone()
    assert row == ({"type": "admin", "source_ip": "10.0.0.1"}, "req-1", "a" * 32, "cycles-admin")
