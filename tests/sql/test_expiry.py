"""cycles.expire_due: the sweep returns held amounts and marks reservations
EXPIRED; settlements after the deadline answer 410."""

from __future__ import annotations

import psycopg

from tests.sql.runtime_fixtures import (
    age_reservation,
    assert_ledger_consistent,
    budget,
    call,
    events,
    raises,
    reservation,
    reserve_request,
    standard_fixture,
)

W1 = "tenant:acme/workspace:w1"


def sweep(db: psycopg.Connection, batch: int = 1000) -> int:
    row = db.execute("SELECT cycles.expire_due(%s)", (batch,)).fetchone()
    assert row is not None
    count: int = row[0]
    return count


def test_sweep_expires_only_past_grace(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    due = call(db, "reserve", fx.ka, reserve_request(100, ttl_ms=1000, grace_period_ms=0))["reservation_id"]
    in_grace = call(db, "reserve", fx.ka, reserve_request(200, ttl_ms=1000))["reservation_id"]
    live = call(db, "reserve", fx.ka, reserve_request(300))["reservation_id"]
    age_reservation(db, due, 2500)
    age_reservation(db, in_grace, 2500)
    assert sweep(db) == 1
    assert reservation(db, due)["status"] == "EXPIRED"
    assert reservation(db, due)["finalized_at_ms"] is None
    assert reservation(db, in_grace)["status"] == "ACTIVE"
    assert reservation(db, live)["status"] == "ACTIVE"
    assert budget(db, W1)["reserved"] == 500
    expired = events(db, "reservation.expired")
    assert len(expired) == 1
    assert expired[0]["source"] == "expiry-sweeper"
    assert expired[0]["actor"] == {"type": "system"}
    data = expired[0]["data"]
    assert (data["reservation_id"], data["estimated_amount"], data["scope"], data["ttl_ms"],
            data["extensions_used"]) == (due, 100, W1, 1000, 0)
    ledger = db.execute("SELECT scope, reserved_delta, actor_type FROM cycles.ledger_entries"
                        " WHERE operation = 'EXPIRE' ORDER BY scope").fetchall()
    assert ledger == [("tenant:acme", -100, "system"), (W1, -100, "system")]
    assert sweep(db) == 0
    assert_ledger_consistent(db)


def test_expired_reservation_answers_410_everywhere(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    rid = call(db, "reserve", fx.ka, reserve_request(100, ttl_ms=1000, grace_period_ms=0))["reservation_id"]
    age_reservation(db, rid, 2500)
    sweep(db)
    actual = {"unit": "USD_MICROCENTS", "amount": 1}
    with raises("RESERVATION_EXPIRED"):
        call(db, "commit", fx.ka, rid, {"idempotency_key": "c", "actual": actual})
    with raises("RESERVATION_EXPIRED"):
        call(db, "release", fx.ka, rid, {"idempotency_key": "r"})
    with raises("RESERVATION_EXPIRED"):
        call(db, "extend", fx.ka, rid, {"idempotency_key": "e", "extend_by_ms": 1000})
    with raises("RESERVATION_EXPIRED"):
        call(db, "get_reservation", fx.ka, rid)
    listed = call(db, "list_reservations", fx.ka, {"status": "EXPIRED"})
    assert [r["reservation_id"] for r in listed["reservations"]] == [rid]
    assert budget(db, W1)["reserved"] == 0


def test_sweep_batches_and_many_scopes(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    ids = [call(db, "reserve", fx.ka, reserve_request(10, ttl_ms=1000, grace_period_ms=0,
                                                      subject={"workspace": ws}))["reservation_id"]
           for ws in ("w1", "od", "w1", "none", "od")]
    for rid in ids:
        age_reservation(db, rid, 5000)
    assert sweep(db, 2) == 2
    assert sweep(db, 10) == 3
    assert budget(db, W1)["reserved"] == 0
    assert budget(db, "tenant:acme")["reserved"] == 0
    assert budget(db, "tenant:acme/workspace:od")["reserved"] == 0
    assert len(events(db, "reservation.expired")) == 5
    assert_ledger_consistent(db)


def test_sweep_skips_when_another_sweeper_holds_the_lock(db: psycopg.Connection, pg_cluster: object) -> None:
    fx = standard_fixture(db)
    rid = call(db, "reserve", fx.ka, reserve_request(10, ttl_ms=1000, grace_period_ms=0))["reservation_id"]
    age_reservation(db, rid, 5000)
    conninfo = pg_cluster.conninfo(db.info.dbname)  # type: ignore[attr-defined]
    with psycopg.connect(conninfo) as other:
        assert other.execute("SELECT cycles.expire_due()").fetchone() == (1,)
        # Uncommitted: the lock is still held, so this sweeper does nothing.
        assert sweep(db) == 0
        other.rollback()
    assert sweep(db) == 1


def test_invalid_batch_size(db: psycopg.Connection) -> None:
    with raises("INVALID_REQUEST"):
        sweep(db, 0)


def test_one_sweep_of_many_reservations_on_the_same_budgets_extends_each_chain_in_order(
        db: psycopg.Connection) -> None:
    # A batch writes several EXPIRE rows for the same budget in one call of
    # the ledger writer: each must chain to the row before it in the batch.
    fx = standard_fixture(db)
    ids = [call(db, "reserve", fx.ka, reserve_request(10 + n, ttl_ms=1000, grace_period_ms=0))["reservation_id"]
           for n in range(5)]
    for rid in ids:
        age_reservation(db, rid, 2500)
    assert sweep(db) == 5
    assert db.execute("SELECT count(*) FROM cycles.verify_ledger_chain()").fetchone() == (0,)
    rows = db.execute("""
        SELECT reservation_id, reserved_delta, reserved_after, operation_lead FROM cycles.ledger_entries
        WHERE operation = 'EXPIRE' AND scope = %s ORDER BY created_at""", (W1,)).fetchall()
    # The batch goes in reservation id order; the running balance follows it.
    amounts = {rid: 10 + n for n, rid in enumerate(ids)}
    expected, after = [], sum(amounts.values())
    for rid in sorted(ids):
        after -= amounts[rid]
        expected.append((rid, -amounts[rid], after, False))
    assert rows == expected
    leads = db.execute("SELECT reservation_id FROM cycles.ledger_entries WHERE operation = 'EXPIRE'"
                       " AND operation_lead ORDER BY reservation_id").fetchall()
    assert leads == [(rid,) for rid in sorted(ids)]
    assert budget(db, W1)["reserved"] == 0
    assert_ledger_consistent(db)
