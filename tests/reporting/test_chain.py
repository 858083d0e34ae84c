"""The ledger hash chain: every writer extends it, and a superuser's alteration is found."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.reporting import workload
from tests.sql.test_runtime_concurrency import run_in_threads


def broken(db: psycopg.Connection, *args: Any) -> list[tuple[Any, ...]]:
    placeholders = ", ".join(["%s"] * len(args))
    return db.execute(f"SELECT scope, unit, entry_id, problem FROM cycles.verify_ledger_chain({placeholders})",  # type: ignore[arg-type]
                      args).fetchall()


@contextmanager
def tampering(db: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """Superuser rights with the append-only trigger disabled: what an attacker with the keys could do."""
    db.execute("ALTER TABLE cycles.ledger_entries DISABLE TRIGGER ledger_entries_append_only")
    try:
        yield db
    finally:
        db.execute("ALTER TABLE cycles.ledger_entries ENABLE TRIGGER ledger_entries_append_only")


@pytest.fixture
def filled(db: psycopg.Connection) -> psycopg.Connection:
    workload.run(db, seed=11, operations_per_tenant=12)
    assert broken(db) == []
    return db


def middle_row(db: psycopg.Connection, scope: str = "tenant:t-alpha", unit: str = "TOKENS") -> tuple[int, int]:
    """The id of a row in the middle of a chain, and of the row after it."""
    ids = [r[0] for r in db.execute(
        "SELECT entry_id FROM cycles.ledger_entries WHERE scope = %s AND unit = %s ORDER BY created_at",
        (scope, unit)).fetchall()]
    assert len(ids) >= 5
    middle = len(ids) // 2
    return ids[middle], ids[middle + 1]


def test_changed_row_is_the_first_broken_link(filled: psycopg.Connection) -> None:
    target, _ = middle_row(filled)
    with tampering(filled):
        filled.execute("UPDATE cycles.ledger_entries SET reason = 'edited' WHERE entry_id = %s", (target,))
    assert broken(filled) == [("tenant:t-alpha", "TOKENS", target, "entry_hash")]
    assert broken(filled, "t-beta") == []
    assert broken(filled, None, "tenant:t-alpha", "TOKENS") == [("tenant:t-alpha", "TOKENS", target, "entry_hash")]


def test_changed_amount_with_a_recomputed_hash_breaks_the_next_link(filled: psycopg.Connection) -> None:
    target, following = middle_row(filled)
    with tampering(filled):
        filled.execute("""
            UPDATE cycles.ledger_entries AS l SET spent_delta = l.spent_delta + 1, spent_after = l.spent_after + 1
            WHERE l.entry_id = %s""", (target,))
        filled.execute("UPDATE cycles.ledger_entries AS l SET entry_hash = cycles._ledger_entry_hash(l)"
                       " WHERE l.entry_id = %s", (target,))
    assert broken(filled) == [("tenant:t-alpha", "TOKENS", following, "prev_hash")]


def test_deleted_row_breaks_the_next_link(filled: psycopg.Connection) -> None:
    target, following = middle_row(filled, "tenant:t-gamma", "USD_MICROCENTS")
    with tampering(filled):
        filled.execute("DELETE FROM cycles.ledger_entries WHERE entry_id = %s", (target,))
    assert broken(filled) == [("tenant:t-gamma", "USD_MICROCENTS", following, "prev_hash")]


def test_running_balance_that_does_not_follow_is_found(filled: psycopg.Connection) -> None:
    target, _ = middle_row(filled)
    with tampering(filled):
        filled.execute("UPDATE cycles.ledger_entries AS l SET debt_after = l.debt_after + 7 WHERE l.entry_id = %s",
                       (target,))
        filled.execute("UPDATE cycles.ledger_entries AS l SET entry_hash = cycles._ledger_entry_hash(l)"
                       " WHERE l.entry_id = %s", (target,))
    assert broken(filled) == [("tenant:t-alpha", "TOKENS", target, "balance")]


def test_rewritten_tail_shows_in_reconciliation(filled: psycopg.Connection) -> None:
    # Removing a chain's last row leaves a consistent chain: the live counters
    # and the exported chain heads are what catch it.
    heads = dict(filled.execute("SELECT scope || ' ' || unit, entry_hash FROM cycles_reporting.chain_heads").fetchall())
    last = filled.execute("SELECT entry_id FROM cycles.ledger_entries WHERE scope = 'tenant:t-alpha'"
                          " AND unit = 'TOKENS' AND reserved_delta <> 0 ORDER BY created_at DESC LIMIT 1").fetchone()
    assert last is not None
    with tampering(filled):
        filled.execute("DELETE FROM cycles.ledger_entries WHERE entry_id >= %s AND scope = 'tenant:t-alpha'"
                       " AND unit = 'TOKENS'", (last[0],))
    assert broken(filled) == []
    drift = filled.execute("SELECT scope, counter FROM cycles_reporting.reconciliation").fetchall()
    assert ("tenant:t-alpha", "reserved") in drift
    after = dict(filled.execute("SELECT scope || ' ' || unit, entry_hash FROM cycles_reporting.chain_heads").fetchall())
    assert after["tenant:t-alpha TOKENS"] != heads["tenant:t-alpha TOKENS"]


def test_first_row_naming_a_predecessor_is_found(filled: psycopg.Connection) -> None:
    first = filled.execute("SELECT entry_id FROM cycles.ledger_entries WHERE scope = 'tenant:t-beta'"
                           " AND unit = 'TOKENS' ORDER BY created_at LIMIT 1").fetchone()
    assert first is not None
    with tampering(filled):
        filled.execute("UPDATE cycles.ledger_entries SET prev_hash = sha256('x') WHERE entry_id = %s", first)
    assert broken(filled) == [("tenant:t-beta", "TOKENS", first[0], "first_row")]


def test_tenant_close_cascade_and_bulk_funding_extend_the_chains(db: psycopg.Connection) -> None:
    workload.run(db, seed=5, operations_per_tenant=4)
    key = db.execute("SELECT cycles.create_api_key('t-alpha', 'late') ->> 'key_secret'").fetchone()
    assert key is not None
    for n in range(3):
        db.execute("SELECT cycles.reserve(%s, %s)", (key[0], Jsonb({
            "idempotency_key": f"open-{n}", "subject": {"workspace": "w1", "agent": "coder"},
            "action": {"kind": "llm", "name": "x"}, "estimate": {"unit": "TOKENS", "amount": 5}})))
    db.execute("SELECT cycles.close_budget('tenant:t-beta/workspace:w2', 'USD_MICROCENTS')")
    db.execute("SELECT cycles.close_tenant('t-alpha')")
    assert broken(db) == []
    assert db.execute("SELECT count(*) FROM cycles_reporting.reconciliation").fetchone() == (0,)
    # The cascade released each open reservation on all three budgets: one lead row each.
    leads = db.execute("""
        SELECT reservation_id, count(*) FILTER (WHERE operation_lead), count(*)
        FROM cycles.ledger_entries WHERE operation = 'RELEASE' AND reason = 'tenant_closed'
        GROUP BY reservation_id""").fetchall()
    assert sorted(r[1:] for r in leads) == [(1, 3)] * 3
    closes = db.execute("SELECT count(*) FROM cycles.ledger_entries WHERE operation = 'CLOSE'").fetchone()
    assert closes == (6,)


def test_verify_ledger_chain_is_granted_like_every_public_function(db: psycopg.Connection) -> None:
    db.execute("SET ROLE cycles_app")
    assert db.execute("SELECT count(*) FROM cycles.verify_ledger_chain()").fetchone() == (0,)


def test_concurrent_writers_of_one_budget_keep_one_chain(db: psycopg.Connection) -> None:
    # Reserves, commits, events and funding of the same tenant budget from
    # four connections at once: each writer holds the budget row locked, so
    # the chain never forks and the running balances stay exact.
    workload.run(db, seed=17, operations_per_tenant=1)
    key = db.execute("SELECT cycles.create_api_key('t-beta', 'race') ->> 'key_secret'").fetchone()
    assert key is not None
    secret = key[0]

    def worker(seed: int) -> Callable[[psycopg.Connection], int]:
        def run(conn: psycopg.Connection) -> int:
            rng = random.Random(seed)
            done = 0
            for _ in range(15):
                subject = {"workspace": "w1", "agent": rng.choice(["coder", "critic"])}
                action = {"kind": "llm", "name": "x"}
                try:
                    if rng.random() < 0.2:
                        conn.execute("SELECT cycles.fund_budget('tenant:t-beta', 'TOKENS', 'CREDIT', 10, %s)",
                                     (uuid.uuid4().hex,))
                    elif rng.random() < 0.3:
                        conn.execute("SELECT cycles.create_event(%s, %s)", (secret, Jsonb({
                            "idempotency_key": uuid.uuid4().hex, "subject": subject, "action": action,
                            "actual": {"unit": "TOKENS", "amount": rng.randint(1, 50)}})))
                    else:
                        row = conn.execute("SELECT cycles.reserve(%s, %s) ->> 'reservation_id'", (secret, Jsonb({
                            "idempotency_key": uuid.uuid4().hex, "subject": subject, "action": action,
                            "estimate": {"unit": "TOKENS", "amount": rng.randint(1, 50)}}))).fetchone()
                        assert row is not None
                        conn.execute("SELECT cycles.commit(%s, %s, %s)", (secret, row[0], Jsonb({
                            "idempotency_key": uuid.uuid4().hex, "actual": {"unit": "TOKENS", "amount": 7}})))
                    done += 1
                except psycopg.Error as exc:
                    assert exc.sqlstate is not None and exc.sqlstate.startswith("CY"), exc
            return done

        return run

    results = run_in_threads(db.info.dsn, [worker(n) for n in range(4)])
    assert all(isinstance(r, int) for r in results), results
    assert sum(results) > 30
    assert broken(db) == []
    assert db.execute("SELECT count(*) FROM cycles_reporting.reconciliation").fetchone() == (0,)
    forks = db.execute("SELECT budget_id, prev_hash FROM cycles.ledger_entries WHERE prev_hash IS NOT NULL"
                       " GROUP BY 1, 2 HAVING count(*) > 1").fetchall()
    assert forks == []
