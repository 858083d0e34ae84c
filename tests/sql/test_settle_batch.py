"""cycles.settle_batch: each item is exactly a cycles.commit or cycles.release
call of its own (refusals stay with their item, identical to the single
call's error; repeated ids and keys behave as calls made one after another),
the batch commits together, a failure that is not a refusal rolls everything
back, and its locks are taken up front in the global order (no deadlock)."""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.runtime_fixtures import (
    age_reservation,
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


def settle(conn: psycopg.Connection, key: str | None,
           items: list[tuple[str, str, dict[str, Any]]],
           ctxs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The rows of one cycles.settle_batch call over (operation,
    reservation id, request) items, decoded."""
    rows = conn.execute(
        "SELECT o_item, o_response, o_sqlstate, o_message, o_detail"
        " FROM cycles.settle_batch(%s, %s, %s, %s::jsonb[], %s::jsonb[])",
        (key, [op for op, _, _ in items], [rid for _, rid, _ in items],
         [json.dumps(request) for _, _, request in items],
         [json.dumps(c) for c in (ctxs or [{} for _ in items])])).fetchall()
    assert [row[0] for row in rows] == list(range(1, len(items) + 1))
    return [{"response": row[1], "sqlstate": row[2], "message": row[3],
             "detail": json.loads(row[4]) if row[4] else None} for row in rows]


def single(conn: psycopg.Connection, key: str, op: str, rid: str, request: dict[str, Any],
           ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    """The outcome of the single cycles.commit / cycles.release call, in the
    shape of a batch row."""
    try:
        row = conn.execute(f"SELECT cycles.{op}(%s, %s, %s, %s)",  # type: ignore[arg-type]
                           (key, rid, Jsonb(request), Jsonb(ctx or {}))).fetchone()
    except psycopg.Error as exc:
        return {"response": None, "sqlstate": exc.diag.sqlstate, "message": exc.diag.message_primary,
                "detail": json.loads(exc.diag.message_detail or "null")}
    assert row is not None
    return {"response": row[0], "sqlstate": None, "message": None, "detail": None}


def reserve(conn: psycopg.Connection, api_key: str, amount: int, **extra: Any) -> str:
    row = conn.execute("SELECT cycles.reserve(%s, %s) ->> 'reservation_id'",
                       (api_key, Jsonb(reserve_request(amount, **extra)))).fetchone()
    assert row is not None
    return str(row[0])


def commit_request(amount: int, key: str | None = None, unit: str = "USD_MICROCENTS") -> dict[str, Any]:
    return {"idempotency_key": key or uuid.uuid4().hex, "actual": {"unit": unit, "amount": amount}}


def release_request(key: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key or uuid.uuid4().hex, **extra}


def test_items_commit_together_each_with_its_own_outcome(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    ids = [reserve(db, fx.ka, 1_000) for _ in range(4)]
    db.execute("CREATE TEMPORARY TABLE written (reservation_id text, top_xid bigint)")
    db.execute("""
        CREATE FUNCTION pg_temp.record_xid() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO pg_temp.written VALUES (NEW.reservation_id, txid_current());
            RETURN NEW;
        END;
        $$""")
    db.execute("CREATE TRIGGER record_xid AFTER UPDATE ON cycles.reservations"
               " FOR EACH ROW EXECUTE FUNCTION pg_temp.record_xid()")
    rows = settle(db, fx.ka, [("commit", ids[0], commit_request(600)), ("release", ids[1], release_request()),
                              ("commit", ids[2], commit_request(1_000)), ("commit", "rsv_nope", commit_request(1))],
                  [{"request_id": f"req_{n}"} for n in range(4)])
    assert [r["response"]["status"] if r["response"] else r["detail"]["error"] for r in rows] == \
        ["COMMITTED", "RELEASED", "COMMITTED", "NOT_FOUND"]
    # One top-level transaction wrote every settlement.
    assert db.execute("SELECT count(*), count(DISTINCT top_xid) FROM pg_temp.written").fetchone() == (3, 1)
    assert db.execute("SELECT array_agg(request_id ORDER BY request_id) FROM cycles.ledger_entries"
                      " WHERE reservation_id = ANY (%s) AND operation IN ('COMMIT', 'RELEASE')"
                      " AND scope = 'tenant:acme'", (ids,)).fetchone() == (["req_0", "req_1", "req_2"],)
    assert budget(db, W1)["spent"] == 1_600 and budget(db, W1)["reserved"] == 1_000
    assert_ledger_consistent(db)


def test_bad_key_and_bad_arrays(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = reserve(db, fx.ka, 10)
    rows = settle(db, "cyc_live_not_a_key", [("commit", rid, commit_request(1)), ("release", rid, release_request())])
    assert [(r["sqlstate"], r["detail"]["error"]) for r in rows] == [("CY401", "UNAUTHORIZED")] * 2
    for args in ([fx.ka, ["commit"], [rid], [], []],                       # lengths differ
                 [fx.ka, ["extend"], [rid], [json.dumps(commit_request(1))], ["{}"]],   # unknown operation
                 [None, ["release"], [rid], [json.dumps(release_request())], ["{}"]]):  # no key
        with pytest.raises(psycopg.Error) as info:
            db.execute("SELECT * FROM cycles.settle_batch(%s, %s, %s, %s::jsonb[], %s::jsonb[])", args)
        assert info.value.sqlstate == "CY400"
    too_many = [("commit", rid, commit_request(1))] * 65
    with pytest.raises(psycopg.Error) as info:
        settle(db, fx.ka, too_many)
    assert info.value.sqlstate == "CY400"
    assert db.execute("SELECT status FROM cycles.reservations WHERE reservation_id = %s", (rid,)).fetchone() \
        == ("ACTIVE",)


def test_a_failure_that_is_not_a_refusal_rolls_back_the_whole_batch(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    ids = [reserve(db, fx.ka, 10) for _ in range(3)]
    db.execute("""
        CREATE FUNCTION pg_temp.fault() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.committed = 7 THEN
                RAISE EXCEPTION 'disk on fire' USING ERRCODE = 'XX000';
            END IF;
            RETURN NEW;
        END;
        $$""")
    db.execute("CREATE TRIGGER fault BEFORE UPDATE ON cycles.reservations FOR EACH ROW EXECUTE FUNCTION pg_temp.fault()")
    with pytest.raises(psycopg.Error) as info:
        settle(db, fx.ka, [("commit", ids[0], commit_request(5)), ("commit", ids[1], commit_request(7)),
                           ("release", ids[2], release_request())])
    assert info.value.sqlstate == "XX000"
    assert db.execute("SELECT count(*) FROM cycles.reservations WHERE status = 'ACTIVE'").fetchone() == (3,)
    assert db.execute("SELECT count(*) FROM cycles.idempotency_records WHERE endpoint <> 'reserve'").fetchone() \
        == (0,)
    assert budget(db, W1)["reserved"] == 30
    assert_ledger_consistent(db)


# Equivalence with single calls ---------------------------------------------

def _twin(db: psycopg.Connection, tenant: str) -> tuple[str, list[str]]:
    """A tenant with budgets for every overage case and ten reservations,
    made the same way for both twins; returns its key and the ids."""
    create_tenant(db, tenant)
    create_budget(db, f"tenant:{tenant}", 1_000_000)
    create_budget(db, f"tenant:{tenant}/workspace:w1", 10_000)                      # thresholds
    create_budget(db, f"tenant:{tenant}/workspace:cap", 1_000)                      # ALLOW_IF_AVAILABLE
    create_budget(db, f"tenant:{tenant}/workspace:od", 1_000, overdraft_limit=300)   # overdraft
    create_budget(db, f"tenant:{tenant}/workspace:t", 1_000, unit="TOKENS")
    key = create_key(db, tenant)

    def rsv(n: int, amount: int, workspace: str, unit: str = "USD_MICROCENTS", **extra: Any) -> str:
        return reserve(db, key, amount, key=f"r{n}", unit=unit, subject={"tenant": tenant, "workspace": workspace},
                       **extra)

    ids = [
        rsv(0, 5_000, "w1"),                                                  # commit, replays, mismatches
        rsv(1, 2_000, "w1"),                                                  # released, then committed
        rsv(2, 500, "w1", overage_policy="REJECT"),                           # REJECT overage
        rsv(3, 600, "cap", overage_policy="ALLOW_IF_AVAILABLE"),              # capped overage
        rsv(4, 800, "od", overage_policy="ALLOW_WITH_OVERDRAFT"),             # debt within the limit
        rsv(5, 100, "od", overage_policy="ALLOW_WITH_OVERDRAFT"),             # past the limit
        rsv(6, 10, "t", unit="TOKENS"),                                       # UNIT_MISMATCH
        rsv(7, 10, "w1"),                                                     # expired past grace
        rsv(8, 1_500, "w1"),                                                  # crosses 80 %: events
        rsv(9, 20, "w1"),                                                     # committed before the batch
    ]
    age_reservation(db, ids[7], 3_600_000)
    assert single(db, key, "commit", ids[9], commit_request(15, key="pre"))["response"] is not None
    return key, ids


def _items(ids: list[str], foreign: str) -> list[tuple[str, str, dict[str, Any]]]:
    c0 = commit_request(4_000, key="c0")
    return [
        ("commit", ids[0], c0),
        ("commit", ids[0], c0),                                   # replay of the item before
        ("commit", ids[0], commit_request(4_001, key="c0")),      # same key, other request: mismatch
        ("commit", ids[0], commit_request(4_000, key="c0b")),     # another key: RESERVATION_FINALIZED
        ("release", ids[1], release_request(key="l1", reason="not needed")),
        ("commit", ids[1], commit_request(10, key="c1")),         # released: RESERVATION_FINALIZED
        ("release", ids[1], release_request(key="l1", reason="not needed")),   # replay
        ("commit", ids[2], commit_request(501, key="c2")),        # REJECT: BUDGET_EXCEEDED, stays ACTIVE
        ("commit", ids[2], commit_request(500, key="c2b")),
        ("commit", ids[3], commit_request(5_000, key="c3")),      # capped, over limit
        ("commit", ids[4], commit_request(1_100, key="c4")),      # 200 of debt
        ("commit", ids[5], commit_request(700, key="c5")),        # past the overdraft limit
        ("commit", ids[6], commit_request(5, key="c6")),          # UNIT_MISMATCH
        ("commit", ids[6], commit_request(5, key="c6b", unit="TOKENS")),
        ("release", ids[7], release_request(key="l7")),           # past grace: RESERVATION_EXPIRED
        ("commit", ids[8], commit_request(1_500, key="c8")),      # threshold events
        ("commit", ids[9], commit_request(15, key="pre")),        # replay of a call before the batch
        ("commit", ids[9], commit_request(16, key="pre")),        # mismatch with it
        ("commit", "rsv_" + "0" * 32, commit_request(1, key="cx")),      # NOT_FOUND
        ("release", foreign, release_request(key="lx")),          # another tenant's: FORBIDDEN
        ("commit", ids[5], {"actual": {"unit": "USD_MICROCENTS", "amount": 1}}),  # no key: INVALID_REQUEST
        ("release", ids[5], release_request(key="l5", reason="x" * 300)),        # INVALID_REQUEST
        ("release", ids[5], release_request(key="l5b")),
    ]


def _normal(value: Any, tenant: str, ids: list[str]) -> Any:
    """JSON with the tenant's name, its reservation ids and the per-call
    clocks masked."""
    if isinstance(value, dict):
        return {k: ("*" if k in ("expires_at_ms", "remaining_ttl_ms", "event_id", "key_id", "created_at",
                                 "expired_at") else _normal(v, tenant, ids))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v, tenant, ids) for v in value]
    if isinstance(value, str):
        for n, rid in enumerate(ids):
            value = value.replace(rid, f"R{n}")
        return re.sub(rf"\b{tenant}\b", "T", value)
    return value


def _history(db: psycopg.Connection, tenant: str, ids: list[str]) -> dict[str, Any]:
    ledger = db.execute(
        "SELECT scope, unit, operation, allocated_delta, spent_delta, reserved_delta, debt_delta, allocated_after,"
        " spent_after, reserved_after, debt_after, operation_lead, idempotency_key, reason, reservation_id,"
        " actor_type, request_id, trace_id FROM cycles.ledger_entries WHERE tenant_id = %s ORDER BY entry_id",
        (tenant,)).fetchall()
    reservations = db.execute(
        "SELECT reservation_id, status, committed, released, committed_metadata, metrics, release_reason,"
        " finalized_at_ms IS NULL FROM cycles.reservations WHERE tenant_id = %s ORDER BY idempotency_key",
        (tenant,)).fetchall()
    budgets = db.execute(
        "SELECT scope, unit, allocated, spent, reserved, debt, remaining, is_over_limit FROM cycles.budgets"
        " WHERE tenant_id = %s ORDER BY scope, unit", (tenant,)).fetchall()
    events = db.execute(
        "SELECT event_type, scope, source, actor, data, correlation_id, request_id FROM cycles.events"
        " WHERE tenant_id = %s ORDER BY seq", (tenant,)).fetchall()
    records = db.execute(
        "SELECT endpoint, idempotency_key, response, reservation_id"
        " FROM cycles.idempotency_records WHERE tenant_id = %s ORDER BY endpoint, idempotency_key",
        (tenant,)).fetchall()
    history: dict[str, Any] = _normal(json.loads(json.dumps(
        {"ledger": ledger, "reservations": reservations, "budgets": budgets, "events": events, "records": records},
        default=str)), tenant, ids)
    # Records are keyed by the endpoint, which holds the (random) id.
    history["records"].sort(key=json.dumps)
    return history


def test_a_batch_has_exactly_the_outcomes_of_single_calls_in_order(db: psycopg.Connection) -> None:
    (batch_key, batch_ids), (single_key, single_ids) = _twin(db, "bat"), _twin(db, "one")
    create_tenant(db, "zed")
    create_budget(db, "tenant:zed", 1_000)
    foreign = reserve(db, create_key(db, "zed"), 1, subject={"tenant": "zed"})
    ctxs = [{"request_id": f"req_{n}", "trace_id": f"{n:032x}", "source_ip": "10.0.0.1"} for n in range(23)]

    batched = settle(db, batch_key, _items(batch_ids, foreign), ctxs)
    one_by_one = [single(db, single_key, op, rid, request, ctx)
                  for (op, rid, request), ctx in zip(_items(single_ids, foreign), ctxs, strict=True)]

    assert [_normal(r, "bat", batch_ids) for r in batched] == [_normal(r, "one", single_ids) for r in one_by_one]
    assert [r["detail"]["error"] if r["detail"] else r["response"]["status"] for r in batched] == [
        "COMMITTED", "COMMITTED", "IDEMPOTENCY_MISMATCH", "RESERVATION_FINALIZED",
        "RELEASED", "RESERVATION_FINALIZED", "RELEASED",
        "BUDGET_EXCEEDED", "COMMITTED", "COMMITTED", "COMMITTED", "OVERDRAFT_LIMIT_EXCEEDED",
        "UNIT_MISMATCH", "COMMITTED", "RESERVATION_EXPIRED", "COMMITTED",
        "COMMITTED", "IDEMPOTENCY_MISMATCH", "NOT_FOUND", "FORBIDDEN", "INVALID_REQUEST", "INVALID_REQUEST",
        "RELEASED"]
    # The cases did what they are there for.
    assert budget(db, "tenant:bat/workspace:od")["debt"] == 200
    assert budget(db, "tenant:bat/workspace:cap")["is_over_limit"] is True
    assert db.execute("SELECT count(*) FROM cycles.events WHERE tenant_id = 'bat'"
                      " AND event_type = 'budget.threshold_crossed'").fetchone() != (0,)
    assert _history(db, "bat", batch_ids) == _history(db, "one", single_ids)
    assert_ledger_consistent(db)
    assert db.execute("SELECT * FROM cycles.verify_ledger_chain()").fetchall() == []

    # The same batch again: every success replays, every refusal repeats or
    # (the reservations are settled now) becomes RESERVATION_FINALIZED, as
    # for single calls made again.
    again = settle(db, batch_key, _items(batch_ids, foreign), ctxs)
    again_single = [single(db, single_key, op, rid, request, ctx)
                    for (op, rid, request), ctx in zip(_items(single_ids, foreign), ctxs, strict=True)]
    assert [_normal(r, "bat", batch_ids) for r in again] == [_normal(r, "one", single_ids) for r in again_single]
    assert again[0] == batched[0]
    assert _history(db, "bat", batch_ids) == _history(db, "one", single_ids)


# Locks ----------------------------------------------------------------------

def _backend_waits_for_lock(observer: psycopg.Connection, pid: int) -> bool:
    row = observer.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is not None and row[0] == "Lock"


def _sibling_tenant(db: psycopg.Connection) -> tuple[str, str, str]:
    """Tenant sib without a tenant-level budget: workspaces w1 and w2. Returns
    its key and two reservations, on w2 and on w1, the one on w2 with the
    greater id (so item order, id order and scope order all disagree)."""
    create_tenant(db, "sib")
    create_budget(db, "tenant:sib/workspace:w1", 1_000)
    create_budget(db, "tenant:sib/workspace:w2", 1_000)
    key = create_key(db, "sib")
    on_w1 = reserve(db, key, 1, subject={"tenant": "sib", "workspace": "w1"})
    on_w2 = ""
    while on_w2 < on_w1:   # ids are random: half of them sort after
        on_w2 = reserve(db, key, 1, subject={"tenant": "sib", "workspace": "w2"})
    return key, on_w1, on_w2


@pytest.mark.parametrize("held_first", ["budget w1", "reservation on w1"])
@pytest.mark.parametrize("up_front", [True, False], ids=["locks up front", "locks item by item"])
def test_locks_are_taken_up_front_in_the_global_order(
        db: psycopg.Connection, pg_cluster: Any, held_first: str, up_front: bool) -> None:
    """A batch whose first item settles the reservation on w2 (greater id)
    and second the one on w1. A holder locks w1's row (the budget, or the
    reservation); the batch waits for it. It must wait without holding
    anything that sorts after: the holder then takes w2's rows at once. With
    the up-front locks switched off (items lock as they go) the batch holds
    w2's rows while it waits, and the holder cannot: the check catches it."""
    key, on_w1, on_w2 = _sibling_tenant(db)
    if not up_front:
        db.execute("CREATE OR REPLACE FUNCTION cycles._lock_settle_batch(p_api_key text, p_reservation_ids text[])"
                   " RETURNS void LANGUAGE plpgsql AS $$ BEGIN END; $$")
    first, second = ("SELECT 1 FROM cycles.budgets WHERE scope = 'tenant:sib/workspace:w1' FOR UPDATE",
                     "SELECT 1 FROM cycles.budgets WHERE scope = 'tenant:sib/workspace:w2' FOR UPDATE")
    if held_first == "reservation on w1":
        first, second = (f"SELECT 1 FROM cycles.reservations WHERE reservation_id = '{on_w1}' FOR UPDATE",
                         f"SELECT 1 FROM cycles.reservations WHERE reservation_id = '{on_w2}' FOR UPDATE")
    conninfo = pg_cluster.conninfo(db.info.dbname)
    outcome: list[Any] = []
    with psycopg.connect(conninfo) as holder, psycopg.connect(conninfo, autocommit=True) as batcher:
        holder.execute(first)  # type: ignore[arg-type]
        pid = batcher.info.backend_pid
        items = [("commit", on_w2, commit_request(1)), ("commit", on_w1, commit_request(1))]
        thread = threading.Thread(target=lambda: outcome.append(settle(batcher, key, items)))
        thread.start()
        deadline = time.monotonic() + 30
        while not _backend_waits_for_lock(db, pid):
            assert time.monotonic() < deadline, "the batch never waited for w1"
            time.sleep(0.01)
        holder.execute("SET lock_timeout = '50ms'")
        try:
            holder.execute(second)  # type: ignore[arg-type]
            took_second = True
        except psycopg.errors.LockNotAvailable:
            took_second = False
        holder.rollback()
        thread.join(timeout=60)
    assert took_second is up_front
    assert len(outcome) == 1 and [r["response"]["status"] for r in outcome[0]] == ["COMMITTED"] * 2
    assert_ledger_consistent(db)


def test_concurrent_batches_and_single_calls_never_deadlock(db: psycopg.Connection, pg_cluster: Any) -> None:
    """Batches settling overlapping reservations (every reservation is in
    several batches, in different orders) on sibling workspaces and a shared
    tenant budget, against single commits and releases of the same
    reservations, the expiry sweeper and reserve batches of the tenant: no
    call fails but by a refusal, each reservation is settled once, and the
    books balance."""
    create_tenant(db, "mix")
    create_budget(db, "tenant:mix", 10_000_000)
    workspaces = [f"w{n}" for n in range(4)]
    for workspace in workspaces:
        create_budget(db, f"tenant:mix/workspace:{workspace}", 1_000_000)
    key = create_key(db, "mix")
    ids = [reserve(db, key, 10, subject={"tenant": "mix", "workspace": workspaces[n % 4]}) for n in range(96)]
    for rid in ids[::8]:
        age_reservation(db, rid, 3_600_000)   # due for the sweeper (or refused as expired)

    def item(rid: str, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        if rng.random() < 0.5:
            return ("commit", rid, commit_request(rng.randint(0, 12)))
        return ("release", rid, release_request())

    def batches(seed: int) -> Any:
        def work(conn: psycopg.Connection) -> Any:
            rng = random.Random(seed)
            order = ids[:]
            rng.shuffle(order)
            rows: list[dict[str, Any]] = []
            for start in range(0, len(order), 12):
                rows += settle(conn, key, [item(rid, rng) for rid in order[start:start + 12]])
            return rows
        return work

    def singles(conn: psycopg.Connection) -> Any:
        rng = random.Random(7)
        order = ids[:]
        rng.shuffle(order)
        return [single(conn, key, op, rid, request) for op, rid, request in (item(r, rng) for r in order[:48])]

    def sweeps(conn: psycopg.Connection) -> Any:
        for _ in range(20):
            conn.execute("SELECT cycles.expire_due(5)")
        return []

    def reserves(conn: psycopg.Connection) -> Any:
        for _ in range(10):
            conn.execute("SELECT * FROM cycles.reserve_batch(%s, %s::jsonb[], %s::jsonb[])", (
                key, [json.dumps(reserve_request(1, subject={"tenant": "mix", "workspace": w})) for w in workspaces],
                ["{}"] * 4))
        return []

    results = run_in_threads(pg_cluster.conninfo(db.info.dbname),
                             [batches(1), batches(2), batches(3), singles, sweeps, reserves])
    assert [r for r in results if isinstance(r, Exception)] == []
    outcomes = [row for result in results[:4] for row in result]
    assert all(r["response"] is not None or r["sqlstate"].startswith("CY") for r in outcomes)
    # The sweeper skips rows a batch holds, so its rounds can all have
    # passed the due reservations by while the batches refused them as
    # expired: one more sweep, now that nothing else runs, expires those.
    db.execute("SELECT cycles.expire_due(100)")
    # Each reservation was settled once (by a batch, a single call or the
    # sweeper); later attempts were refused as settled.
    settled = db.execute("SELECT count(*) FROM cycles.reservations WHERE reservation_id = ANY (%s)"
                         " AND status <> 'ACTIVE'", (ids,)).fetchone()
    assert settled == (96,)
    wins = sum(1 for r in outcomes if r["response"] is not None)
    assert db.execute("SELECT count(*) FROM cycles.ledger_entries WHERE reservation_id = ANY (%s)"
                      " AND operation IN ('COMMIT', 'RELEASE') AND scope = 'tenant:mix'", (ids,)).fetchone() \
        == (wins,)
    assert budget(db, "tenant:mix")["reserved"] == 40
    assert_ledger_consistent(db)
    assert db.execute("SELECT * FROM cycles.verify_ledger_chain()").fetchall() == []
