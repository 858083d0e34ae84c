"""cycles.reserve_batch: each item is exactly a cycles.reserve call of its own
(refusals stay with their item, identical to the single call's error), the
batch commits together, a failure that is not a refusal rolls everything
back, and its locks are taken up front in the global order (no deadlock)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
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
from tests.sql.test_runtime_concurrency import run_in_threads

W1 = "tenant:acme/workspace:w1"


def batch(conn: psycopg.Connection, key: str, requests: list[dict[str, Any]],
          ctxs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The rows of one cycles.reserve_batch call, decoded."""
    rows = conn.execute(
        "SELECT o_item, o_response, o_sqlstate, o_message, o_detail"
        " FROM cycles.reserve_batch(%s, %s::jsonb[], %s::jsonb[])",
        (key, [json.dumps(r) for r in requests],
         [json.dumps(c) for c in (ctxs or [{} for _ in requests])])).fetchall()
    assert [row[0] for row in rows] == list(range(1, len(requests) + 1))
    return [{"response": row[1], "sqlstate": row[2], "message": row[3],
             "detail": json.loads(row[4]) if row[4] else None} for row in rows]


def single_error(db: psycopg.Connection, key: str, request: dict[str, Any]) -> dict[str, Any]:
    """The error the single cycles.reserve call raises for this request."""
    with pytest.raises(psycopg.Error) as info:
        db.execute("SELECT cycles.reserve(%s, %s)", (key, Jsonb(request)))
    diag = info.value.diag
    return {"response": None, "sqlstate": diag.sqlstate, "message": diag.message_primary,
            "detail": json.loads(diag.message_detail or "null")}


def ledger_chain_breaks(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    return db.execute("SELECT * FROM cycles.verify_ledger_chain()").fetchall()


def test_refused_items_roll_back_alone_with_the_single_calls_error(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    invalid = reserve_request(10)
    del invalid["action"]
    rows = batch(db, fx.ka, [
        reserve_request(60_000),
        reserve_request(60_000),            # W1 (100,000) has 40,000 left: refused
        invalid,
        reserve_request(30_000, subject={"tenant": "beta"}),   # another tenant's subject: FORBIDDEN
        reserve_request(40_000),
    ])
    assert [r["response"] is not None for r in rows] == [True, False, False, False, True]
    exceeded = rows[1]
    assert exceeded["sqlstate"] == "CY901" and exceeded["detail"]["error"] == "BUDGET_EXCEEDED"
    assert exceeded["detail"]["details"]["remaining"] == 40_000
    # State-independent refusals are byte for byte what the single call raises.
    assert rows[2] == single_error(db, fx.ka, invalid)
    assert rows[3] == single_error(db, fx.ka, reserve_request(30_000, subject={"tenant": "beta"}))
    # The same refusal made alone now (W1 is exhausted) has the same shape.
    alone = single_error(db, fx.ka, reserve_request(60_000))
    assert (alone["sqlstate"], alone["detail"]["error"]) == ("CY901", "BUDGET_EXCEEDED")

    assert budget(db, W1)["reserved"] == 100_000
    assert budget(db, "tenant:acme")["reserved"] == 100_000
    ids = [r["response"]["reservation_id"] for r in rows if r["response"]]
    assert db.execute("SELECT count(*) FROM cycles.reservations").fetchone() == (2,)
    assert db.execute("SELECT count(*) FROM cycles.reservations WHERE reservation_id = ANY (%s)",
                      (ids,)).fetchone() == (2,)
    # Only the two successes left idempotency records.
    assert db.execute("SELECT count(*) FROM cycles.idempotency_records").fetchone() == (2,)
    assert_ledger_consistent(db)
    assert ledger_chain_breaks(db) == []


def test_items_commit_together_in_one_transaction(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    # Records the top-level transaction id of every reservation written.
    db.execute("CREATE TEMPORARY TABLE written (reservation_id text, top_xid bigint)")
    db.execute("""
        CREATE FUNCTION pg_temp.record_xid() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO pg_temp.written VALUES (NEW.reservation_id, txid_current());
            RETURN NEW;
        END;
        $$""")
    db.execute("CREATE TRIGGER record_xid AFTER INSERT ON cycles.reservations"
               " FOR EACH ROW EXECUTE FUNCTION pg_temp.record_xid()")
    rows = batch(db, fx.ka, [reserve_request(1, subject={"tenant": "acme", "agent": f"a{n}"}) for n in range(5)],
                 [{"request_id": f"req_{n}", "trace_id": "0" * 31 + "1"} for n in range(5)])
    ids = [r["response"]["reservation_id"] for r in rows]
    assert db.execute("SELECT count(*), count(DISTINCT top_xid) FROM pg_temp.written").fetchone() == (5, 1)
    # Every item recorded its own context.
    assert db.execute("SELECT array_agg(request_id ORDER BY request_id) FROM cycles.reservations"
                      " WHERE reservation_id = ANY (%s)", (ids,)).fetchone() == ([f"req_{n}" for n in range(5)],)
    assert db.execute(
        "SELECT count(DISTINCT request_id) FROM cycles.ledger_entries WHERE reservation_id = ANY (%s)",
        (ids,)).fetchone() == (5,)
    assert budget(db, "tenant:acme")["reserved"] == 5
    assert_ledger_consistent(db)
    assert ledger_chain_breaks(db) == []


def test_idempotency_inside_a_batch(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    first = reserve_request(1_000, key="same-key")
    changed = reserve_request(2_000, key="same-key")
    rows = batch(db, fx.ka, [first, first, changed])
    assert rows[0]["response"] is not None
    replay = rows[1]["response"]
    assert replay is not None
    strip = ("remaining_ttl_ms",)  # recomputed on every replay, as for single calls
    assert {k: v for k, v in replay.items() if k not in strip} == \
        {k: v for k, v in rows[0]["response"].items() if k not in strip}
    assert rows[2]["sqlstate"] == "CY907" and rows[2]["detail"]["error"] == "IDEMPOTENCY_MISMATCH"
    assert budget(db, W1)["reserved"] == 1_000
    # A later single call with the key replays the batch's response.
    again = db.execute("SELECT cycles.reserve(%s, %s)", (fx.ka, Jsonb(first))).fetchone()
    assert again is not None and again[0]["reservation_id"] == rows[0]["response"]["reservation_id"]
    assert_ledger_consistent(db)


def test_bad_key_refuses_every_item(db: psycopg.Connection) -> None:
    standard_fixture(db)
    rows = batch(db, "cyc_live_not_a_key", [reserve_request(1), reserve_request(2)])
    assert [(r["sqlstate"], r["detail"]["error"]) for r in rows] == [("CY401", "UNAUTHORIZED")] * 2


def test_arrays_of_different_lengths_are_refused(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    with pytest.raises(psycopg.Error) as info:
        db.execute("SELECT * FROM cycles.reserve_batch(%s, %s::jsonb[], %s::jsonb[])",
                   (fx.ka, [json.dumps(reserve_request(1))], []))
    assert info.value.sqlstate == "CY400"


def test_a_failure_that_is_not_a_refusal_rolls_back_the_whole_batch(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    # A fault inside the second item's reserve (not a cycles._fail refusal).
    db.execute("""
        CREATE FUNCTION pg_temp.fault() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.idempotency_key = 'faulty' THEN
                RAISE EXCEPTION 'disk on fire' USING ERRCODE = 'XX000';
            END IF;
            RETURN NEW;
        END;
        $$""")
    db.execute("CREATE TRIGGER fault BEFORE INSERT ON cycles.reservations"
               " FOR EACH ROW EXECUTE FUNCTION pg_temp.fault()")
    with pytest.raises(psycopg.Error) as info:
        batch(db, fx.ka, [reserve_request(10), reserve_request(10, key="faulty"), reserve_request(10)])
    assert info.value.sqlstate == "XX000"
    assert db.execute("SELECT count(*) FROM cycles.reservations").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM cycles.idempotency_records").fetchone() == (0,)
    assert budget(db, W1)["reserved"] == 0
    assert_ledger_consistent(db)


def test_a_lock_timeout_fails_the_whole_batch(db: psycopg.Connection, pg_cluster: Any) -> None:
    fx = standard_fixture(db)
    with psycopg.connect(pg_cluster.conninfo(db.info.dbname)) as holder:
        holder.execute("SELECT 1 FROM cycles.budgets WHERE scope = %s FOR UPDATE", (W1,))
        db.execute("SET lock_timeout = '100ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            batch(db, fx.ka, [reserve_request(10), reserve_request(10)])
        holder.rollback()
    db.execute("RESET lock_timeout")
    assert db.execute("SELECT count(*) FROM cycles.reservations").fetchone() == (0,)


def _backend_waits_for_lock(observer: psycopg.Connection, pid: int) -> bool:
    row = observer.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is not None and row[0] == "Lock"


def test_locks_are_taken_up_front_in_the_global_order(db: psycopg.Connection, pg_cluster: Any) -> None:
    """No tenant-level budget: sibling workspace budgets only. A batch whose
    first item charges w2 and second w1 must not hold w2 while it waits for
    w1 (a transaction locking w1 then w2, as everyone does, would deadlock
    with it)."""
    create_tenant(db, "sib")
    create_budget(db, "tenant:sib/workspace:w1", 1_000)
    create_budget(db, "tenant:sib/workspace:w2", 1_000)
    key = create_key(db, "sib")
    conninfo = pg_cluster.conninfo(db.info.dbname)
    requests = [reserve_request(1, subject={"tenant": "sib", "workspace": "w2"}),
                reserve_request(1, subject={"tenant": "sib", "workspace": "w1"})]
    outcome: list[Any] = []
    with psycopg.connect(conninfo) as holder, psycopg.connect(conninfo, autocommit=True) as batcher:
        holder.execute("SELECT 1 FROM cycles.budgets WHERE scope = 'tenant:sib/workspace:w1' FOR UPDATE")
        pid = batcher.info.backend_pid
        thread = threading.Thread(target=lambda: outcome.append(batch(batcher, key, requests)))
        thread.start()
        deadline = time.monotonic() + 30
        while not _backend_waits_for_lock(db, pid):
            assert time.monotonic() < deadline, "the batch never waited for w1"
            time.sleep(0.01)
        # The batch waits for w1 without holding w2: the holder takes w2 at once.
        holder.execute("SET lock_timeout = '50ms'")
        holder.execute("SELECT 1 FROM cycles.budgets WHERE scope = 'tenant:sib/workspace:w2' FOR UPDATE")
        holder.commit()
        thread.join(timeout=60)
    assert len(outcome) == 1 and all(r["response"] is not None for r in outcome[0])
    assert_ledger_consistent(db)


def test_concurrent_batches_and_single_calls_never_deadlock(db: psycopg.Connection, pg_cluster: Any) -> None:
    """Batches of random sibling scopes (no tenant-level budget) against
    batches and single calls in the opposite orders: every call succeeds,
    none is chosen as a deadlock victim, and the books balance."""
    create_tenant(db, "sib")
    workspaces = [f"w{n}" for n in range(4)]
    for workspace in workspaces:
        create_budget(db, f"tenant:sib/workspace:{workspace}", 1_000_000)
    key = create_key(db, "sib")

    def request(workspace: str) -> dict[str, Any]:
        return reserve_request(1, key=uuid.uuid4().hex, subject={"tenant": "sib", "workspace": workspace})

    def batches(order: list[str]) -> Any:
        def work(conn: psycopg.Connection) -> Any:
            rows: list[dict[str, Any]] = []
            for _ in range(15):
                rows += batch(conn, key, [request(w) for w in order])
            return rows
        return work

    def singles(order: list[str]) -> Any:
        def work(conn: psycopg.Connection) -> Any:
            for _ in range(15):
                with conn.transaction():
                    for workspace in order:
                        conn.execute("SELECT cycles.reserve(%s, %s)", (key, Jsonb(request(workspace))))
            return []
        return work

    backwards = list(reversed(workspaces))
    results = run_in_threads(pg_cluster.conninfo(db.info.dbname), [
        batches(backwards), batches(workspaces), batches(backwards[1:] + backwards[:1]), singles(workspaces),
    ])
    failures = [r for r in results if isinstance(r, Exception)]
    assert failures == []
    rows = [row for result in results for row in result]
    assert len(rows) == 3 * 15 * 4 and all(r["response"] is not None for r in rows)
    total = db.execute("SELECT sum(reserved) FROM cycles.budgets WHERE tenant_id = 'sib'").fetchone()
    assert total == (4 * 15 * 4,)
    assert_ledger_consistent(db)
    assert ledger_chain_breaks(db) == []


def _twin(db: psycopg.Connection, tenant: str) -> str:
    """A tenant with a tenant budget, a workspace budget near its 80 %
    threshold, an agent budget in TOKENS only, a budget with an overage
    policy, and a policy with caps and a TTL override on one workspace."""
    create_tenant(db, tenant)
    create_budget(db, f"tenant:{tenant}", 1_000_000)
    create_budget(db, f"tenant:{tenant}/workspace:w1", 10_000)
    create_budget(db, f"tenant:{tenant}/workspace:w2", 50_000, commit_overage_policy="ALLOW_WITH_OVERDRAFT",
                  overdraft_limit=100)
    create_budget(db, f"tenant:{tenant}/workspace:w3/agent:t", 1_000, unit="TOKENS")
    db.execute(
        "SELECT cycles.create_policy(%s, 'caps', %s, p_caps => %s, p_commit_overage_policy => 'REJECT',"
        " p_reservation_ttl_override => %s)",
        (tenant, f"tenant:{tenant}/workspace:w2", Jsonb({"max_tokens": 100}),
         Jsonb({"default_ttl_ms": 120_000, "max_ttl_ms": 600_000, "max_extensions": 3})))
    return create_key(db, tenant)


def _sequence(tenant: str) -> list[dict[str, Any]]:
    def req(n: int, amount: int, unit: str = "USD_MICROCENTS", **subject: str) -> dict[str, Any]:
        return reserve_request(amount, key=f"k{n}", unit=unit, subject={"tenant": tenant, **subject})
    invalid = req(9, 1, workspace="w1")
    invalid["ttl_ms"] = 5
    return [
        req(1, 5_000, workspace="w1", agent="a"),                 # w1 at 50 %
        req(2, 3_500, workspace="w1"),                            # crosses 80 %: events
        req(3, 2_000, workspace="w1"),                            # BUDGET_EXCEEDED (1,500 left)
        {**req(4, 1_500, workspace="w1"), "metadata": {"m": 1}},   # exhausts w1: events
        req(5, 700, workspace="w2", app="x"),                     # policy: caps, TTL, REJECT
        {**req(6, 10, workspace="w2"), "ttl_ms": 900_000, "overage_policy": "ALLOW_IF_AVAILABLE"},
        req(7, 10, workspace="w3", agent="t"),                    # only TOKENS there: UNIT_MISMATCH
        req(8, 10, unit="TOKENS", workspace="w3", agent="t"),
        invalid,                                                  # INVALID_REQUEST
        req(10, 0, workspace="nowhere"),                          # tenant budget only, amount 0
        req(11, 10, unit="CREDITS", workspace="w1"),              # no budget at all: NOT_FOUND
    ]


def _normal(value: Any, tenant: str) -> Any:
    """JSON with the tenant's name and the per-call ids and clocks masked."""
    if isinstance(value, dict):
        return {k: ("*" if k in ("reservation_id", "expires_at_ms", "remaining_ttl_ms", "policy_id", "key_id") else _normal(v, tenant))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v, tenant) for v in value]
    if isinstance(value, str):
        return value.replace(tenant, "T")
    return value


def _history(db: psycopg.Connection, tenant: str) -> dict[str, Any]:
    ledger = db.execute(
        "SELECT l.scope, l.unit, l.operation, l.allocated_delta, l.spent_delta, l.reserved_delta, l.debt_delta,"
        " l.allocated_after, l.spent_after, l.reserved_after, l.debt_after, l.operation_lead, l.idempotency_key,"
        " l.action_kind, l.action_name, l.subject, l.actor_type, l.actor_key_id IS NULL, l.request_id,"
        " l.subject_workspace, l.subject_agent, r.idempotency_key"
        " FROM cycles.ledger_entries AS l LEFT JOIN cycles.reservations AS r USING (reservation_id)"
        " WHERE l.tenant_id = %s ORDER BY l.entry_id", (tenant,)).fetchall()
    reservations = db.execute(
        "SELECT idempotency_key, subject, action, unit, estimate, scope_path, affected_scopes, budgeted_scopes,"
        " overage_policy, status, grace_period_ms, ttl_ms, extension_count, max_extensions, metadata, request_id,"
        " expires_at_ms - created_at_ms FROM cycles.reservations WHERE tenant_id = %s ORDER BY idempotency_key",
        (tenant,)).fetchall()
    budgets = db.execute(
        "SELECT scope, unit, allocated, spent, reserved, debt, remaining, is_over_limit FROM cycles.budgets"
        " WHERE tenant_id = %s ORDER BY scope, unit", (tenant,)).fetchall()
    events = db.execute(
        "SELECT event_type, scope, actor, data FROM cycles.events WHERE tenant_id = %s ORDER BY seq",
        (tenant,)).fetchall()
    records = db.execute(
        "SELECT idempotency_key, response FROM cycles.idempotency_records WHERE tenant_id = %s"
        " ORDER BY idempotency_key", (tenant,)).fetchall()
    return _normal(json.loads(json.dumps({"ledger": ledger, "reservations": reservations, "budgets": budgets,
                                          "events": events, "records": records}, default=str)), tenant)


def test_a_batch_has_exactly_the_outcomes_of_single_calls_in_order(db: psycopg.Connection) -> None:
    batch_key, single_key = _twin(db, "bat"), _twin(db, "one")
    ctxs = [{"request_id": f"req_{n}", "source_ip": "10.0.0.1"} for n in range(11)]
    batched = batch(db, batch_key, _sequence("bat"), ctxs)
    single: list[dict[str, Any]] = []
    for request, ctx in zip(_sequence("one"), ctxs, strict=True):
        try:
            row = db.execute("SELECT cycles.reserve(%s, %s, %s)", (single_key, Jsonb(request), Jsonb(ctx))).fetchone()
            assert row is not None
            single.append({"response": row[0], "sqlstate": None, "message": None, "detail": None})
        except psycopg.Error as exc:
            single.append({"response": None, "sqlstate": exc.diag.sqlstate, "message": exc.diag.message_primary,
                           "detail": json.loads(exc.diag.message_detail or "null")})
    assert [_normal(r, "bat") for r in batched] == [_normal(r, "one") for r in single]
    assert [r["sqlstate"] for r in batched] == [
        None, None, "CY901", None, None, None, None, None, "CY400", None, "CY4UM"]
    assert _history(db, "bat") == _history(db, "one")
    assert_ledger_consistent(db)
    assert ledger_chain_breaks(db) == []

    # Replays of the batch's successes, in a batch and alone, are the stored responses.
    again = batch(db, batch_key, _sequence("bat"), ctxs)
    assert [r["response"] is not None for r in again] == [r["response"] is not None for r in batched]
    assert [_normal(r, "bat") for r in again[:2]] == [_normal(r, "bat") for r in batched[:2]]
    assert again[0]["response"]["reservation_id"] == batched[0]["response"]["reservation_id"]
    assert _history(db, "bat") == _history(db, "one")
    # A stored key with a different request: IDEMPOTENCY_MISMATCH for that
    # item alone.
    changed = _sequence("bat")[:2]
    changed[1]["estimate"]["amount"] += 1
    rows = batch(db, batch_key, [*changed, reserve_request(1, subject={"tenant": "bat"})], ctxs[:3])
    assert [r["sqlstate"] for r in rows] == [None, "CY907", None]
    assert rows[1]["detail"] == {"error": "IDEMPOTENCY_MISMATCH", "details": {"idempotency_key": "k2"}}
    assert_ledger_consistent(db)


def test_a_suspended_tenant_refuses_every_item(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    db.execute("UPDATE cycles.tenants SET status = 'SUSPENDED' WHERE tenant_id = 'acme'")
    rows = batch(db, fx.ka, [reserve_request(1), reserve_request(2)])
    assert [(r["sqlstate"], r["detail"]["details"]["reason"]) for r in rows] == [("CY403", "TENANT_SUSPENDED")] * 2
    assert db.execute("SELECT count(*) FROM cycles.reservations").fetchone() == (0,)
