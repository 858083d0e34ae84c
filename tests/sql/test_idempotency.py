"""Idempotency across the runtime endpoints: replays are verbatim (but for
remaining_ttl_ms), mismatches are refused, namespaces are separate."""

from __future__ import annotations

import psycopg

from tests.sql.runtime_fixtures import (
    assert_ledger_consistent,
    budget,
    call,
    events,
    raises,
    reserve_request,
    standard_fixture,
)

W1 = "tenant:acme/workspace:w1"


def test_reserve_replay_is_verbatim_and_charged_once(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    request = reserve_request(1000, key="same")
    first = call(db, "reserve", fx.ka, request)
    events_before = len(events(db))
    replay = call(db, "reserve", fx.ka, request)
    assert {k: v for k, v in replay.items() if k != "remaining_ttl_ms"} == \
        {k: v for k, v in first.items() if k != "remaining_ttl_ms"}
    assert 0 <= replay["remaining_ttl_ms"] <= first["remaining_ttl_ms"]
    assert budget(db, W1)["reserved"] == 1000
    assert len(events(db)) == events_before
    with raises("IDEMPOTENCY_MISMATCH"):
        call(db, "reserve", fx.ka, reserve_request(1001, key="same"))
    assert_ledger_consistent(db)


def test_replayed_reserve_reports_zero_ttl_once_settled(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    request = reserve_request(10, key="k")
    first = call(db, "reserve", fx.ka, request)
    call(db, "release", fx.ka, first["reservation_id"], {"idempotency_key": "r"})
    replay = call(db, "reserve", fx.ka, request)
    assert replay["remaining_ttl_ms"] == 0
    assert replay["reservation_id"] == first["reservation_id"]


def test_dry_run_shares_the_reserve_namespace(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    dry = reserve_request(10, key="shared", dry_run=True)
    assert call(db, "reserve", fx.ka, dry)["decision"] == "ALLOW"
    with raises("IDEMPOTENCY_MISMATCH"):
        call(db, "reserve", fx.ka, {k: v for k, v in dry.items() if k != "dry_run"})
    live = reserve_request(10, key="live")
    call(db, "reserve", fx.ka, live)
    with raises("IDEMPOTENCY_MISMATCH"):
        call(db, "reserve", fx.ka, {**live, "dry_run": True})
    # decide has its own namespace.
    assert call(db, "decide", fx.ka, {k: v for k, v in live.items()})["decision"] == "ALLOW"


def test_same_key_in_two_tenants_gives_two_reservations(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    a = call(db, "reserve", fx.ka, reserve_request(10, key="k"))
    b = call(db, "reserve", fx.kb, reserve_request(10, key="k", subject={"tenant": "beta"}))
    assert a["reservation_id"] != b["reservation_id"]


def test_namespaces_are_per_endpoint_and_reservation(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    r1 = call(db, "reserve", fx.ka, reserve_request(10, key="k"))["reservation_id"]
    r2 = call(db, "reserve", fx.ka, reserve_request(10, key="k2"))["reservation_id"]
    actual = {"unit": "USD_MICROCENTS", "amount": 5}
    # The same key commits two reservations, and is also usable on events.
    call(db, "commit", fx.ka, r1, {"idempotency_key": "k", "actual": actual})
    call(db, "commit", fx.ka, r2, {"idempotency_key": "k", "actual": actual})
    applied = call(db, "create_event", fx.ka, {
        "idempotency_key": "k", "subject": {"workspace": "w1"},
        "action": {"kind": "x.y", "name": "n"}, "actual": actual})
    assert applied["status"] == "APPLIED"
    assert budget(db, W1)["spent"] == 15
    assert_ledger_consistent(db)


def test_failures_are_not_recorded(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    with raises("BUDGET_EXCEEDED"):
        call(db, "reserve", fx.ka, reserve_request(100_001, key="retry"))
    assert db.execute("SELECT count(*) FROM cycles.idempotency_records").fetchone() == (0,)
    # Same key, a different (now smaller) request succeeds.
    assert call(db, "reserve", fx.ka, reserve_request(10, key="retry"))["decision"] == "ALLOW"


def test_expired_record_is_replaced(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    call(db, "decide", fx.ka, reserve_request(10, key="old"))
    db.execute("UPDATE cycles.idempotency_records SET created_at = created_at - interval '30 days',"
               " expires_at = clock_timestamp() - interval '1 second'")
    assert call(db, "decide", fx.ka, reserve_request(100_001, key="old"))["decision"] == "DENY"


def test_reserve_record_is_kept_at_least_seven_days(db: psycopg.Connection) -> None:
    fx = standard_fixture(db)
    call(db, "reserve", fx.ka, reserve_request(10, key="k"))
    kept = db.execute("SELECT expires_at - created_at >= interval '7 days' FROM cycles.idempotency_records"
                      ).fetchone()
    assert kept == (True,)
