"""Two server instances (two granian workers each, every worker running the
expiry sweeper and the maintenance loop) on one database, under a load of
short-TTL reservations; one instance is SIGKILLed mid-run.

Every reservation must end exactly once (one EXPIRE ledger row per budget
for an expired one, none for a committed one), every maintenance job must
have run once per interval (not once per process), the survivor must go on
sweeping and pruning, and the ledger must reconcile."""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from app.pgcluster import Cluster
from tests.api.provision import Conn, funded_tenant, reserve_body
from tests.instances.servers import Instance, LoadResult, new_admin_key, run_load
from tests.server import fresh_database
from tests.sql.admin_calls import call

SWEEP_INTERVAL_MS = 100
MAINTENANCE_INTERVAL_MS = 1000
TTL_MS = 1000
LOAD_THREADS = 4
LOAD_BEFORE_KILL_S = 3.0
LOAD_AFTER_KILL_S = 4.0
EXPIRED_SESSIONS = 40


@pytest.fixture
def instance_db(pg_cluster: Cluster) -> Iterator[tuple[str, Conn]]:
    conninfo = fresh_database(pg_cluster, "cycles_instances")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        yield conninfo, conn


@pytest.fixture
def log_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cycles-instances-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _wait_until_settled(conn: Conn, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while call(conn, "SELECT count(*) FROM cycles.reservations WHERE status = 'ACTIVE'"):
        if time.monotonic() > deadline:
            raise AssertionError("reservations still ACTIVE long after their deadline: nobody sweeps")
        time.sleep(0.1)


def _wait_for_run_after(conn: Conn, when: datetime, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    query = ("SELECT count(DISTINCT job) FROM cycles.maintenance_runs"
             " WHERE started_at > %s AND finished_at IS NOT NULL")
    while call(conn, query.replace("%s", "%(w)s"), w=when) < 4:
        if time.monotonic() > deadline:
            raise AssertionError("no maintenance run after the kill: nobody took the jobs over")
        time.sleep(0.1)


def test_two_instances_expire_each_reservation_once_and_survive_a_kill(
        instance_db: tuple[str, Conn], log_dir: Path) -> None:
    conninfo, conn = instance_db
    tenant = funded_tenant(conn, 10**12, 10**12)
    conn.execute(
        "INSERT INTO cycles.dashboard_sessions (session_hash, principal_kind, csrf_token, created_at, expires_at)"
        " SELECT sha256(i::text::bytea), 'admin', repeat('c', 32), now() - interval '2 hours',"
        " now() - interval '1 hour' FROM generate_series(1, %s) AS i", (EXPIRED_SESSIONS,))
    admin_key = new_admin_key()
    env = {"CYCLES_SWEEP_INTERVAL_MS": str(SWEEP_INTERVAL_MS),
           "CYCLES_MAINTENANCE_INTERVAL_MS": str(MAINTENANCE_INTERVAL_MS)}
    victim = Instance(conninfo, log_dir / "victim.log", admin_key, **env)
    survivor = Instance(conninfo, log_dir / "survivor.log", admin_key, **env)
    result = LoadResult()
    stop = threading.Event()
    threads = [threading.Thread(target=run_load, args=([victim, survivor], tenant, stop, result, 0.3, TTL_MS, seed))
               for seed in range(LOAD_THREADS)]
    victim.start()
    survivor.start()
    try:
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(LOAD_BEFORE_KILL_S)
        victim.kill()
        killed_at: datetime = call(conn, "SELECT clock_timestamp()")
        time.sleep(LOAD_AFTER_KILL_S)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        load_s = time.monotonic() - started
        _wait_until_settled(conn)
        _wait_for_run_after(conn, killed_at)
        survivor_log = survivor.log()
    finally:
        stop.set()
        victim.stop()
        survivor.stop()

    assert "internal error" not in survivor_log, survivor_log
    assert result.statuses[500] == 0 and result.statuses[200] > 0, result.statuses

    # Every reservation ended exactly once.
    counts = dict(conn.execute("SELECT status, count(*) FROM cycles.reservations GROUP BY status").fetchall())
    assert set(counts) <= {"COMMITTED", "EXPIRED", "RELEASED"}, counts
    assert counts.get("EXPIRED", 0) > 0 and counts.get("COMMITTED", 0) > 0, counts
    # One EXPIRE ledger row per budget of an expired reservation, none elsewhere.
    wrong_expires = conn.execute("""
        SELECT r.reservation_id, r.status, count(l.*) AS expire_rows, cardinality(r.budgeted_scopes) AS budgets
        FROM cycles.reservations AS r
        LEFT JOIN cycles.ledger_entries AS l ON l.reservation_id = r.reservation_id AND l.operation = 'EXPIRE'
        GROUP BY r.reservation_id
        HAVING count(l.*) <> CASE WHEN r.status = 'EXPIRED' THEN cardinality(r.budgeted_scopes) ELSE 0 END
           OR count(DISTINCT l.scope) <> count(l.*)""").fetchall()
    assert wrong_expires == []
    double_events = conn.execute("""
        SELECT e.data ->> 'reservation_id', count(*) FROM cycles.events AS e
        WHERE e.event_type = 'reservation.expired' GROUP BY 1 HAVING count(*) > 1""").fetchall()
    assert double_events == []
    assert call(conn, "SELECT count(*) FROM cycles.events WHERE event_type = 'reservation.expired'") \
        == counts["EXPIRED"]
    # Every acknowledged commit stands.
    committed = {row[0] for row in conn.execute(
        "SELECT reservation_id FROM cycles.reservations WHERE status = 'COMMITTED'")}
    assert set(result.committed) <= committed

    # The ledger reconciles and nothing is held any more.
    assert conn.execute("SELECT * FROM cycles.verify_ledger()").fetchall() == []
    assert call(conn, "SELECT coalesce(sum(reserved), 0) FROM cycles.budgets") == 0
    spent = call(conn, "SELECT spent FROM cycles.budgets WHERE scope = %(s)s", s=tenant.scope)
    assert spent == 600 * counts["COMMITTED"]

    # The survivor kept sweeping: reservations made after the kill expired too.
    swept_after_kill = call(conn, """
        SELECT count(*) FROM cycles.reservations
        WHERE status = 'EXPIRED' AND created_at_ms > (extract(epoch FROM %(k)s::timestamptz) * 1000)::bigint""",
                            k=killed_at)
    assert swept_after_kill > 0

    # Maintenance: each job ran once per interval (four processes tried),
    # including after the kill, and the expired sessions were pruned once.
    runs = conn.execute("""
        SELECT job, started_at, finished_at, result FROM cycles.maintenance_runs ORDER BY job, started_at""").fetchall()
    by_job: dict[str, list[tuple[datetime, datetime | None, dict[str, int] | None]]] = {}
    for job, started_at, finished_at, outcome in runs:
        by_job.setdefault(job, []).append((started_at, finished_at, outcome))
    assert set(by_job) == {"prune_idempotency_records", "prune_webhook_deliveries", "prune_events",
                           "prune_dashboard_sessions"}
    for job, job_runs in by_job.items():
        gaps = [(b[0] - a[0]).total_seconds() * 1000 for a, b in itertools.pairwise(job_runs)]
        assert all(gap >= MAINTENANCE_INTERVAL_MS for gap in gaps), (job, gaps)
        assert any(started > killed_at for started, _, _ in job_runs), job
    session_runs = by_job["prune_dashboard_sessions"]
    assert sum((outcome or {}).get("deleted", 0) for _, _, outcome in session_runs) == EXPIRED_SESSIONS
    assert call(conn, "SELECT count(*) FROM cycles.dashboard_sessions") == 0

    print(json.dumps({
        "test": "two_instances", "load_s": round(load_s, 1), "requests": result.requests,
        "requests_per_s": round(result.requests / load_s), "statuses": dict(result.statuses),
        "transport_errors_at_kill": result.transport_errors, "reservations": sum(counts.values()),
        "expired": counts.get("EXPIRED", 0), "expired_after_kill": swept_after_kill,
        "committed": counts.get("COMMITTED", 0), "kills": 1,
        "maintenance_runs": {job: len(job_runs) for job, job_runs in by_job.items()}}))


def test_a_dead_sweepers_lock_goes_with_its_connection(instance_db: tuple[str, Conn]) -> None:
    """The expiry sweeper's election, deterministically: while one sweeper is
    inside cycles.expire_due the others sweep nothing; when its process dies
    the lock is gone and the next sweep, from anyone, does the work."""
    conninfo, conn = instance_db
    tenant = funded_tenant(conn)
    for _ in range(3):
        call(conn, "SELECT cycles.reserve(%(k)s, %(r)s::jsonb)", k=tenant.api_key,
             r=json.dumps(reserve_body(tenant, ttl_ms=1000, grace_period_ms=0)))
    conn.execute("UPDATE cycles.reservations SET created_at_ms = created_at_ms - 60000,"
                 " expires_at_ms = expires_at_ms - 60000")
    runner = psycopg.connect(conninfo)
    # The runner is mid-sweep: lock taken, its batch not committed.
    assert call(runner, "SELECT cycles.expire_due(p_batch_size => 2)") == 2
    assert call(conn, "SELECT cycles.expire_due()") == 0
    runner_pid = runner.info.backend_pid
    runner.pgconn.finish()  # the process dies: its connection drops
    deadline = time.monotonic() + 10
    while call(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %(p)s", p=runner_pid):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert call(conn, "SELECT cycles.expire_due()") == 3
    assert call(conn, "SELECT count(*) FROM cycles.ledger_entries WHERE operation = 'EXPIRE'") \
        == 3 * 2  # tenant and workspace budgets
    assert conn.execute("SELECT * FROM cycles.verify_ledger()").fetchall() == []
