"""Delivery from the outbox, driven by worker rounds in this process against a
real receiver: signatures, headers, ordering, retries, auto-disable, pause,
test probes, replay and retention."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from typing import Any

import psycopg
import pytest

from app.webhooks.signing import verify
from app.webhooks.worker import run_worker
from tests.sql.admin_calls import ISO, call, fails
from tests.webhooks.conftest import emit, make_due, run_rounds, subscribe, worker_settings
from tests.webhooks.receiver import Receiver


def deliveries(db: psycopg.Connection, sub_id: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = call(db, "SELECT cycles.list_webhook_deliveries(%(s)s)", s=sub_id)["deliveries"]
    return listed


def test_signed_event_json_and_headers(acme: psycopg.Connection, conninfo: str, receiver: Receiver) -> None:
    sub_id, secret = subscribe(acme, receiver.url, headers={"Authorization": "Bearer abc"})
    [event_id] = emit(acme, 1)
    assert run_rounds(conninfo) == 1
    [got] = receiver.received()
    assert verify(got.body, secret, got.headers["x-cycles-signature"])
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", got.headers["x-cycles-signature"])
    assert not verify(got.body + b" ", secret, got.headers["x-cycles-signature"])
    stored = call(acme, "SELECT row_to_json(e)::jsonb FROM cycles.events AS e WHERE event_id = %(e)s", e=event_id)
    assert got.event == {
        "event_id": event_id, "event_type": "tenant.updated", "category": "tenant",
        "timestamp": got.event["timestamp"], "tenant_id": "acme", "actor": {"type": "admin"},
        "source": "cycles-admin", "data": {"n": 0}, "trace_id": stored["trace_id"]}
    assert ISO.match(got.event["timestamp"]) and b"null" not in got.body
    assert got.headers["x-cycles-event-id"] == event_id
    assert got.headers["x-cycles-event-type"] == "tenant.updated"
    assert got.headers["x-cycles-trace-id"] == stored["trace_id"]
    assert re.fullmatch(rf"00-{stored['trace_id']}-[0-9a-f]{{16}}-01", got.headers["traceparent"])
    assert got.headers["content-type"] == "application/json"
    assert got.headers["authorization"] == "Bearer abc"
    [delivery] = deliveries(acme, sub_id)
    assert delivery["status"] == "SUCCESS" and delivery["attempts"] == 1 and delivery["response_status"] == 200
    assert delivery["event_id"] == event_id and delivery["trace_id"] == stored["trace_id"]
    assert ISO.match(delivery["completed_at"]) and "next_retry_at" not in delivery
    sub = call(acme, "SELECT cycles.get_webhook(%(s)s)", s=sub_id)
    assert ISO.match(sub["last_success_at"]) and sub["consecutive_failures"] == 0


def test_order_follows_event_order_even_across_a_retry(
        acme: psycopg.Connection, conninfo: str, receiver: Receiver) -> None:
    subscribe(acme, receiver.url, retry_policy={"initial_delay_ms": 100})
    ids = emit(acme, 6)
    failed_once: set[str] = set()

    def first_attempt_of_second_event_fails(request: Any) -> int:
        event_id = request.headers["x-cycles-event-id"]
        if event_id == ids[1] and event_id not in failed_once:
            failed_once.add(event_id)
            return 503
        return 200

    receiver.status_for = first_attempt_of_second_event_fails
    run_rounds(conninfo)
    assert receiver.event_ids() == ids[:2], "later events wait behind a retrying one"
    make_due(acme)
    run_rounds(conninfo)
    assert receiver.event_ids() == [ids[0], ids[1], *ids[1:]]


def test_retry_schedule_follows_the_policy_and_succeeds_on_retry_n_plus_1(
        acme: psycopg.Connection, conninfo: str, receiver: Receiver) -> None:
    sub_id, _ = subscribe(acme, receiver.url, retry_policy={
        "max_retries": 4, "initial_delay_ms": 100, "backoff_multiplier": 3, "max_delay_ms": 1000})
    [event_id] = emit(acme, 1)
    receiver.status_for = lambda r: 500 if len(receiver.requests) <= 3 else 204
    delays = []
    for _ in range(3):
        run_rounds(conninfo)
        [delivery] = deliveries(acme, sub_id)
        assert delivery["status"] == "RETRYING" and delivery["response_status"] == 500
        delays.append(call(acme, "SELECT (extract(epoch FROM next_attempt_at - attempted_at) * 1000)::int"
                                 " FROM cycles.webhook_deliveries"))
        make_due(acme)
    assert delays == [100, 300, 900]
    run_rounds(conninfo)
    assert receiver.event_ids() == [event_id] * 4
    [delivery] = deliveries(acme, sub_id)
    assert delivery["status"] == "SUCCESS" and delivery["attempts"] == 4 and delivery["response_status"] == 204


def test_real_worker_waits_out_the_retry_delays(acme: psycopg.Connection, conninfo: str, receiver: Receiver) -> None:
    subscribe(acme, receiver.url, retry_policy={"max_retries": 3, "initial_delay_ms": 150, "backoff_multiplier": 2})
    emit(acme, 1)
    receiver.status_for = lambda r: 500 if len(receiver.requests) <= 2 else 200
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete,
                              args=(run_worker(worker_settings(conninfo), stop),), daemon=True)
    thread.start()
    try:
        got = receiver.wait_for(3)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
    # A retry is never sent before its delay: >= 150 ms, then >= 300 ms.
    assert got[1].at - got[0].at >= 0.15 and got[2].at - got[1].at >= 0.30


def test_exhausted_retries_fail_and_auto_disable(acme: psycopg.Connection, conninfo: str, receiver: Receiver) -> None:
    sub_id, _ = subscribe(acme, receiver.url, retry_policy={"max_retries": 0}, disable_after_failures=3)
    receiver.status_for = lambda r: 500
    emit(acme, 4)
    run_rounds(conninfo)
    assert len(receiver.received()) == 3, "the fourth delivery is failed by the disable, not sent"
    sub = call(acme, "SELECT cycles.get_webhook(%(s)s)", s=sub_id)
    assert sub["status"] == "DISABLED" and sub["consecutive_failures"] == 3
    statuses = sorted(d["status"] for d in deliveries(acme, sub_id))
    assert statuses == ["FAILED"] * 4
    disabled = acme.execute(
        "SELECT data, correlation_id, source, actor FROM cycles.events WHERE event_type = 'webhook.disabled'"
    ).fetchall()
    assert len(disabled) == 1
    data, correlation, source, actor = disabled[0]
    assert data == {"subscription_id": sub_id, "tenant_id": "acme", "previous_status": "ACTIVE",
                    "new_status": "DISABLED", "changed_fields": [],
                    "disable_reason": "consecutive_failures_exceeded_threshold"}
    assert correlation.startswith(f"webhook_auto_disable:{sub_id}:") and source == "cycles-events"
    assert actor == {"type": "system"}
    assert call(acme, "SELECT count(*) FROM cycles.events WHERE event_type = 'system.webhook_delivery_failed'") == 3
    emit(acme, 1)
    assert call(acme, "SELECT count(*) FROM cycles.webhook_deliveries") == 4, "a DISABLED subscription queues nothing"


def test_a_success_resets_the_failure_count(acme: psycopg.Connection, conninfo: str, receiver: Receiver) -> None:
    sub_id, _ = subscribe(acme, receiver.url, retry_policy={"max_retries": 0}, disable_after_failures=2)
    receiver.status_for = lambda r: 500 if len(receiver.requests) in (1, 3) else 200
    emit(acme, 4)
    run_rounds(conninfo)
    sub = call(acme, "SELECT cycles.get_webhook(%(s)s)", s=sub_id)
    assert sub["status"] == "ACTIVE" and sub["consecutive_failures"] == 0 and len(receiver.received()) == 4


def test_paused_subscription_holds_queued_and_skips_new_events(
        acme: psycopg.Connection, conninfo: str, receiver: Receiver) -> None:
    sub_id, _ = subscribe(acme, receiver.url)
    queued = emit(acme, 2)
    call(acme, "SELECT cycles.update_webhook(%(s)s, '{\"status\": \"PAUSED\"}')", s=sub_id)
    emit(acme, 2)
    assert run_rounds(conninfo) == 0
    call(acme, "SELECT cycles.update_webhook(%(s)s, '{\"status\": \"ACTIVE\"}')", s=sub_id)
    run_rounds(conninfo)
    assert receiver.event_ids() == queued


def test_probe_from_sql_is_sent_by_the_worker_and_counts_nothing(
        acme: psycopg.Connection, conninfo: str, receiver: Receiver) -> None:
    sub_id, secret = subscribe(acme, receiver.url)
    receiver.status_for = lambda r: 500
    probe = call(acme, "SELECT cycles.test_webhook(%(s)s)", s=sub_id)
    assert run_rounds(conninfo) == 1
    [got] = receiver.received()
    assert verify(got.body, secret, got.headers["x-cycles-signature"])
    assert got.event["event_type"] == "system.webhook_test" and got.event["event_id"] == probe["event_id"]
    assert got.event["data"] == {"subscription_id": sub_id, "test": True}
    sub = call(acme, "SELECT cycles.get_webhook(%(s)s)", s=sub_id)
    assert sub["consecutive_failures"] == 0 and sub["status"] == "ACTIVE"
    [delivery] = deliveries(acme, sub_id)
    assert delivery["status"] == "FAILED" and delivery["attempts"] == 1
    assert call(acme, "SELECT count(*) FROM cycles.events WHERE event_type LIKE 'system.%%'", s=sub_id) == 0


def test_matching_owner_boundary_and_scope_filter(acme: psycopg.Connection, conninfo: str, receiver: Receiver) -> None:
    tenant_sub, _ = subscribe(acme, receiver.url)
    system_sub, _ = subscribe(acme, receiver.url, tenant=None, event_types=["api_key.created"],
                              event_categories=["tenant"])
    scoped_sub, _ = subscribe(acme, receiver.url, event_types=["budget.created"], event_categories=[],
                              scope_filter="tenant:acme/*")
    call(acme, "SELECT cycles.create_api_key(p_tenant_id => 'acme', p_name => 'k')")
    call(acme, "SELECT cycles.create_budget(p_scope => 'tenant:acme', p_unit => 'TOKENS', p_allocated => 5)")
    call(acme, "SELECT cycles.create_budget(p_scope => 'tenant:acme/workspace:w', p_unit => 'TOKENS',"
               " p_allocated => 5)")
    by_sub = dict(acme.execute(
        "SELECT subscription_id, array_agg(event_type ORDER BY seq) FROM cycles.webhook_deliveries"
        " GROUP BY subscription_id").fetchall())
    assert by_sub[tenant_sub] == ["budget.created", "budget.created"]
    assert by_sub[system_sub] == ["api_key.created"]
    assert by_sub[scoped_sub] == ["budget.created"]


def test_replay_queues_the_window_once_at_a_time(acme: psycopg.Connection, conninfo: str, receiver: Receiver) -> None:
    sub_id, _ = subscribe(acme, receiver.url)
    call(acme, "SELECT cycles.update_webhook(%(s)s, '{\"status\": \"PAUSED\"}')", s=sub_id)
    missed = emit(acme, 5)
    assert call(acme, "SELECT cycles.replay_webhook_events(%(s)s)", s=sub_id)["events_queued"] == 0, \
        "a subscription that is not ACTIVE queues nothing"
    call(acme, "SELECT cycles.update_webhook(%(s)s, '{\"status\": \"ACTIVE\"}')", s=sub_id)
    replay = "SELECT cycles.replay_webhook_events(%(s)s, %(r)s::jsonb)"
    before = call(acme, "SELECT count(*) FROM cycles.webhook_deliveries")
    fails(acme, "INVALID_REQUEST", replay, s=sub_id, r=json.dumps({"max_events": 4}))
    fails(acme, "INVALID_REQUEST", replay, s=sub_id, r=json.dumps({"max_events": 1001}))
    assert call(acme, "SELECT count(*) FROM cycles.webhook_deliveries") == before
    accepted = call(acme, replay, s=sub_id, r=json.dumps({"max_events": 5, "event_types": ["tenant.updated"]}))
    assert re.fullmatch(r"rpl_[0-9a-f]{16}", accepted["replay_id"]) and accepted["events_queued"] == 5
    assert isinstance(accepted["estimated_completion_seconds"], int)
    fails(acme, "REPLAY_IN_PROGRESS", replay, s=sub_id, r="{}")
    run_rounds(conninfo)
    assert receiver.event_ids() == missed
    again = call(acme, replay, s=sub_id, r=json.dumps({"event_types": ["budget.created"]}))
    assert again["events_queued"] == 0


def test_retention_prunes_settled_history_and_keeps_pending(
        acme: psycopg.Connection, conninfo: str, receiver: Receiver) -> None:
    sub_id, _ = subscribe(acme, receiver.url)
    delivered = emit(acme, 2)
    run_rounds(conninfo)
    pending = emit(acme, 1)
    acme.execute("UPDATE cycles.events SET created_at = created_at - interval '100 days'")
    acme.execute("UPDATE cycles.webhook_deliveries SET completed_at = completed_at - interval '20 days'"
                 " WHERE status = 'SUCCESS'")
    pruned = call(acme, "SELECT cycles.prune_webhook_deliveries()")
    assert pruned == {"deleted": 2, "more": False}
    assert call(acme, "SELECT cycles.prune_events()")["deleted"] >= 2
    left = [r[0] for r in acme.execute("SELECT event_id FROM cycles.events").fetchall()]
    assert pending[0] in left and not set(delivered) & set(left)
    [delivery] = deliveries(acme, sub_id)
    assert delivery["status"] == "PENDING" and delivery["event_id"] == pending[0]
    run_rounds(conninfo)
    assert receiver.event_ids()[-1] == pending[0]
    fails(acme, "INVALID_REQUEST", "SELECT cycles.prune_webhook_deliveries(0)")


def test_deleted_subscription_fails_its_queue(acme: psycopg.Connection, conninfo: str, receiver: Receiver) -> None:
    sub_id, _ = subscribe(acme, receiver.url)
    emit(acme, 2)
    call(acme, "SELECT cycles.delete_webhook(%(s)s)", s=sub_id)
    assert run_rounds(conninfo) == 0 and receiver.received() == []
    assert call(acme, "SELECT array_agg(DISTINCT status) FROM cycles.webhook_deliveries") == ["FAILED"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "https://10.1.2.3/x", "https://169.254.169.254/latest"])
def test_worker_refuses_private_targets_unless_allowed(
        acme: psycopg.Connection, conninfo: str, url: str) -> None:
    from app.webhooks.url_policy import UrlPolicy, url_problem
    assert asyncio.run(url_problem(url, UrlPolicy(dev_mode=True, allow_private=False))) is not None
    assert asyncio.run(url_problem(url, UrlPolicy(dev_mode=True, allow_private=True))) is None
    assert asyncio.run(url_problem("http://hooks.example.com/x", UrlPolicy(dev_mode=False, allow_private=True))) \
        == "url must use https (http is allowed only in dev mode)"


def test_unreachable_endpoint_fails_alone_and_does_not_hold_up_others(
        acme: psycopg.Connection, conninfo: str, receiver: Receiver) -> None:
    dead_id, _ = subscribe(acme, "http://127.0.0.1:1/nothing-listens", retry_policy={"max_retries": 1})
    subscribe(acme, receiver.url)
    ids = emit(acme, 2)
    run_rounds(conninfo)
    assert receiver.event_ids() == ids
    [first, second] = sorted(deliveries(acme, dead_id), key=lambda d: d["event_id"] != ids[0])
    assert first["status"] == "RETRYING" and "ConnectError" in first["error_message"]
    assert "response_status" not in first and ISO.match(first["next_retry_at"])
    assert second["status"] == "PENDING", "the next event waits behind the retrying one"
    make_due(acme)
    run_rounds(conninfo)
    assert [d["status"] for d in deliveries(acme, dead_id)] == ["RETRYING", "FAILED"]


def test_claims_lock_one_head_per_subscription_and_skip_what_another_holds(
        acme: psycopg.Connection, conninfo: str, receiver: Receiver) -> None:
    subscribe(acme, receiver.url)
    subscribe(acme, receiver.url.replace("/hook", "/other"))
    ids = emit(acme, 3)
    claim = "SELECT cycles.claim_webhook_deliveries(10)"
    with psycopg.connect(conninfo) as first, psycopg.connect(conninfo) as second:
        held = call(first, claim)["deliveries"]
        assert [d["event"]["event_id"] for d in held] == [ids[0], ids[0]], "only each queue's head"
        assert call(second, claim)["deliveries"] == [], "held heads hide their whole queue"
        first.rollback()  # as a crashed worker would: the rows are due again
        again = call(second, claim)["deliveries"]
        assert sorted(d["delivery_id"] for d in again) == sorted(d["delivery_id"] for d in held)
        second.rollback()
