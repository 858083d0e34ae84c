"""cycles.fund_budget: CREDIT, DEBIT, RESET, RESET_SPENT, REPAY_DEBT, idempotency and bad input."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.sql.admin_calls import ISO, MAX, call, fails

FUND = """SELECT cycles.fund_budget(p_scope => %(scope)s, p_unit => %(unit)s, p_operation => %(op)s,
                                  p_amount => %(amount)s, p_idempotency_key => %(key)s, p_spent => %(spent)s,
                                  p_reason => %(reason)s)"""


def fund(db: psycopg.Connection, op: str, amount: int | None, key: str, *, scope: str = "tenant:acme",
         unit: str = "TOKENS", spent: int | None = None, reason: str | None = None) -> Any:
    return call(db, FUND, scope=scope, unit=unit, op=op, amount=amount, key=key, spent=spent, reason=reason)


def fund_fails(db: psycopg.Connection, code: str, op: str | None, amount: int | None, key: str | None, *,
               scope: str = "tenant:acme", unit: str = "TOKENS", spent: int | None = None,
               reason: str | None = None) -> None:
    fails(db, code, FUND, scope=scope, unit=unit, op=op, amount=amount, key=key, spent=spent, reason=reason)


def counters(db: psycopg.Connection, scope: str = "tenant:acme") -> tuple[int, ...]:
    row = db.execute("SELECT allocated, spent, reserved, debt, remaining FROM cycles.budgets WHERE scope = %s",
                     (scope,)).fetchone()
    assert row is not None
    return tuple(row)


def snapshot(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    return [*db.execute("SELECT * FROM cycles.budgets ORDER BY budget_id").fetchall(),
            *db.execute("SELECT entry_id FROM cycles.ledger_entries ORDER BY entry_id").fetchall(),
            *db.execute("SELECT seq FROM cycles.events ORDER BY seq").fetchall(),
            *db.execute("SELECT idempotency_key FROM cycles.idempotency_records ORDER BY 1").fetchall()]


def last_ledger(db: psycopg.Connection) -> tuple[Any, ...]:
    row = db.execute("SELECT operation, allocated_delta, spent_delta, reserved_delta, debt_delta, idempotency_key, "
                     "reason FROM cycles.ledger_entries ORDER BY entry_id DESC LIMIT 1").fetchone()
    assert row is not None
    return tuple(row)


def no_drift(db: psycopg.Connection) -> None:
    assert db.execute("SELECT * FROM cycles.verify_ledger()").fetchall() == []


def set_state(db: psycopg.Connection, *, spent: int = 0, reserved: int = 0, debt: int = 0,
              over_limit: bool = False) -> None:
    """Moves the budget the way the runtime would (counters plus a matching ledger row)."""
    db.execute("""UPDATE cycles.budgets SET spent = spent + %(s)s, reserved = reserved + %(r)s, debt = debt + %(d)s,
                      remaining = remaining - %(s)s - %(r)s - %(d)s, is_over_limit = %(o)s
                  WHERE scope = 'tenant:acme'""", {"s": spent, "r": reserved, "d": debt, "o": over_limit})
    db.execute("""SELECT cycles._append_ledger(p_budget_id => budget_id, p_tenant_id => 'acme', p_scope => scope,
                      p_unit => unit, p_operation => 'COMMIT', p_actor => '{"type": "api_key"}',
                      p_spent_delta => %(s)s, p_reserved_delta => %(r)s, p_debt_delta => %(d)s)
                  FROM cycles.budgets WHERE scope = 'tenant:acme'""", {"s": spent, "r": reserved, "d": debt})


@pytest.fixture
def acme(db: psycopg.Connection) -> psycopg.Connection:
    call(db, "SELECT cycles.create_tenant('acme', 'Acme')")
    call(db, "SELECT cycles.create_budget('tenant:acme', 'TOKENS', 1000, 500)")
    return db


def test_credit(acme: psycopg.Connection) -> None:
    response = fund(acme, "CREDIT", 250, "k1", reason="top-up")
    t = lambda n: {"unit": "TOKENS", "amount": n}  # noqa: E731
    assert response == {
        "operation": "CREDIT", "previous_allocated": t(1000), "new_allocated": t(1250),
        "previous_remaining": t(1000), "new_remaining": t(1250), "previous_debt": t(0), "new_debt": t(0),
        "previous_spent": t(0), "new_spent": t(0), "timestamp": response["timestamp"]}
    assert ISO.match(response["timestamp"])
    assert counters(acme) == (1250, 0, 0, 0, 1250)
    assert last_ledger(acme) == ("CREDIT", 250, 0, 0, 0, "k1", "top-up")
    event = acme.execute("SELECT event_type, data FROM cycles.events ORDER BY seq DESC LIMIT 1").fetchone()
    assert event is not None and event[0] == "budget.funded"
    assert event[1]["operation"] == "CREDIT" and event[1]["reason"] == "top-up"
    assert event[1]["previous_state"]["allocated"] == 1000 and event[1]["new_state"]["allocated"] == 1250
    no_drift(acme)


def test_credit_repays_debt_first(acme: psycopg.Connection) -> None:
    set_state(acme, spent=1000, debt=300)
    assert counters(acme) == (1000, 1000, 0, 300, -300)
    partial = fund(acme, "CREDIT", 200, "k1")
    assert (partial["new_debt"]["amount"], partial["new_allocated"]["amount"], partial["new_remaining"]["amount"]) \
        == (100, 1000, -100)
    assert last_ledger(acme)[:5] == ("CREDIT", 0, 0, 0, -200)
    rest = fund(acme, "CREDIT", 150, "k2")
    assert (rest["new_debt"]["amount"], rest["new_allocated"]["amount"], rest["new_remaining"]["amount"]) \
        == (0, 1050, 50)
    assert last_ledger(acme)[:5] == ("CREDIT", 50, 0, 0, -100)
    no_drift(acme)


def test_debit(acme: psycopg.Connection) -> None:
    set_state(acme, spent=100, reserved=200)
    response = fund(acme, "DEBIT", 700, "k1")
    assert (response["new_allocated"]["amount"], response["new_remaining"]["amount"]) == (300, 0)
    assert last_ledger(acme)[:5] == ("DEBIT", -700, 0, 0, 0)
    assert call(acme, "SELECT event_type FROM cycles.events ORDER BY seq DESC LIMIT 1") == "budget.debited"
    no_drift(acme)


def test_debit_larger_than_remaining_changes_nothing(acme: psycopg.Connection) -> None:
    set_state(acme, spent=100)
    before = snapshot(acme)
    fund_fails(acme, "BUDGET_EXCEEDED", "DEBIT", 901, "k1")
    assert snapshot(acme) == before
    set_state(acme, spent=900, debt=10)  # remaining negative: any debit fails
    before = snapshot(acme)
    fund_fails(acme, "BUDGET_EXCEEDED", "DEBIT", 1, "k2")
    assert snapshot(acme) == before


def test_reset_keeps_spent_reserved_debt(acme: psycopg.Connection) -> None:
    set_state(acme, spent=300, reserved=200, debt=50)
    response = fund(acme, "RESET", 400, "k1")
    assert (response["new_allocated"]["amount"], response["new_remaining"]["amount"]) == (400, -150)
    assert counters(acme) == (400, 300, 200, 50, -150)
    assert last_ledger(acme)[:5] == ("RESET", -600, 0, 0, 0)
    same = fund(acme, "RESET", 400, "k2")  # a reset to the current value is a zero-delta row
    assert same["new_allocated"] == same["previous_allocated"]
    assert last_ledger(acme)[:5] == ("RESET", 0, 0, 0, 0)
    assert call(acme, "SELECT event_type FROM cycles.events ORDER BY seq DESC LIMIT 1") == "budget.reset"
    no_drift(acme)


def test_reset_spent(acme: psycopg.Connection) -> None:
    set_state(acme, spent=900, reserved=50, debt=20)
    rollover = fund(acme, "RESET_SPENT", 2000, "k1")
    assert (rollover["previous_spent"]["amount"], rollover["new_spent"]["amount"]) == (900, 0)
    assert counters(acme) == (2000, 0, 50, 20, 1930)
    assert last_ledger(acme)[:5] == ("RESET_SPENT", 1000, -900, 0, 0)
    event = call(acme, "SELECT data FROM cycles.events WHERE event_type = 'budget.reset_spent'")
    assert event["spent_override_provided"] is False and event["previous_state"]["reserved"] == 50
    migrated = fund(acme, "RESET_SPENT", 100, "k2", spent=500)
    assert migrated["new_remaining"]["amount"] == 100 - 500 - 50 - 20
    event = call(acme, "SELECT data FROM cycles.events WHERE event_type = 'budget.reset_spent' ORDER BY seq DESC")
    assert event["spent_override_provided"] is True
    no_drift(acme)


def test_spent_is_ignored_outside_reset_spent(acme: psycopg.Connection) -> None:
    fund(acme, "CREDIT", 5, "k1", spent=-7)
    assert counters(acme) == (1005, 0, 0, 0, 1005)


def test_repay_debt(acme: psycopg.Connection) -> None:
    set_state(acme, spent=1000, debt=300, over_limit=True)
    partial = fund(acme, "REPAY_DEBT", 100, "k1")
    assert (partial["previous_debt"]["amount"], partial["new_debt"]["amount"]) == (300, 200)
    assert partial["new_allocated"]["amount"] == 1000
    assert last_ledger(acme)[:5] == ("REPAY_DEBT", 0, 0, 0, -100)
    excess = fund(acme, "REPAY_DEBT", 250, "k2")
    assert (excess["new_debt"]["amount"], excess["new_allocated"]["amount"], excess["new_remaining"]["amount"]) \
        == (0, 1050, 50)
    assert last_ledger(acme)[:5] == ("REPAY_DEBT", 50, 0, 0, -200)
    kinds = [r[0] for r in acme.execute("SELECT event_type FROM cycles.events WHERE category = 'budget' ORDER BY seq")]
    # The first repayment already clears the sticky flag: debt 200 <= limit 500.
    assert kinds == ["budget.created", "budget.debt_repaid", "budget.over_limit_exited", "budget.debt_repaid"]
    assert call(acme, "SELECT is_over_limit FROM cycles.budgets") is False
    no_drift(acme)


def test_is_over_limit_recomputed_against_overdraft_limit(acme: psycopg.Connection) -> None:
    set_state(acme, spent=1000, debt=800, over_limit=True)
    fund(acme, "REPAY_DEBT", 200, "k1")  # debt 600 > limit 500: still over
    assert call(acme, "SELECT is_over_limit FROM cycles.budgets") is True
    fund(acme, "REPAY_DEBT", 100, "k2")  # debt 500: not over
    assert call(acme, "SELECT is_over_limit FROM cycles.budgets") is False


def test_replay_returns_stored_response(acme: psycopg.Connection) -> None:
    first = fund(acme, "CREDIT", 10, "same-key", reason="r")
    before = snapshot(acme)
    assert fund(acme, "CREDIT", 10, "same-key", reason="r") == first
    assert snapshot(acme) == before
    # A replay wins even once the budget has since been frozen.
    call(acme, "SELECT cycles.freeze_budget('tenant:acme', 'TOKENS')")
    assert fund(acme, "CREDIT", 10, "same-key", reason="r") == first


@pytest.mark.parametrize("changed", [
    {"amount": 11}, {"op": "DEBIT"}, {"reason": "other"}, {"scope": "tenant:acme/workspace:w"},
    {"unit": "CREDITS"}])
def test_same_key_other_request_is_mismatch(acme: psycopg.Connection, changed: dict[str, Any]) -> None:
    call(acme, "SELECT cycles.create_budget('tenant:acme/workspace:w', 'TOKENS', 10)")
    call(acme, "SELECT cycles.create_budget('tenant:acme', 'CREDITS', 10)")
    fund(acme, "CREDIT", 10, "same-key", reason="r")
    request = {"scope": "tenant:acme", "unit": "TOKENS", "op": "CREDIT", "amount": 10, "key": "same-key",
               "spent": None, "reason": "r"} | changed
    before = snapshot(acme)
    fails(acme, "IDEMPOTENCY_MISMATCH", FUND, **request)
    assert snapshot(acme) == before


def test_keys_are_per_tenant(acme: psycopg.Connection) -> None:
    call(acme, "SELECT cycles.create_tenant('other', 'Other')")
    call(acme, "SELECT cycles.create_budget('tenant:other', 'TOKENS', 1)")
    fund(acme, "CREDIT", 10, "shared")
    assert fund(acme, "CREDIT", 5, "shared", scope="tenant:other")["new_allocated"]["amount"] == 6


def test_expired_idempotency_record_is_not_replayed(acme: psycopg.Connection) -> None:
    fund(acme, "CREDIT", 10, "old")
    acme.execute("UPDATE cycles.idempotency_records SET created_at = now() - interval '2 days', "
                 "expires_at = now() - interval '1 day'")
    fund(acme, "DEBIT", 10, "old")
    assert counters(acme) == (1000, 0, 0, 0, 1000)


@pytest.mark.parametrize(("op", "amount", "key", "extra", "code"), [
    ("GIFT", 10, "k", {}, "INVALID_REQUEST"),
    (None, 10, "k", {}, "INVALID_REQUEST"),
    ("credit", 10, "k", {}, "INVALID_REQUEST"),
    ("CREDIT", -1, "k", {}, "INVALID_REQUEST"),
    ("CREDIT", None, "k", {}, "INVALID_REQUEST"),
    ("CREDIT", 0, "k", {}, "INVALID_REQUEST"),
    ("DEBIT", 0, "k", {}, "INVALID_REQUEST"),
    ("REPAY_DEBT", 0, "k", {}, "INVALID_REQUEST"),
    ("RESET", -5, "k", {}, "INVALID_REQUEST"),
    ("RESET_SPENT", 10, "k", {"spent": -1}, "INVALID_REQUEST"),
    ("CREDIT", 10, None, {}, "INVALID_REQUEST"),
    ("CREDIT", 10, "", {}, "INVALID_REQUEST"),
    ("CREDIT", 10, "k" * 257, {}, "INVALID_REQUEST"),
    ("CREDIT", 10, "k", {"reason": "r" * 513}, "INVALID_REQUEST"),
    ("CREDIT", 10, "k", {"unit": "EUROS"}, "INVALID_REQUEST"),
    ("CREDIT", 10, "k", {"scope": "tenant:acme/bogus:x"}, "INVALID_REQUEST"),
    ("CREDIT", 10, "k", {"scope": "tenant:ghost"}, "TENANT_NOT_FOUND"),
    ("CREDIT", 10, "k", {"scope": "tenant:acme/workspace:none"}, "BUDGET_NOT_FOUND"),
    ("CREDIT", 10, "k", {"unit": "CREDITS"}, "BUDGET_NOT_FOUND"),
    ("CREDIT", MAX, "k", {}, "INVALID_REQUEST"),
    ("RESET_SPENT", 0, "k", {"spent": MAX}, "INVALID_REQUEST"),
])
def test_bad_input_changes_nothing(acme: psycopg.Connection, op: str | None, amount: int | None, key: str | None,
                                   extra: dict[str, Any], code: str) -> None:
    set_state(acme, reserved=10, debt=5)
    before = snapshot(acme)
    fund_fails(acme, code, op, amount, key, **extra)
    assert snapshot(acme) == before


def test_amounts_up_to_the_int64_limit_are_exact(acme: psycopg.Connection) -> None:
    fund(acme, "RESET", MAX, "k1")
    assert counters(acme) == (MAX, 0, 0, 0, MAX)
    fund(acme, "DEBIT", MAX - 1, "k2")
    assert counters(acme) == (1, 0, 0, 0, 1)
    fund(acme, "CREDIT", MAX - 1, "k3")
    assert counters(acme) == (MAX, 0, 0, 0, MAX)
    no_drift(acme)


def test_actor_context_is_recorded(acme: psycopg.Connection) -> None:
    # The actor comes from the credential SQL authenticated, never from what
    # the context claims: a tenant key's secret in p_ctx makes it api_key.
    key = call(acme, "SELECT cycles.create_api_key('acme', 'funder', ARRAY['budgets:write'])")
    acme.execute("SELECT cycles.fund_budget('tenant:acme', 'TOKENS', 'CREDIT', 1, 'k1', p_ctx => %s::jsonb)",
                 (psycopg.types.json.Jsonb({"api_key": key["key_secret"], "actor_type": "admin",
                                            "request_id": "r", "trace_id": "t"}),))
    assert acme.execute("SELECT actor_type, actor_key_id, request_id, trace_id FROM cycles.ledger_entries "
                        "ORDER BY entry_id DESC LIMIT 1").fetchone() == ("api_key", key["key_id"], "r", "t")
