"""Reading the event outbox in SQL: cycles.list_events / get_event for the
admin and cycles.list_tenant_events for a tenant key; every Event in the
spec's shape, and every payload the system emits carrying only the fields
of its EventData* schema."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.admin_calls import ISO, fails
from tests.sql.runtime_fixtures import age_reservation, call, create_key, reserve_request

EVENT_KEYS = {"event_id", "event_type", "category", "timestamp", "tenant_id", "scope", "actor", "source", "data",
              "correlation_id", "request_id", "trace_id", "metadata"}
EVENT_REQUIRED = {"event_id", "event_type", "category", "timestamp", "tenant_id", "source"}
ACTOR_KEYS = {"type", "key_id", "source_ip"}

# The properties of each EventData* schema, by event type.
BUDGET_LIFECYCLE = {"ledger_id", "scope", "unit", "operation", "previous_state", "new_state",
                    "spent_override_provided", "reason"}
STATE = {"allocated", "remaining", "debt", "spent", "reserved", "status"}
THRESHOLD = {"scope", "unit", "threshold", "utilization", "allocated", "remaining", "spent", "reserved", "direction"}
OVER_LIMIT = {"scope", "unit", "debt", "overdraft_limit", "is_over_limit", "debt_utilization"}
DEBT = {"scope", "unit", "reservation_id", "debt_incurred", "total_debt", "overdraft_limit", "overage_policy"}
DENIED = {"scope", "unit", "reason_code", "requested_amount", "remaining", "action", "subject", "policy_id",
          "deny_detail"}
EXPIRED = {"reservation_id", "scope", "unit", "estimated_amount", "created_at", "expired_at", "ttl_ms",
           "extensions_used"}
OVERAGE = {"reservation_id", "scope", "unit", "estimated_amount", "actual_amount", "overage", "overage_policy",
           "debt_incurred"}
TENANT = {"tenant_id", "previous_status", "new_status", "changed_fields"}
API_KEY = {"key_id", "key_name", "previous_status", "new_status", "permissions", "failure_reason", "source_ip"}
POLICY = {"policy_id", "name", "scope_pattern", "changed_fields"}
CASCADE = {"ledger_id", "subscription_id", "key_id", "name", "scope", "unit", "prior_status", "new_status",
           "released_amount", "cascade_reason"}
PAYLOADS: dict[str, set[str]] = {
    **{f"budget.{t}": BUDGET_LIFECYCLE for t in (
        "created", "updated", "funded", "debited", "reset", "reset_spent", "debt_repaid", "frozen", "unfrozen",
        "closed")},
    "budget.threshold_crossed": THRESHOLD, "budget.exhausted": THRESHOLD,
    "budget.over_limit_entered": OVER_LIMIT, "budget.over_limit_exited": OVER_LIMIT,
    "budget.debt_incurred": DEBT, "reservation.denied": DENIED, "reservation.expired": EXPIRED,
    "reservation.commit_overage": OVERAGE,
    **{f"tenant.{t}": TENANT for t in ("created", "updated", "suspended", "reactivated", "closed",
                                        "settings_changed")},
    **{f"api_key.{t}": API_KEY for t in ("created", "revoked", "permissions_changed")},
    "policy.created": POLICY, "policy.updated": POLICY,
    "budget.closed_via_tenant_cascade": CASCADE, "reservation.released_via_tenant_cascade": CASCADE,
    "api_key.revoked_via_tenant_cascade": CASCADE,
}


def q(db: psycopg.Connection, sql: str, *params: Any) -> Any:
    row = db.execute(sql, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def every_kind_of_event(db: psycopg.Connection) -> None:
    """Drives the admin and runtime functions through every event they emit."""
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    db.execute("SELECT cycles.create_tenant('beta', 'Beta')")
    key_id = q(db, "SELECT cycles.create_api_key('acme', 'agent') ->> 'key_id'")
    db.execute("SELECT cycles.update_api_key(%s, '{\"permissions\": [\"reservations:create\"]}')", (key_id,))
    db.execute("SELECT cycles.revoke_api_key(%s, 'rotated')", (key_id,))
    key = create_key(db, "acme")
    db.execute("SELECT cycles.create_budget('tenant:acme', 'USD_MICROCENTS', 1000, 500, 'ALLOW_WITH_OVERDRAFT')")
    db.execute("SELECT cycles.create_budget('tenant:beta', 'USD_MICROCENTS', 1000)")
    for operation, amount, spent in (("CREDIT", 100, None), ("DEBIT", 100, None), ("RESET", 1000, None),
                                     ("RESET_SPENT", 1000, 0)):
        db.execute("SELECT cycles.fund_budget('tenant:acme', 'USD_MICROCENTS', %s, %s, %s, %s)",
                   (operation, amount, operation.lower(), spent))
    db.execute("SELECT cycles.freeze_budget('tenant:acme', 'USD_MICROCENTS')")
    db.execute("SELECT cycles.unfreeze_budget('tenant:acme', 'USD_MICROCENTS')")
    subject = {"tenant": "acme"}
    denied = call(db, "decide", key, reserve_request(10**6, subject=subject))
    assert denied["decision"] == "DENY"
    reserved = call(db, "reserve", key, reserve_request(900, subject=subject))
    call(db, "commit", key, reserved["reservation_id"],
         {"idempotency_key": "c1", "actual": {"unit": "USD_MICROCENTS", "amount": 1200}})
    # Debt 200 above a lowered limit of 100: over limit, until repaid.
    db.execute("SELECT cycles.update_budget('tenant:acme', 'USD_MICROCENTS', '{\"overdraft_limit\": 100}')")
    db.execute("SELECT cycles.fund_budget('tenant:acme', 'USD_MICROCENTS', 'REPAY_DEBT', 1000, 'repay')")
    expiring = call(db, "reserve", key, reserve_request(10, subject=subject))
    age_reservation(db, expiring["reservation_id"], 10**6)
    assert q(db, "SELECT cycles.expire_due()") == 1
    call(db, "reserve", key, reserve_request(10, subject=subject))
    policy_id = q(db, "SELECT cycles.create_policy('acme', 'p', 'agent:*') ->> 'policy_id'")
    db.execute("SELECT cycles.update_policy(%s, '{\"priority\": 2}')", (policy_id,))
    db.execute("SELECT cycles.suspend_tenant('acme')")
    db.execute("SELECT cycles.reactivate_tenant('acme')")
    db.execute("SELECT cycles.update_tenant('acme', '{\"name\": \"Acme Two\"}')")
    db.execute("SELECT cycles.update_tenant('acme', '{\"default_reservation_ttl_ms\": 5000}')")
    db.execute("SELECT cycles.close_tenant('acme')")


def test_every_emitted_event_matches_the_spec(db: psycopg.Connection) -> None:
    every_kind_of_event(db)
    emitted: set[str] = set()
    cursor = None
    while True:
        page = q(db, "SELECT cycles.list_events(p_limit => 100, p_cursor => %s)", cursor)
        for event in page["events"]:
            assert set(event) <= EVENT_KEYS and set(event) >= EVENT_REQUIRED, event
            assert ISO.match(event["timestamp"]) and event["category"] == event["event_type"].split(".")[0]
            assert set(event.get("actor", {})) <= ACTOR_KEYS
            assert re.fullmatch(r"evt_[0-9a-f]{16}", event["event_id"])
            allowed = PAYLOADS.get(event["event_type"])
            assert allowed is not None, f"unexpected event type {event['event_type']}"
            assert set(event["data"]) <= allowed, (event["event_type"], set(event["data"]) - allowed)
            for state in ("previous_state", "new_state"):
                if state in event["data"]:
                    assert set(event["data"][state]) <= STATE
            emitted.add(event["event_type"])
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert emitted >= {
        "tenant.created", "api_key.created", "api_key.permissions_changed", "api_key.revoked", "budget.created",
        "budget.funded", "budget.debited", "budget.reset", "budget.reset_spent", "budget.updated", "budget.frozen",
        "budget.unfrozen", "reservation.denied", "reservation.commit_overage", "budget.debt_incurred",
        "budget.over_limit_entered", "budget.over_limit_exited", "budget.debt_repaid", "reservation.expired", "budget.threshold_crossed",
        "policy.created", "policy.updated", "tenant.suspended", "tenant.reactivated", "tenant.updated",
        "tenant.settings_changed", "tenant.closed", "budget.closed_via_tenant_cascade",
        "reservation.released_via_tenant_cascade", "api_key.revoked_via_tenant_cascade"}


def test_filters_and_get(db: psycopg.Connection) -> None:
    every_kind_of_event(db)
    all_events = q(db, "SELECT cycles.list_events(p_limit => 100)")["events"]
    timestamps = [e["timestamp"] for e in all_events]
    assert timestamps == sorted(timestamps, reverse=True)  # newest first
    by_type = q(db, "SELECT cycles.list_events(p_event_type => 'budget.funded')")["events"]
    assert [e["event_type"] for e in by_type] == ["budget.funded"]
    beta = q(db, "SELECT cycles.list_events(p_tenant_id => 'beta')")["events"]
    assert {e["tenant_id"] for e in beta} == {"beta"} and len(beta) == 2
    policy_events = q(db, "SELECT cycles.list_events(p_category => 'policy')")["events"]
    assert {e["event_type"] for e in policy_events} == {"policy.created", "policy.updated"}
    scoped = q(db, "SELECT cycles.list_events(p_scope => 'TENANT:BETA')")["events"]
    assert {e["scope"] for e in scoped} == {"tenant:beta"}
    cascade = q(db, "SELECT cycles.list_events(p_category => 'budget', p_event_type => "
                    "'budget.closed_via_tenant_cascade')")["events"]
    correlation = cascade[0]["correlation_id"]
    related = q(db, "SELECT cycles.list_events(p_correlation_id => %s)", correlation)["events"]
    assert len(related) >= 3 and {e["correlation_id"] for e in related} == {correlation}
    searched = q(db, "SELECT cycles.list_events(p_search => %s)", correlation[:20].upper())["events"]
    assert {e["event_id"] for e in related} <= {e["event_id"] for e in searched}
    oldest = q(db, "SELECT cycles.list_events(p_sort_dir => 'asc', p_limit => 1)")["events"][0]
    assert oldest["event_type"] == "tenant.created" and oldest["tenant_id"] == "acme"
    future = q(db, "SELECT cycles.list_events(p_from => now() + interval '1 day')")
    assert future == {"events": [], "has_more": False}
    past = q(db, "SELECT cycles.list_events(p_to => now() - interval '1 day')")["events"]
    assert past == []
    assert q(db, "SELECT cycles.get_event(%s)", all_events[3]["event_id"]) == all_events[3]
    fails(db, "NOT_FOUND", "SELECT cycles.get_event('evt_0000000000000000')")


def test_trace_and_request_filters(db: psycopg.Connection) -> None:
    db.execute("SELECT cycles.create_tenant('acme', 'Acme', p_ctx => %s)",
               (Jsonb({"request_id": "req-1", "trace_id": "a" * 32}),))
    db.execute("SELECT cycles.create_tenant('beta', 'Beta', p_ctx => %s)",
               (Jsonb({"request_id": "req-2", "trace_id": "b" * 32}),))
    traced = q(db, "SELECT cycles.list_events(p_trace_id => %s)", "a" * 32)["events"]
    assert [(e["tenant_id"], e["request_id"], e["trace_id"]) for e in traced] == [("acme", "req-1", "a" * 32)]
    assert [e["tenant_id"] for e in q(db, "SELECT cycles.list_events(p_request_id => 'req-2')")["events"]] == ["beta"]


@pytest.mark.parametrize("sort_by", ["timestamp", "event_type", "category", "scope", "tenant_id"])
@pytest.mark.parametrize("sort_dir", ["asc", "desc"])
def test_paging_visits_every_event_once_in_order(db: psycopg.Connection, sort_by: str, sort_dir: str) -> None:
    for i in range(7):
        db.execute("SELECT cycles.create_tenant(%s, 'T')", (f"t-{i:02d}",))
        db.execute("SELECT cycles.create_budget(%s, 'TOKENS', 5)", (f"tenant:t-{i:02d}",))
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = q(db, "SELECT cycles.list_events(p_sort_by => %s, p_sort_dir => %s, p_limit => 3, p_cursor => %s)",
                 sort_by, sort_dir, cursor)
        seen += page["events"]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert len(seen) == 14 and len({e["event_id"] for e in seen}) == 14
    keys = [e["timestamp"] if sort_by == "timestamp" else e.get(sort_by, "") for e in seen]
    assert keys == sorted(keys, reverse=sort_dir == "desc")


@pytest.mark.parametrize(("call_sql", "fragment"), [
    ("SELECT cycles.list_events(p_event_type => 'budget.melted')", "event_type"),
    ("SELECT cycles.list_events(p_category => 'galaxy')", "category"),
    ("SELECT cycles.list_events(p_sort_by => 'size')", "sort_by"),
    ("SELECT cycles.list_events(p_sort_dir => 'up')", "sort_dir"),
    ("SELECT cycles.list_events(p_limit => 0)", "limit"),
    ("SELECT cycles.list_events(p_limit => 101)", "limit"),
    ("SELECT cycles.list_events(p_search => repeat('x', 129))", "search"),
    ("SELECT cycles.list_events(p_from => now(), p_to => now() - interval '1 hour')", "from"),
    ("SELECT cycles.list_events(p_cursor => 'evt_nope')", "cursor"),
])
def test_bad_filters(db: psycopg.Connection, call_sql: str, fragment: str) -> None:
    assert fragment in fails(db, "INVALID_REQUEST", call_sql)


def test_custom_types_are_accepted_as_a_filter(db: psycopg.Connection) -> None:
    assert q(db, "SELECT cycles.list_events(p_event_type => 'custom.billing.sent')")["events"] == []


def test_tenant_keys_see_only_their_own_tenant_accessible_events(db: psycopg.Connection) -> None:
    every_kind_of_event(db)
    reader = create_key(db, "beta", ["events:read"])
    admin_reader = create_key(db, "beta", ["admin:read"])
    mine = q(db, "SELECT cycles.list_tenant_events(%s)", reader)["events"]
    assert {e["tenant_id"] for e in mine} == {"beta"}
    assert {e["event_type"] for e in mine} == {"tenant.created", "budget.created"}
    assert q(db, "SELECT cycles.list_tenant_events(%s)", admin_reader)["events"] == mine
    # Admin-only categories never show, even when asked for.
    db.execute("SELECT cycles.create_policy('beta', 'p', 'agent:*')")
    db.execute("SELECT cycles.create_api_key('beta', 'another')")
    assert q(db, "SELECT cycles.list_tenant_events(%s, p_category => 'policy')", reader)["events"] == []
    assert q(db, "SELECT cycles.list_tenant_events(%s, p_event_type => 'api_key.created')", reader)["events"] == []
    assert len(q(db, "SELECT cycles.list_tenant_events(%s)", reader)["events"]) == 2
    # Another tenant's event id is not a usable cursor.
    acme_event = q(db, "SELECT event_id FROM cycles.events WHERE tenant_id = 'acme' LIMIT 1")
    fails(db, "INVALID_REQUEST", "SELECT cycles.list_tenant_events(%(k)s, p_cursor => %(c)s)", k=reader, c=acme_event)


@pytest.mark.parametrize("permissions", [
    ["reservations:create", "balances:read"], ["admin:write"], ["admin:events:read"], ["budgets:read"]])
def test_tenant_events_need_events_read(db: psycopg.Connection, permissions: list[str]) -> None:
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    key = create_key(db, "acme", permissions)
    fails(db, "INSUFFICIENT_PERMISSIONS", "SELECT cycles.list_tenant_events(%(k)s)", k=key)


def test_tenant_events_need_a_valid_key_and_stay_readable_after_close(db: psycopg.Connection) -> None:
    fails(db, "UNAUTHORIZED", "SELECT cycles.list_tenant_events('cyc_live_nope')")
    fails(db, "UNAUTHORIZED", "SELECT cycles.list_tenant_events(NULL)")
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    key = create_key(db, "acme", ["events:read"])
    db.execute("SELECT cycles.suspend_tenant('acme')")
    assert len(q(db, "SELECT cycles.list_tenant_events(%s)", key)["events"]) == 2


def test_admin_listing_refuses_tenant_keys(db: psycopg.Connection) -> None:
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    key = create_key(db, "acme", ["admin:read", "admin:events:read", "events:read"])
    fails(db, "INSUFFICIENT_PERMISSIONS", "SELECT cycles.list_events(p_ctx => %(c)s)", c=Jsonb({"api_key": key}))
    event_id = q(db, "SELECT event_id FROM cycles.events LIMIT 1")
    fails(db, "INSUFFICIENT_PERMISSIONS", "SELECT cycles.get_event(%(e)s, %(c)s)", e=event_id,
          c=Jsonb({"api_key": key}))


def test_a_scope_filtered_key_sees_only_events_of_its_scopes(db: psycopg.Connection) -> None:
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    for scope in ("tenant:acme", "tenant:acme/workspace:eng", "tenant:acme/workspace:ops",
                  "tenant:acme/workspace:eng/agent:bot"):
        db.execute("SELECT cycles.create_budget(%s, 'TOKENS', 5)", (scope,))
    key = create_key(db, "acme", ["events:read"])
    db.execute("UPDATE cycles.api_keys SET scope_filter = '{workspace:eng}' WHERE key_hash = cycles._hash_secret(%s)",
               (key,))
    events = q(db, "SELECT cycles.list_tenant_events(%s)", key)["events"]
    assert sorted(e["scope"] for e in events) == ["tenant:acme/workspace:eng", "tenant:acme/workspace:eng/agent:bot"]
    ops_event = q(db, "SELECT event_id FROM cycles.events WHERE scope = 'tenant:acme/workspace:ops'")
    fails(db, "INVALID_REQUEST", "SELECT cycles.list_tenant_events(%(k)s, p_cursor => %(c)s)", k=key, c=ops_event)
