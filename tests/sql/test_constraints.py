"""Every named CHECK constraint of schema cycles is exercised by a statement that violates it.

The constraints are the second half of each invariant's pair (the functions
raise the protocol error; the constraint catches a bug). The list of
constraints comes from pg_constraint, so a new CHECK without a violating
statement here fails test_every_check_constraint_has_a_violation.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

_LEDGER_INSERT = """
    INSERT INTO cycles.ledger_entries (tenant_id, budget_id, scope, unit, operation, allocated_delta, actor_type,
        operation_lead, allocated_after, spent_after, reserved_after, debt_after, created_at, entry_hash)
    SELECT 'acme', budget_id, scope, unit, {operation}, {delta}, {actor},
        true, 0, 0, 0, 0, '2100-01-01', {hash} FROM cycles.budgets"""
_SHA = "sha256('x')"
_EVENT_INSERT = """
    INSERT INTO cycles.events (event_id, tenant_id, event_type, category, source, data)
    VALUES ('evt_bad', 'acme', {event_type}, {category}, {source}, {data})"""
_BUDGET = "UPDATE cycles.budgets SET {} WHERE scope = 'tenant:acme'"
_TENANT = "UPDATE cycles.tenants SET {} WHERE tenant_id = 'acme'"
_KEY = "UPDATE cycles.api_keys SET {}"
_RESERVATION = "UPDATE cycles.reservations SET {}"
_IDEMPOTENCY = "UPDATE cycles.idempotency_records SET {}"
_POLICY = "UPDATE cycles.policies SET {}"
# Audit rows are append-only (an UPDATE is refused by trigger before any
# CHECK runs), so their constraints are exercised by inserts.
_AUDIT_INSERT = """
    INSERT INTO cycles.audit_logs (log_id, tenant_id, actor_type, operation, status, error_code, metadata)
    VALUES ('audit_bad', {tenant}, {actor}, {operation}, {status}, {error}, {metadata})"""
_BULK_INSERT = """
    INSERT INTO cycles.bulk_action_records (kind, idempotency_key, request_hash, response, created_at, expires_at)
    SELECT {kind}, {key}, '\\x00', '{{}}', created_at, {expires} FROM (SELECT now() AS created_at) AS n"""
_AUDIT_OK = {"tenant": "'acme'", "actor": "'admin'", "operation": "'getTenant'", "status": "200",
             "error": "NULL", "metadata": "'{}'"}

_WEBHOOK_INSERT = """
    INSERT INTO cycles.webhook_subscriptions (subscription_id, tenant_id, url, event_types, event_categories,
        signing_secret, headers, status, retry_policy, disable_after_failures, consecutive_failures)
    VALUES ('whsub_bad', {tenant}, {url}, {types}, {categories}, {secret}, {headers}, {status}, {policy},
        {disable_after}, {failures})"""
_WEBHOOK_OK = {
    "tenant": "'acme'", "url": "'https://hooks.example.com'", "types": "'{budget.exhausted}'",
    "categories": "'{}'", "secret": "'whsec_secret'", "headers": "'{}'", "status": "'ACTIVE'",
    "policy": "'{\"max_retries\": 5, \"initial_delay_ms\": 1000, \"backoff_multiplier\": 2,"
              " \"max_delay_ms\": 60000}'",
    "disable_after": "10", "failures": "0"}
_DELIVERY_INSERT = """
    INSERT INTO cycles.webhook_deliveries (delivery_id, subscription_id, tenant_id, kind, replay_id, event_seq,
        event_id, event_type, test_event, status, attempts, completed_at, trace_flags)
    VALUES ('del_bad', 'whsub_x', 'acme', {kind}, {replay}, {event_seq}, 'evt_x', 'budget.exhausted', {test},
        {status}, {attempts}, {completed}, {flags})"""
_DELIVERY_OK = {
    "kind": "'live'", "replay": "NULL", "event_seq": "1", "test": "NULL", "status": "'PENDING'",
    "attempts": "0", "completed": "NULL", "flags": "'01'"}
_REPLAY_INSERT = """
    INSERT INTO cycles.webhook_replays (replay_id, subscription_id, tenant_id, window_from, window_to,
        max_events, events_queued)
    VALUES ('rpl_bad', 'whsub_x', 'acme', {window_from}, now(), {max_events}, {queued})"""
_REPLAY_OK = {"window_from": "now() - interval '1 hour'", "max_events": "100", "queued": "0"}

# constraint name -> a statement, run against the baseline of the `baseline`
# fixture, that violates that constraint and no other.
_SESSION_INSERT = (
    "INSERT INTO cycles.dashboard_sessions (session_hash, principal_kind, tenant_id, key_id, sealed_key,"
    " csrf_token, expires_at) VALUES ({hash}, {kind}, NULL, {key}, NULL, {csrf}, {expires})")
_SESSION_OK = {
    "hash": "decode(repeat('ab', 32), 'hex')", "kind": "'admin'", "key": "NULL", "csrf": "repeat('c', 32)",
    "expires": "now() + interval '1 hour'"}

VIOLATIONS: dict[str, str] = {
    "tenants_tenant_id_format": "INSERT INTO cycles.tenants (tenant_id, name) VALUES ('Not Valid', 'x')",
    "tenants_name_length": _TENANT.format("name = ''"),
    "tenants_status_valid": _TENANT.format("status = 'DELETED'"),
    "tenants_closed_at_iff_closed": _TENANT.format("closed_at = now()"),
    "tenants_overage_policy_valid": _TENANT.format("default_commit_overage_policy = 'SOMETIMES'"),
    "tenants_default_ttl_range": _TENANT.format("default_reservation_ttl_ms = 999"),
    "tenants_max_ttl_range": _TENANT.format("max_reservation_ttl_ms = 86400001"),
    "tenants_max_extensions_range": _TENANT.format("max_reservation_extensions = -1"),
    "tenants_metadata_object": _TENANT.format("metadata = '[]'"),

    "api_keys_key_hash_sha256": _KEY.format("key_hash = '\\x00'"),
    "api_keys_name_length": _KEY.format("name = ''"),
    "api_keys_status_valid": _KEY.format("status = 'LOST'"),
    "api_keys_revoked_at_iff_revoked": _KEY.format("revoked_at = now()"),
    "api_keys_expiry_after_creation": _KEY.format("expires_at = created_at"),
    "api_keys_metadata_object": _KEY.format("metadata = '\"x\"'"),

    "budgets_scope_in_tenant": _BUDGET.format("scope = 'tenant:acmex'"),
    "budgets_unit_valid": _BUDGET.format("unit = 'EUROS'"),
    "budgets_allocated_nonnegative": _BUDGET.format("allocated = -1, remaining = -1 - spent - reserved - debt"),
    "budgets_spent_nonnegative": _BUDGET.format("spent = -1, remaining = allocated + 1 - reserved - debt"),
    "budgets_reserved_nonnegative": _BUDGET.format("reserved = -1, remaining = allocated - spent + 1 - debt"),
    "budgets_debt_nonnegative": _BUDGET.format("debt = -1, remaining = allocated - spent - reserved + 1"),
    "budgets_overdraft_limit_nonnegative": _BUDGET.format("overdraft_limit = -1"),
    "budgets_remaining_identity": _BUDGET.format("remaining = remaining + 1"),
    "budgets_status_valid": _BUDGET.format("status = 'OPEN'"),
    "budgets_closed_at_iff_closed": _BUDGET.format("status = 'CLOSED'"),
    "budgets_overage_policy_valid": _BUDGET.format("commit_overage_policy = 'SOMETIMES'"),
    "budgets_metadata_object": _BUDGET.format("metadata = '1'"),

    "reservations_unit_valid": _RESERVATION.format("unit = 'EUROS'"),
    "reservations_estimate_nonnegative": _RESERVATION.format("estimate = -1"),
    "reservations_status_valid": _RESERVATION.format("status = 'PENDING'"),
    "reservations_overage_policy_valid": _RESERVATION.format("overage_policy = 'SOMETIMES'"),
    "reservations_expiry_after_creation": _RESERVATION.format("expires_at_ms = created_at_ms"),
    "reservations_grace_range": _RESERVATION.format("grace_period_ms = 60001"),
    "reservations_extension_count_range": _RESERVATION.format("extension_count = max_extensions + 1"),
    "reservations_finalized_iff_settled": _RESERVATION.format("finalized_at_ms = created_at_ms"),
    "reservations_committed_iff_committed": _RESERVATION.format("committed = 5"),
    "reservations_committed_nonnegative": _RESERVATION.format(
        "status = 'COMMITTED', committed = -1, finalized_at_ms = created_at_ms"),
    "reservations_released_nonnegative": _RESERVATION.format("released = -1"),

    "idempotency_records_key_length": _IDEMPOTENCY.format("idempotency_key = ''"),
    "idempotency_records_expiry_after_creation": _IDEMPOTENCY.format("expires_at = created_at"),

    "ledger_entries_operation_valid": _LEDGER_INSERT.format(operation="'GIFT'", delta=1, actor="'admin'", hash=_SHA),
    "ledger_entries_actor_type_valid": _LEDGER_INSERT.format(operation="'CREDIT'", delta=1, actor="'robot'",
                                                             hash=_SHA),
    "ledger_entries_changes_something": _LEDGER_INSERT.format(operation="'CREDIT'", delta=0, actor="'admin'",
                                                              hash=_SHA),
    "ledger_entries_hashes_sha256": _LEDGER_INSERT.format(operation="'CREDIT'", delta=1, actor="'admin'",
                                                          hash="'\\x00'"),

    "events_category_valid": _EVENT_INSERT.format(
        event_type="'billing.sent'", category="'billing'", source="'cycles-admin'", data="'{}'"),
    "events_type_in_category": _EVENT_INSERT.format(
        event_type="'tenant.created'", category="'budget'", source="'cycles-admin'", data="'{}'"),
    "events_source_valid": _EVENT_INSERT.format(
        event_type="'budget.created'", category="'budget'", source="'elsewhere'", data="'{}'"),
    "events_data_object": _EVENT_INSERT.format(
        event_type="'budget.created'", category="'budget'", source="'cycles-admin'", data="'[]'"),

    "audit_logs_tenant_id_format": _AUDIT_INSERT.format(**{**_AUDIT_OK, "tenant": "'__nobody__'"}),
    "audit_logs_actor_type_valid": _AUDIT_INSERT.format(**{**_AUDIT_OK, "actor": "'robot'"}),
    "audit_logs_status_range": _AUDIT_INSERT.format(**{**_AUDIT_OK, "status": "99"}),
    "audit_logs_error_iff_failed": _AUDIT_INSERT.format(**{**_AUDIT_OK, "status": "404"}),
    "audit_logs_operation_length": _AUDIT_INSERT.format(**{**_AUDIT_OK, "operation": "''"}),
    "audit_logs_metadata_object": _AUDIT_INSERT.format(**{**_AUDIT_OK, "metadata": "'[]'"}),

    "bulk_action_records_kind_valid": _BULK_INSERT.format(kind="'webhook'", key="'k'", expires="now() + interval '1 hour'"),
    "bulk_action_records_key_length": _BULK_INSERT.format(kind="'tenant'", key="''", expires="now() + interval '1 hour'"),
    "bulk_action_records_expiry_after_creation": _BULK_INSERT.format(kind="'tenant'", key="'k'", expires="created_at"),

    "policies_name_length": _POLICY.format("name = ''"),
    "policies_description_length": _POLICY.format("description = repeat('x', 1025)"),
    "policies_scope_pattern_lower": _POLICY.format("scope_pattern = 'tenant:ACME'"),
    "policies_priority_nonnegative": _POLICY.format("priority = -1"),
    "policies_caps_object": _POLICY.format("caps = '[]'"),
    "policies_overage_policy_valid": _POLICY.format("commit_overage_policy = 'SOMETIMES'"),
    "policies_ttl_override_object": _POLICY.format("reservation_ttl_override = '1'"),
    "policies_rate_limits_object": _POLICY.format("rate_limits = '\"x\"'"),
    "policies_status_valid": _POLICY.format("status = 'DELETED'"),
    "policies_effective_window": _POLICY.format("effective_from = now(), effective_until = now()"),

    "webhook_subscriptions_selector_present": _WEBHOOK_INSERT.format(**{**_WEBHOOK_OK, "types": "'{}'"}),
    "webhook_subscriptions_tenant_selectors": _WEBHOOK_INSERT.format(**{**_WEBHOOK_OK, "categories": "'{policy}'"}),
    "webhook_subscriptions_status_valid": _WEBHOOK_INSERT.format(**{**_WEBHOOK_OK, "status": "'GONE'"}),
    "webhook_subscriptions_url_valid": _WEBHOOK_INSERT.format(**{**_WEBHOOK_OK, "url": "'ftp://x'"}),
    "webhook_subscriptions_secret_length": _WEBHOOK_INSERT.format(**{**_WEBHOOK_OK, "secret": "'short'"}),
    "webhook_subscriptions_headers_object": _WEBHOOK_INSERT.format(**{**_WEBHOOK_OK, "headers": "'[]'"}),
    "webhook_subscriptions_retry_policy_valid": _WEBHOOK_INSERT.format(**{**_WEBHOOK_OK, "policy": "'{}'"}),
    "webhook_subscriptions_disable_after_positive": _WEBHOOK_INSERT.format(**{**_WEBHOOK_OK, "disable_after": "0"}),
    "webhook_subscriptions_failures_nonnegative": _WEBHOOK_INSERT.format(**{**_WEBHOOK_OK, "failures": "-1"}),

    "webhook_deliveries_kind_valid": _DELIVERY_INSERT.format(**{**_DELIVERY_OK, "kind": "'other'"}),
    "webhook_deliveries_status_valid": _DELIVERY_INSERT.format(**{**_DELIVERY_OK, "status": "'LOST'"}),
    "webhook_deliveries_event_source": _DELIVERY_INSERT.format(**{**_DELIVERY_OK, "event_seq": "NULL"}),
    "webhook_deliveries_replay_id_iff_replay": _DELIVERY_INSERT.format(**{**_DELIVERY_OK, "replay": "'rpl_x'"}),
    "webhook_deliveries_attempts_nonnegative": _DELIVERY_INSERT.format(**{**_DELIVERY_OK, "attempts": "-1"}),
    "webhook_deliveries_completed_iff_settled": _DELIVERY_INSERT.format(**{**_DELIVERY_OK, "status": "'SUCCESS'"}),
    "webhook_deliveries_trace_flags_hex": _DELIVERY_INSERT.format(**{**_DELIVERY_OK, "flags": "'XY'"}),

    "webhook_replays_window_ordered": _REPLAY_INSERT.format(
        **{**_REPLAY_OK, "window_from": "now() + interval '1 hour'"}),
    "webhook_replays_max_events_range": _REPLAY_INSERT.format(**{**_REPLAY_OK, "max_events": "1001"}),
    "webhook_replays_queued_range": _REPLAY_INSERT.format(**{**_REPLAY_OK, "queued": "101"}),

    "dashboard_sessions_hash_length": _SESSION_INSERT.format(**{**_SESSION_OK, "hash": "'\\x00'::bytea"}),
    "dashboard_sessions_kind_valid": _SESSION_INSERT.format(**{**_SESSION_OK, "kind": "'root'"}),
    "dashboard_sessions_principal_consistent": _SESSION_INSERT.format(**{**_SESSION_OK, "key": "'key_1'"}),
    "dashboard_sessions_csrf_length": _SESSION_INSERT.format(**{**_SESSION_OK, "csrf": "'short'"}),
    "dashboard_sessions_expiry_after_creation": _SESSION_INSERT.format(
        **{**_SESSION_OK, "expires": "now() - interval '1 hour'"}),
    "report_spend_hours_whole_hour": (
        "INSERT INTO cycles.report_spend_hours (tenant_id, hour_start, operation_lead, scope, unit, spent, debt,"
        " reserved, released, expired, charges) VALUES ('t1', '2026-01-01 10:30+00', true, 'tenant:t1', 'TOKENS',"
        " 0, 0, 0, 0, 0, 0)"),
    "report_spend_hours_charges_not_negative": (
        "INSERT INTO cycles.report_spend_hours (tenant_id, hour_start, operation_lead, scope, unit, spent, debt,"
        " reserved, released, expired, charges) VALUES ('t1', '2026-01-01 10:00+00', true, 'tenant:t1', 'TOKENS',"
        " 0, 0, 0, 0, 0, -1)"),
    "report_summary_state_ordered": (
        "INSERT INTO cycles.report_summary_state (name, summarised_from, summarised_to)"
        " VALUES ('spend', '2026-01-02', '2026-01-01')"),
    "maintenance_jobs_runs_nonnegative":
        "INSERT INTO cycles.maintenance_jobs (job, next_due_at, runs) VALUES ('prune_x', now(), -1)",
    "maintenance_runs_finished_after_start": (
        "WITH j AS (INSERT INTO cycles.maintenance_jobs (job, next_due_at) VALUES ('prune_x', now()))"
        " INSERT INTO cycles.maintenance_runs (job, run, started_at, finished_at)"
        " VALUES ('prune_x', 1, now(), now() - interval '1 second')"),
}


@pytest.fixture
def baseline(db: psycopg.Connection) -> psycopg.Connection:
    """One valid row in every table (superuser, direct writes where no function exists yet)."""
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    db.execute("SELECT cycles.create_budget('tenant:acme', 'TOKENS', 100)")
    db.execute("SELECT cycles.create_api_key('acme', 'agent')")
    db.execute("SELECT cycles.fund_budget('tenant:acme', 'TOKENS', 'CREDIT', 5, 'k1')")
    db.execute("SELECT cycles.create_policy('acme', 'caps', 'tenant:acme/*')")
    db.execute("""
        INSERT INTO cycles.reservations (
            reservation_id, tenant_id, idempotency_key, subject, action, unit, estimate, scope_path,
            affected_scopes, budgeted_scopes, overage_policy, created_at_ms, expires_at_ms, grace_period_ms,
            ttl_ms, max_extensions)
        VALUES ('res_1', 'acme', 'r1', '{}', '{}', 'TOKENS', 0, 'tenant:acme', '{tenant:acme}', '{tenant:acme}',
                'REJECT', 1000, 2000, 0, 1000, 3)""")
    return db


def test_every_check_constraint_has_a_violation(db: psycopg.Connection) -> None:
    names = {row[0] for row in db.execute("""
        SELECT c.conname FROM pg_catalog.pg_constraint AS c
        WHERE c.connamespace = 'cycles'::regnamespace AND c.contype = 'c'""")}
    assert names == set(VIOLATIONS), (
        f"constraints without a violating statement: {sorted(names - set(VIOLATIONS))}; "
        f"statements for constraints that no longer exist: {sorted(set(VIOLATIONS) - names)}")


@pytest.mark.parametrize("constraint", sorted(VIOLATIONS))
def test_check_constraint_rejects_violation(baseline: psycopg.Connection, constraint: str) -> None:
    with pytest.raises(errors.CheckViolation) as caught:
        baseline.execute(VIOLATIONS[constraint])
    assert caught.value.diag.constraint_name == constraint


def test_baseline_is_valid(baseline: psycopg.Connection) -> None:
    """The fixture itself violates nothing: each failure above is the statement's doing."""
    assert baseline.execute("SELECT count(*) FROM cycles.reservations").fetchone() == (1,)
    assert baseline.execute("SELECT * FROM cycles.verify_ledger()").fetchall() == []
