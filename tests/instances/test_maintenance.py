"""Maintenance: the retention functions (cycles.prune_*), the election of one
runner per job and interval (cycles.maintenance_claim), and the loop of
app.maintenance run in-process against a real database."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import psycopg
import pytest

from app.config import Settings
from app.db import Database, Timeouts
from app.maintenance import jobs, run_job
from app.pgcluster import Cluster
from tests.api.provision import Conn, funded_tenant, reserve_body
from tests.sql.admin_calls import call, fails
from tests.webhooks.conftest import emit, subscribe

CLAIM = "SELECT cycles.maintenance_claim(p_job => %(job)s, p_interval_ms => %(ms)s, p_runner => %(runner)s)"


def claim(db: Conn, job: str = "prune_events", ms: int = 3_600_000, runner: str = "test") -> dict[str, Any]:
    result: dict[str, Any] = call(db, CLAIM, job=job, ms=ms, runner=runner)
    return result


def make_due(db: Conn, job: str) -> None:
    """As if the interval had passed (instead of sleeping through it)."""
    db.execute("UPDATE cycles.maintenance_jobs SET next_due_at = clock_timestamp() WHERE job = %s", (job,))


# Election -----------------------------------------------------------------------------------------


def test_one_claim_per_interval(db: Conn) -> None:
    assert claim(db) == {"claimed": True, "run": 1}
    assert claim(db) == {"claimed": False}
    assert claim(db, runner="other") == {"claimed": False}
    make_due(db, "prune_events")
    assert claim(db, runner="other") == {"claimed": True, "run": 2}
    runs = db.execute("SELECT run, runner FROM cycles.maintenance_runs WHERE job = 'prune_events' ORDER BY run")
    assert runs.fetchall() == [(1, "test"), (2, "other")]
    # Jobs are elected independently.
    assert claim(db, job="prune_dashboard_sessions")["claimed"] is True


def test_a_claimer_in_progress_makes_others_give_up_and_a_dead_one_releases_the_job(
        db: Conn, pg_cluster: Cluster) -> None:
    conninfo = pg_cluster.conninfo(db.info.dbname)
    with psycopg.connect(conninfo) as first:
        # A claim not yet committed (its runner is mid-transaction): the
        # others return at once instead of queueing behind it.
        assert claim(first)["claimed"] is True
        assert claim(db) == {"claimed": False}
        # The runner dies: its connection drops, the transaction rolls back
        # and the transaction-scoped lock goes with it, once its backend has
        # noticed and ended (it does so shortly after the drop).
        pid = first.info.backend_pid
        first.pgconn.finish()
    deadline = time.monotonic() + 30
    while db.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is not None:
        assert time.monotonic() < deadline, "the dropped connection's backend never ended"
        time.sleep(0.01)
    assert claim(db) == {"claimed": True, "run": 1}


def test_finish_records_the_outcome_once(db: Conn) -> None:
    run = claim(db)["run"]
    finish = "SELECT cycles.maintenance_finish(p_job => 'prune_events', p_run => %(run)s, p_result => %(r)s::jsonb)"
    assert call(db, finish, run=run, r='{"deleted": 3}') == {}
    assert call(db, finish, run=run, r='{"deleted": 99}') == {}
    status = call(db, "SELECT cycles.maintenance_status()")["jobs"]
    assert [(job["job"], job["runs"], job["last_result"]) for job in status] == [("prune_events", 1, {"deleted": 3})]
    assert status[0]["last_runner"] == "test" and "last_finished_at" in status[0]
    fails(db, "NOT_FOUND", "SELECT cycles.maintenance_finish('prune_events', 42)")


@pytest.mark.parametrize("sql", [
    "SELECT cycles.maintenance_claim('Bad-Name', 1000)",
    "SELECT cycles.maintenance_claim('', 1000)",
    "SELECT cycles.maintenance_claim('prune_events', 0)",
    "SELECT cycles.maintenance_claim('prune_events', 604800001)",
    "SELECT cycles.prune_idempotency_records(23)",
    "SELECT cycles.prune_idempotency_records(169)",
    "SELECT cycles.prune_idempotency_records(24, 0)",
    "SELECT cycles.prune_webhook_deliveries(0)",
    "SELECT cycles.prune_events(36501)",
    "SELECT cycles.prune_events(90, 100001)",
    "SELECT cycles.prune_dashboard_sessions(NULL)",
])
def test_bad_arguments_are_refused_and_change_nothing(db: Conn, sql: str) -> None:
    fails(db, "INVALID_REQUEST", sql)
    assert call(db, "SELECT count(*) FROM cycles.maintenance_jobs") == 0


def test_tenant_keys_cannot_run_maintenance(db: Conn) -> None:
    tenant = funded_tenant(db)
    ctx = json.dumps({"api_key": tenant.api_key})
    fails(db, "INSUFFICIENT_PERMISSIONS", "SELECT cycles.prune_events(p_ctx => %(ctx)s::jsonb)", ctx=ctx)
    fails(db, "INSUFFICIENT_PERMISSIONS",
          "SELECT cycles.maintenance_claim('prune_events', 1000, p_ctx => %(ctx)s::jsonb)", ctx=ctx)


# Retention ----------------------------------------------------------------------------------------


def _age_idempotency(db: Conn, tenant_id: str, hours: int) -> None:
    db.execute("UPDATE cycles.idempotency_records SET created_at = created_at - make_interval(hours => %s),"
               " expires_at = expires_at - make_interval(hours => %s) WHERE tenant_id = %s",
               (hours, hours, tenant_id))


def test_idempotency_records_outside_the_window_are_pruned_but_a_live_reservation_keeps_its_reserve(
        db: Conn) -> None:
    tenant = funded_tenant(db)
    live = call(db, "SELECT cycles.reserve(%(key)s, %(req)s::jsonb)", key=tenant.api_key,
                req=json.dumps(reserve_body(tenant, ttl_ms=86_400_000)))
    settled = call(db, "SELECT cycles.reserve(%(key)s, %(req)s::jsonb)", key=tenant.api_key,
                   req=json.dumps(reserve_body(tenant)))
    call(db, "SELECT cycles.release(%(key)s, %(id)s, %(req)s::jsonb)", key=tenant.api_key,
         id=settled["reservation_id"], req=json.dumps({"idempotency_key": "rel-1"}))
    # Two days old: inside a 168 h window, outside a 24 h one.
    _age_idempotency(db, tenant.tenant_id, 48)
    records = "SELECT endpoint, reservation_id FROM cycles.idempotency_records ORDER BY endpoint, reservation_id"
    before = db.execute(records).fetchall()
    assert len(before) == 3
    assert call(db, "SELECT cycles.prune_idempotency_records(168)") == {"deleted": 0, "more": False}
    assert call(db, "SELECT cycles.prune_idempotency_records(24)") == {"deleted": 2, "more": False}
    assert db.execute(records).fetchall() == [("reserve", live["reservation_id"])]
    # Past its expiry a record goes whatever the window.
    db.execute("UPDATE cycles.idempotency_records SET expires_at = clock_timestamp() - interval '1 second'")
    assert call(db, "SELECT cycles.prune_idempotency_records(168)") == {"deleted": 1, "more": False}


def test_pruning_goes_in_batches(db: Conn) -> None:
    tenant = funded_tenant(db)
    for _ in range(5):
        call(db, "SELECT cycles.reserve(%(key)s, %(req)s::jsonb)", key=tenant.api_key,
             req=json.dumps(reserve_body(tenant, dry_run=True)))
    db.execute("UPDATE cycles.idempotency_records SET expires_at = created_at + interval '1 microsecond'")
    batches = [call(db, "SELECT cycles.prune_idempotency_records(24, 2)") for _ in range(4)]
    assert batches == [{"deleted": 2, "more": True}, {"deleted": 2, "more": True},
                       {"deleted": 1, "more": False}, {"deleted": 0, "more": False}]


def test_settled_deliveries_and_unneeded_events_are_pruned_pending_ones_are_kept(db: Conn) -> None:
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    subscribe(db, "https://hooks.example.com/a")
    emit(db, 4)
    # Two deliveries settled long ago, two still pending; every event old.
    db.execute("""
        UPDATE cycles.webhook_deliveries SET status = 'SUCCESS', completed_at = now() - interval '30 days'
        WHERE seq IN (SELECT seq FROM cycles.webhook_deliveries ORDER BY seq LIMIT 2)""")
    db.execute("UPDATE cycles.events SET created_at = created_at - interval '200 days'")
    assert call(db, "SELECT cycles.prune_webhook_deliveries(31)")["deleted"] == 0
    assert call(db, "SELECT cycles.prune_webhook_deliveries(14)") == {"deleted": 2, "more": False}
    assert call(db, "SELECT count(*) FROM cycles.webhook_deliveries WHERE status = 'PENDING'") == 2
    pending_events = call(db, "SELECT count(*) FROM cycles.events AS e WHERE EXISTS ("
                              " SELECT FROM cycles.webhook_deliveries AS d WHERE d.event_seq = e.seq)")
    assert pending_events == 2
    total = call(db, "SELECT count(*) FROM cycles.events")
    assert call(db, "SELECT cycles.prune_events(365)")["deleted"] == 0
    pruned = call(db, "SELECT cycles.prune_events(90)")
    assert pruned == {"deleted": total - 2, "more": False}
    assert call(db, "SELECT count(*) FROM cycles.events") == 2


def test_only_expired_dashboard_sessions_are_pruned(db: Conn) -> None:
    insert = ("INSERT INTO cycles.dashboard_sessions (session_hash, principal_kind, csrf_token, created_at,"
              " expires_at) VALUES (%s, 'admin', %s, now() - interval '2 hours', now() + %s::interval)")
    for name, lifetime in (("old", "-1 hour"), ("live", "1 hour")):
        db.execute(insert, (hashlib.sha256(name.encode()).digest(), "c" * 32, lifetime))
    assert call(db, "SELECT cycles.prune_dashboard_sessions()") == {"deleted": 1, "more": False}
    assert call(db, "SELECT count(*) FROM cycles.dashboard_sessions WHERE expires_at > now()") == 1


# The loop's job runner -----------------------------------------------------------------------------


def test_run_job_prunes_to_the_end_once_per_interval(db: Conn, pg_cluster: Cluster) -> None:
    tenant = funded_tenant(db)
    for _ in range(7):
        call(db, "SELECT cycles.reserve(%(key)s, %(req)s::jsonb)", key=tenant.api_key,
             req=json.dumps(reserve_body(tenant, dry_run=True)))
    db.execute("UPDATE cycles.idempotency_records SET expires_at = created_at + interval '1 microsecond'")
    settings = Settings(database_url=pg_cluster.conninfo(db.info.dbname), maintenance_batch_size=3)
    job = next(j for j in jobs(settings) if j.name == "prune_idempotency_records")

    async def twice() -> list[dict[str, Any] | None]:
        assert settings.database_url is not None
        database = Database(settings.database_url, 1, 2, Timeouts(0, 0), pool_timeout_s=5)
        await database.open()
        try:
            return [await run_job(database, job, 3_600_000, "runner-a"),
                    await run_job(database, job, 3_600_000, "runner-b")]
        finally:
            await database.close()

    first, second = asyncio.run(twice())
    assert first == {"deleted": 7, "batches": 3}
    assert second is None
    assert call(db, "SELECT count(*) FROM cycles.idempotency_records") == 0
    runs = db.execute("SELECT run, runner, result FROM cycles.maintenance_runs").fetchall()
    assert runs == [(1, "runner-a", {"deleted": 7, "batches": 3})]


def test_upkeep_jobs_create_partitions_ahead_and_bring_the_spend_summaries_up_to_date(
        db: Conn, pg_cluster: Cluster) -> None:
    settings = Settings(database_url=pg_cluster.conninfo(db.info.dbname))
    upkeep = {j.name: j for j in jobs(settings)}

    async def run_both() -> list[dict[str, Any] | None]:
        assert settings.database_url is not None
        database = Database(settings.database_url, 1, 2, Timeouts(0, 0), pool_timeout_s=5)
        await database.open()
        try:
            return [await run_job(database, upkeep[name], 3_600_000, "runner")
                    for name in ("ensure_ledger_partitions", "summarise_dashboard_spend")]
        finally:
            await database.close()

    assert all(outcome == {"deleted": 0, "batches": 1} for outcome in asyncio.run(run_both()))
    months_ahead = db.execute("""
        SELECT count(*) FROM pg_catalog.pg_inherits AS i
        JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'cycles.ledger_entries'::regclass
          AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) LIKE 'FOR VALUES FROM (''' || to_char(
              date_trunc('month', clock_timestamp() AT TIME ZONE 'UTC') + interval '2 months', 'YYYY-MM-DD') || '%%'
    """).fetchone()
    assert months_ahead == (1,)
    summarised_to = call(db, "SELECT summarised_to FROM cycles.dashboard_summary_state WHERE name = 'spend'")
    expected = call(db, "SELECT date_trunc('hour', clock_timestamp() - interval '2 minutes', 'UTC')")
    assert summarised_to == expected
    fails(db, "INVALID_REQUEST", "SELECT cycles.summarise_dashboard_spend(p_budget_ms => 0)")
