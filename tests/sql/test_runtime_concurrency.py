"""Concurrent runtime calls, each thread on its own connection: no
oversubscription, no deadlock, same-key requests collapse into one, and
every counter still equals its ledger afterwards."""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tests.sql.runtime_fixtures import (
    assert_ledger_consistent,
    budget,
    create_budget,
    create_key,
    create_tenant,
    reserve_request,
    standard_fixture,
)

W1 = "tenant:acme/workspace:w1"
EXPECTED_REFUSALS = {
    "BUDGET_EXCEEDED", "OVERDRAFT_LIMIT_EXCEEDED", "DEBT_OUTSTANDING", "RESERVATION_EXPIRED",
    "RESERVATION_FINALIZED", "MAX_EXTENSIONS_EXCEEDED",
}


def run_in_threads(conninfo: str, workers: list[Callable[[psycopg.Connection], Any]]) -> list[Any]:
    """Runs each worker on its own autocommit connection, all released at
    once; returns their results (or the exception each raised)."""
    results: list[Any] = [None] * len(workers)
    barrier = threading.Barrier(len(workers))

    def run(index: int) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            barrier.wait()
            try:
                results[index] = workers[index](conn)
            except Exception as exc:  # collected and asserted on by the test
                results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def error_code(exc: psycopg.Error) -> str:
    detail = json.loads(exc.diag.message_detail or "{}")
    return str(detail.get("error", exc.sqlstate))


def reserve_call(key: str, request: dict[str, Any]) -> Callable[[psycopg.Connection], Any]:
    def work(conn: psycopg.Connection) -> Any:
        row = conn.execute("SELECT cycles.reserve(%s, %s)", (key, Jsonb(request))).fetchone()
        return row[0] if row else None
    return work


def test_parallel_reserves_never_oversubscribe(db: psycopg.Connection, pg_cluster: Any) -> None:
    fx = standard_fixture(db)
    results = run_in_threads(pg_cluster.conninfo(db.info.dbname),
                             [reserve_call(fx.ka, reserve_request(10_000)) for _ in range(20)])
    allowed = [r for r in results if isinstance(r, dict)]
    refused = [error_code(r) for r in results if isinstance(r, psycopg.Error)]
    assert len(allowed) == 10 and refused == ["BUDGET_EXCEEDED"] * 10, results
    w1 = budget(db, W1)
    assert (w1["reserved"], w1["remaining"]) == (100_000, 0)
    assert budget(db, "tenant:acme")["reserved"] == 100_000
    assert_ledger_consistent(db)


def test_concurrent_same_key_reserves_create_one_reservation(db: psycopg.Connection, pg_cluster: Any) -> None:
    fx = standard_fixture(db)
    request = reserve_request(1_000, key="one-key")
    results = run_in_threads(pg_cluster.conninfo(db.info.dbname),
                             [reserve_call(fx.ka, request) for _ in range(10)])
    assert all(isinstance(r, dict) for r in results), results
    stable = [{k: v for k, v in r.items() if k != "remaining_ttl_ms"} for r in results]
    assert all(s == stable[0] for s in stable)
    assert db.execute("SELECT count(*) FROM cycles.reservations").fetchone() == (1,)
    assert budget(db, W1)["reserved"] == 1_000
    assert_ledger_consistent(db)


LEVELS = ["workspace", "app", "workflow", "agent", "toolset"]


def storm_worker(key: str, seed: int, operations: int) -> Callable[[psycopg.Connection], Counter[str]]:
    def work(conn: psycopg.Connection) -> Counter[str]:
        rng = random.Random(seed)
        outcomes: Counter[str] = Counter()
        mine: list[tuple[str, int]] = []
        for _ in range(operations):
            choice = rng.random()
            try:
                if choice < 0.4 or not mine:
                    depth = rng.randint(0, len(LEVELS))
                    subject = {"tenant": "storm", **{lv: ("x" if lv != "toolset" else rng.choice("ab"))
                                                     for lv in LEVELS[:depth]}}
                    estimate = rng.randint(0, 3_000)
                    request = reserve_request(estimate, subject=subject, ttl_ms=1000 + rng.randint(0, 1000),
                                              grace_period_ms=0, overage_policy=rng.choice(
                                                  ["ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT", "REJECT"]))
                    row = conn.execute("SELECT cycles.reserve(%s, %s)", (key, Jsonb(request))).fetchone()
                    assert row is not None
                    mine.append((row[0]["reservation_id"], estimate))
                elif choice < 0.6:
                    rid, estimate = mine.pop(rng.randrange(len(mine)))
                    actual = max(0, estimate + rng.randint(-1_000, 1_000))
                    conn.execute("SELECT cycles.commit(%s, %s, %s)", (key, rid, Jsonb({
                        "idempotency_key": uuid.uuid4().hex,
                        "actual": {"unit": "USD_MICROCENTS", "amount": actual}})))
                elif choice < 0.72:
                    rid, _ = mine.pop(rng.randrange(len(mine)))
                    conn.execute("SELECT cycles.release(%s, %s, %s)",
                                 (key, rid, Jsonb({"idempotency_key": uuid.uuid4().hex})))
                elif choice < 0.8:
                    rid, _ = mine[rng.randrange(len(mine))]
                    conn.execute("SELECT cycles.extend(%s, %s, %s)", (key, rid, Jsonb(
                        {"idempotency_key": uuid.uuid4().hex, "extend_by_ms": 500})))
                elif choice < 0.88:
                    rid, _ = mine[rng.randrange(len(mine))]
                    # Age the reservation past its deadline, then sweep.
                    conn.execute("UPDATE cycles.reservations SET expires_at_ms = created_at_ms + 1,"
                                 " created_at_ms = created_at_ms - 10000 WHERE reservation_id = %s"
                                 " AND status = 'ACTIVE'", (rid,))
                    conn.execute("SELECT cycles.expire_due(50)")
                else:
                    depth = rng.randint(0, len(LEVELS))
                    conn.execute("SELECT cycles.create_event(%s, %s)", (key, Jsonb({
                        "idempotency_key": uuid.uuid4().hex,
                        "subject": {"tenant": "storm", **{lv: "x" for lv in LEVELS[:depth]}},
                        "action": {"kind": "tool.call", "name": "t"},
                        "actual": {"unit": "USD_MICROCENTS", "amount": rng.randint(0, 500)},
                        "overage_policy": rng.choice(["ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT"])})))
                outcomes["ok"] += 1
            except psycopg.Error as exc:
                code = error_code(exc)
                if code not in EXPECTED_REFUSALS:
                    raise
                outcomes[code] += 1
        return outcomes
    return work


def test_mixed_storm_keeps_counters_equal_to_the_ledger(db: psycopg.Connection, pg_cluster: Any) -> None:
    create_tenant(db, "storm")
    scope = "tenant:storm"
    create_budget(db, scope, 2_000_000)
    for level in LEVELS[:-1]:
        scope += f"/{level}:x"
        create_budget(db, scope, 400_000, overdraft_limit=5_000 if level == "app" else 0)
    create_budget(db, scope + "/toolset:a", 30_000, overdraft_limit=2_000)
    create_budget(db, scope + "/toolset:b", 30_000)
    key = create_key(db, "storm")

    results = run_in_threads(pg_cluster.conninfo(db.info.dbname),
                             [storm_worker(key, seed, 60) for seed in range(8)])
    failures = [r for r in results if not isinstance(r, Counter)]
    assert failures == []
    totals: Counter[str] = sum(results, Counter())
    assert totals["ok"] > 200, totals

    assert_ledger_consistent(db)
    # reserved on every budget is exactly what its ACTIVE reservations hold.
    mismatched = db.execute(
        """
        SELECT b.scope, b.reserved, coalesce(sum(r.estimate), 0)
        FROM cycles.budgets AS b
        LEFT JOIN cycles.reservations AS r
          ON r.status = 'ACTIVE' AND r.unit = b.unit AND b.scope = ANY (r.budgeted_scopes)
        WHERE b.tenant_id = 'storm'
        GROUP BY b.tenant_id, b.budget_id
        HAVING b.reserved <> coalesce(sum(r.estimate), 0)
        """).fetchall()
    assert mismatched == []
    # Every reservation ended in one state, with one expiry event per EXPIRED row.
    expired = db.execute("SELECT count(*) FROM cycles.reservations WHERE status = 'EXPIRED'").fetchone()
    expired_events = db.execute(
        "SELECT count(*) FROM cycles.events WHERE event_type = 'reservation.expired'").fetchone()
    assert expired == expired_events
