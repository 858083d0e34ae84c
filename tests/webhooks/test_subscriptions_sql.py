"""Subscriptions through the cycles.* functions: shapes, events, and the two
normative invariants, which hold for psql callers too (INVALID_REQUEST and
nothing stored; direct DML hits the named CHECK constraints)."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.sql.admin_calls import ISO, call, fails

HOOK = "https://hooks.example.com/cycles"


def create(db: psycopg.Connection, request: dict[str, Any], tenant: str | None = "acme") -> dict[str, Any]:
    result: dict[str, Any] = call(
        db, "SELECT cycles.create_webhook(%(r)s::jsonb, %(t)s)", r=json.dumps(request), t=tenant)
    return result


def counts(db: psycopg.Connection) -> tuple[int, ...]:
    row = db.execute(
        "SELECT (SELECT count(*) FROM cycles.webhook_subscriptions), (SELECT count(*) FROM cycles.events)"
    ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.fixture
def acme(db: psycopg.Connection) -> psycopg.Connection:
    call(db, "SELECT cycles.create_tenant('acme', 'Acme')")
    return db


def test_create_returns_secret_once_and_the_subscription_shape(acme: psycopg.Connection) -> None:
    created = create(acme, {
        "url": HOOK, "event_types": ["budget.exhausted"], "name": "ops",
        "headers": {"Authorization": "Bearer x"}, "retry_policy": {"max_retries": 2}})
    sub = created["subscription"]
    assert re.fullmatch(r"whsec_[0-9a-f]{64}", created["signing_secret"])
    assert re.fullmatch(r"whsub_[0-9a-f]{16}", sub["subscription_id"])
    assert sub["tenant_id"] == "acme" and sub["status"] == "ACTIVE" and sub["url"] == HOOK
    assert sub["event_types"] == ["budget.exhausted"] and sub["event_categories"] == []
    assert sub["headers"] == {"Authorization": "********"}
    assert sub["retry_policy"] == {
        "max_retries": 2, "initial_delay_ms": 1000, "backoff_multiplier": 2.0, "max_delay_ms": 60000}
    assert sub["disable_after_failures"] == 10 and sub["consecutive_failures"] == 0
    assert ISO.match(sub["created_at"]) and "signing_secret" not in sub
    got = call(acme, "SELECT cycles.get_webhook(%(i)s)", i=sub["subscription_id"])
    assert got == sub
    event = acme.execute(
        "SELECT event_type, tenant_id, data, correlation_id FROM cycles.events"
        " WHERE event_type LIKE 'webhook.%'").fetchall()
    assert event == [("webhook.created", "acme", {
        "subscription_id": sub["subscription_id"], "tenant_id": "acme", "new_status": "ACTIVE",
        "changed_fields": []}, f"webhook_create:{sub['subscription_id']}")]


def test_system_subscription_when_no_tenant_may_select_admin_events(acme: psycopg.Connection) -> None:
    sub = create(acme, {"url": HOOK, "event_types": ["api_key.created"], "event_categories": ["system"]},
                 tenant=None)["subscription"]
    assert sub["tenant_id"] == "__system__" and sub["event_categories"] == ["system"]


@pytest.mark.parametrize("request_body", [
    {"url": HOOK, "event_types": []},
    {"url": HOOK},
    {"url": HOOK, "event_types": ["api_key.created"]},
    {"url": HOOK, "event_types": ["budget.exhausted"], "event_categories": ["policy"]},
    {"url": HOOK, "event_types": ["system.webhook_test"]},
    {"url": HOOK, "event_types": ["webhook.disabled"]},
    {"url": HOOK, "event_types": ["budget.nonsense"]},
    {"url": HOOK, "event_types": ["budget.exhausted"], "event_categories": ["money"]},
    {"url": HOOK, "event_types": ["budget.exhausted"], "retry_policy": {"max_retries": 11}},
    {"url": HOOK, "event_types": ["budget.exhausted"], "retry_policy": {"backoff_multiplier": 0.5}},
    {"url": HOOK, "event_types": ["budget.exhausted"], "headers": {"X-Cycles-Signature": "forged"}},
    {"url": HOOK, "event_types": ["budget.exhausted"], "headers": {"X-Note": "caf\u00e9"}},
    {"url": HOOK, "event_types": ["budget.exhausted"], "headers": {"X-Note": "a\r\nX-Injected: 1"}},
    {"url": HOOK, "event_types": ["budget.exhausted"], "disable_after_failures": 0},
    {"url": HOOK, "event_types": ["budget.exhausted"], "colour": "red"},
])
def test_invalid_create_is_invalid_request_and_stores_nothing(
        acme: psycopg.Connection, request_body: dict[str, Any]) -> None:
    before = counts(acme)
    fails(acme, "INVALID_REQUEST", "SELECT cycles.create_webhook(%(r)s::jsonb, 'acme')", r=json.dumps(request_body))
    assert counts(acme) == before


@pytest.mark.parametrize("url", ["ftp://x.example.com", "hooks.example.com", "https://", "https://a b.com"])
def test_bad_url_is_webhook_url_invalid(acme: psycopg.Connection, url: str) -> None:
    before = counts(acme)
    fails(acme, "WEBHOOK_URL_INVALID", "SELECT cycles.create_webhook(%(r)s::jsonb, 'acme')",
          r=json.dumps({"url": url, "event_types": ["budget.exhausted"]}))
    assert counts(acme) == before


def test_unknown_and_closed_tenants(acme: psycopg.Connection) -> None:
    fails(acme, "TENANT_NOT_FOUND", "SELECT cycles.create_webhook(%(r)s::jsonb, 'nobody')",
          r=json.dumps({"url": HOOK, "event_types": ["budget.exhausted"]}))
    sub = create(acme, {"url": HOOK, "event_types": ["budget.exhausted"]})["subscription"]
    call(acme, "SELECT cycles.close_tenant('acme')")
    got = call(acme, "SELECT cycles.get_webhook(%(i)s)", i=sub["subscription_id"])
    assert got["status"] == "DISABLED"
    cascade = acme.execute(
        "SELECT data ->> 'subscription_id', correlation_id FROM cycles.events"
        " WHERE event_type = 'webhook.disabled_via_tenant_cascade'").fetchall()
    assert len(cascade) == 1 and cascade[0][0] == sub["subscription_id"]
    assert cascade[0][1].startswith("tenant_close_cascade:acme:")
    fails(acme, "TENANT_CLOSED", "SELECT cycles.update_webhook(%(i)s, '{\"status\": \"ACTIVE\"}')",
          i=sub["subscription_id"])
    fails(acme, "TENANT_CLOSED", "SELECT cycles.delete_webhook(%(i)s)", i=sub["subscription_id"])
    fails(acme, "TENANT_CLOSED", "SELECT cycles.create_webhook(%(r)s::jsonb, 'acme')",
          r=json.dumps({"url": HOOK, "event_types": ["budget.exhausted"]}))


def test_update_selector_clearing_and_invariants(acme: psycopg.Connection) -> None:
    sub_id = create(acme, {"url": HOOK, "event_types": ["budget.exhausted"]})["subscription"]["subscription_id"]
    update = "SELECT cycles.update_webhook(%(i)s, %(p)s::jsonb)"
    before = counts(acme)
    fails(acme, "INVALID_REQUEST", update, i=sub_id, p='{"event_types": []}')
    fails(acme, "INVALID_REQUEST", update, i=sub_id, p='{"event_categories": ["api_key"]}')
    fails(acme, "INVALID_REQUEST", update, i=sub_id, p='{"event_types": ["policy.created"]}')
    assert counts(acme) == before
    updated = call(acme, update, i=sub_id, p='{"event_types": [], "event_categories": ["budget"]}')
    assert updated["event_types"] == [] and updated["event_categories"] == ["budget"]
    fails(acme, "INVALID_REQUEST", update, i=sub_id, p='{"event_categories": []}')
    event = acme.execute(
        "SELECT event_type, data -> 'changed_fields' FROM cycles.events ORDER BY seq DESC LIMIT 1").fetchone()
    assert event == ("webhook.updated", ["event_categories", "event_types"])


def test_status_changes_and_no_op(acme: psycopg.Connection) -> None:
    sub_id = create(acme, {"url": HOOK, "event_types": ["budget.exhausted"]})["subscription"]["subscription_id"]
    update = "SELECT cycles.update_webhook(%(i)s, %(p)s::jsonb, p_ctx => '{\"request_id\": \"r1\"}')"
    assert call(acme, update, i=sub_id, p='{"status": "PAUSED", "name": "n"}')["status"] == "PAUSED"
    before = counts(acme)
    call(acme, update, i=sub_id, p='{"status": "PAUSED", "name": "n"}')
    assert counts(acme) == before, "a no-op PATCH emits nothing"
    fails(acme, "INVALID_REQUEST", update, i=sub_id, p='{"status": "DISABLED"}')
    acme.execute("UPDATE cycles.webhook_subscriptions SET status = 'DISABLED', consecutive_failures = 7")
    resumed = call(acme, update, i=sub_id, p='{"status": "ACTIVE"}')
    assert resumed["status"] == "ACTIVE" and resumed["consecutive_failures"] == 0
    events = acme.execute(
        "SELECT event_type, data ->> 'previous_status', data ->> 'new_status', correlation_id FROM cycles.events"
        " WHERE event_type IN ('webhook.paused', 'webhook.resumed') ORDER BY seq").fetchall()
    assert events == [
        ("webhook.paused", "ACTIVE", "PAUSED", f"webhook_update:{sub_id}:r1"),
        ("webhook.resumed", "DISABLED", "ACTIVE", f"webhook_update:{sub_id}:r1")]


def test_secret_rotation_and_delete(acme: psycopg.Connection) -> None:
    sub_id = create(acme, {"url": HOOK, "event_types": ["budget.exhausted"]})["subscription"]["subscription_id"]
    call(acme, "SELECT cycles.update_webhook(%(i)s, '{\"signing_secret\": \"whsec_rotated_1\"}')", i=sub_id)
    assert call(acme, "SELECT signing_secret FROM cycles.webhook_subscriptions") == "whsec_rotated_1"
    assert call(acme, "SELECT cycles.delete_webhook(%(i)s)", i=sub_id) == {}
    fails(acme, "WEBHOOK_NOT_FOUND", "SELECT cycles.get_webhook(%(i)s)", i=sub_id)
    fails(acme, "WEBHOOK_NOT_FOUND", "SELECT cycles.delete_webhook(%(i)s)", i=sub_id)
    assert call(acme, "SELECT data ->> 'previous_status' FROM cycles.events WHERE event_type = 'webhook.deleted'") \
        == "ACTIVE"


def test_tenant_confinement_looks_absent(acme: psycopg.Connection) -> None:
    call(acme, "SELECT cycles.create_tenant('other', 'Other')")
    sub_id = create(acme, {"url": HOOK, "event_types": ["budget.exhausted"]})["subscription"]["subscription_id"]
    fails(acme, "WEBHOOK_NOT_FOUND", "SELECT cycles.get_webhook(%(i)s, 'other')", i=sub_id)
    fails(acme, "WEBHOOK_NOT_FOUND", "SELECT cycles.update_webhook(%(i)s, '{}', 'other')", i=sub_id)
    fails(acme, "WEBHOOK_NOT_FOUND", "SELECT cycles.list_webhook_deliveries(%(i)s, p_tenant_id => 'other')", i=sub_id)


def test_list_filters_and_pages(acme: psycopg.Connection) -> None:
    ids = [create(acme, {"url": f"{HOOK}/{n}", "event_types": ["budget.exhausted"]})["subscription"]
           ["subscription_id"] for n in range(5)]
    create(acme, {"url": HOOK, "event_types": ["api_key.created"]}, tenant=None)
    page = call(acme, "SELECT cycles.list_webhooks(p_tenant_id => 'acme', p_limit => 2)")
    assert [s["subscription_id"] for s in page["subscriptions"]] == ids[::-1][:2] and page["has_more"]
    rest = call(acme, "SELECT cycles.list_webhooks(p_tenant_id => 'acme', p_cursor => %(c)s)", c=page["next_cursor"])
    assert [s["subscription_id"] for s in rest["subscriptions"]] == ids[::-1][2:] and not rest["has_more"]
    assert "next_cursor" not in rest
    found = call(acme, "SELECT cycles.list_webhooks(p_search => '/3')")
    assert [s["subscription_id"] for s in found["subscriptions"]] == [ids[3]]
    assert len(call(acme, "SELECT cycles.list_webhooks(p_event_type => 'api_key.created')")["subscriptions"]) == 1
    fails(acme, "INVALID_REQUEST", "SELECT cycles.list_webhooks(p_status => 'GONE')")


def _insert(selectors: str, tenant: str = "acme") -> str:
    return ("INSERT INTO cycles.webhook_subscriptions (subscription_id, tenant_id, url, signing_secret,"
            f" retry_policy, event_types, event_categories) VALUES ('whsub_x', '{tenant}', 'https://x.example',"
            " 'secret-123', '{\"max_retries\": 1, \"initial_delay_ms\": 100, \"backoff_multiplier\": 1,"
            f" \"max_delay_ms\": 1000}}', {selectors})")


@pytest.mark.parametrize(("selectors", "constraint"), [
    ("'{}', '{}'", "webhook_subscriptions_selector_present"),
    ("'{api_key.created}', '{}'", "webhook_subscriptions_tenant_selectors"),
    ("'{budget.exhausted}', '{system}'", "webhook_subscriptions_tenant_selectors"),
])
def test_direct_dml_cannot_violate_the_invariants(acme: psycopg.Connection, selectors: str, constraint: str) -> None:
    with pytest.raises(errors.CheckViolation) as caught:
        acme.execute(_insert(selectors))
    assert caught.value.diag.constraint_name == constraint
    acme.execute(_insert("'{api_key.created}', '{system}'", tenant="__system__"))
