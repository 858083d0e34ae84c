"""Every report against a recomputation from the raw ledger in Python (tests/reporting/workload.py)."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.reporting.workload import (
    DIMENSION_COLUMNS,
    RUNTIME_OPERATIONS,
    SPAN,
    START,
    TENANTS,
    Ledger,
    canonical_text,
    truncate,
)

MEASURES = ("spent", "debt", "charged", "reserved", "released", "expired", "charges")


def rows(db: psycopg.Connection, sql: str, *args: Any) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, args).fetchall()  # type: ignore[arg-type]


def test_workload_is_rich_enough(ledger: Ledger) -> None:
    operations = {row["operation"] for row in ledger.rows}
    assert set(RUNTIME_OPERATIONS) <= operations and {"CREATE", "CREDIT"} <= operations
    assert any(row["debt_delta"] > 0 for row in ledger.rows), "some charge went into debt"
    assert len(ledger.months()) >= 3
    assert len(ledger.rows) > len(ledger.leads) > 0
    assert {e["event_type"] for e in ledger.events} >= {"reservation.denied", "reservation.expired"}


def report_column(dimension: str) -> str:
    return "tenant_id" if dimension == "tenant" else dimension


SPEND_CASES = [
    ("day", ["tenant"], None, None, None, "UTC"),
    ("month", ["tenant"], None, None, None, "UTC"),
    ("hour", ["tenant", "agent"], "t-alpha", None, None, "UTC"),
    ("day", ["scope"], "t-beta", "TOKENS", None, "UTC"),
    ("month", ["scope"], None, None, "tenant:t-alpha/workspace:w1", "UTC"),
    ("month", ["agent"], None, None, "tenant:t-alpha/workspace:w1", "UTC"),
    ("total", ["action_kind", "action_name"], None, None, None, "UTC"),
    ("total", ["workspace", "workflow", "agent"], "t-gamma", "USD_MICROCENTS", None, "UTC"),
    ("day", ["tenant"], None, None, None, "America/New_York"),
    ("month", ["tenant", "scope", "action_name"], None, None, None, "Asia/Kolkata"),
    ("total", ["toolset", "app"], None, None, None, "UTC"),
    ("total", [], None, None, "tenant:t-beta", "UTC"),
]


@pytest.mark.parametrize(("bucket", "group_by", "tenant", "unit", "prefix", "zone"), SPEND_CASES)
def test_spend_matches_the_raw_ledger(workload_db: psycopg.Connection, ledger: Ledger, bucket: str,
                                      group_by: list[str], tenant: str | None, unit: str | None,
                                      prefix: str | None, zone: str) -> None:
    rng = random.Random(f"{bucket}{group_by}{tenant}{prefix}{zone}")
    ranges = [(START - timedelta(days=1), START + SPAN + timedelta(days=1))]
    for _ in range(2):
        a, b = sorted(rng.choice(ledger.rows)["created_at"] for _ in range(2))
        ranges.append((a, b + timedelta(microseconds=1)))
    dims = [d for d in DIMENSION_COLUMNS if d in set(group_by) | {"unit"}]
    seen = 0
    for start, end in ranges:
        expected = ledger.spend(start, end, bucket, group_by, tenant, unit, prefix, zone)
        found = {}
        for row in rows(workload_db, "SELECT * FROM cycles_reporting.spend(%s, %s, %s, %s, %s, %s, %s, %s)",
                        start, end, bucket, group_by, tenant, unit, prefix, zone):
            key = (row["bucket_start"], *(row[report_column(d)] for d in dims))
            found[key] = {m: int(row[m]) for m in MEASURES}
            for other in set(DIMENSION_COLUMNS) - set(dims):
                assert row[report_column(other)] is None
        assert found == expected
        seen += len(found)
    assert seen, "some range should hold rows"


def test_spend_by_tenant_counts_each_operation_once(workload_db: psycopg.Connection, ledger: Ledger) -> None:
    # A commit that touched three budgets is one charge: the tenant total equals
    # the sum over commits and events of their charge, taken once each.
    by_operation: dict[tuple[str, str, str], int] = {}
    for row in ledger.rows:
        if row["operation"] in ("COMMIT", "EVENT"):
            group = (row["unit"], row["operation"], row["reservation_id"] or row["event_id"])
            charge = row["spent_delta"] + row["debt_delta"]
            assert by_operation.setdefault(group, charge) == charge, "one charge at every level"
    expected: dict[str, int] = defaultdict(int)
    for (unit, _, _), charge in by_operation.items():
        expected[unit] += charge
    found = rows(workload_db, "SELECT unit, charged FROM cycles_reporting.spend(%s, %s, 'total', '{}')",
                 START - timedelta(days=1), START + SPAN + timedelta(days=1))
    assert {r["unit"]: int(r["charged"]) for r in found} == dict(expected)


@pytest.mark.parametrize("dimension", ["agent", "workflow", "action_name", "tenant", "scope"])
def test_top_spenders_match_the_raw_ledger(workload_db: psycopg.Connection, ledger: Ledger, dimension: str) -> None:
    start, end = START, START + timedelta(days=60)
    column = DIMENSION_COLUMNS[dimension]
    sums: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    totals: dict[str, int] = defaultdict(int)
    for row in ledger.rows:
        if not start <= row["created_at"] < end or row["operation"] not in ("COMMIT", "EVENT"):
            continue
        if dimension != "scope" and row["entry_id"] not in ledger.leads:
            continue
        amount = row["spent_delta"] + row["debt_delta"]
        totals[row["unit"]] += amount
        if row[column] is not None:
            entry = sums[(row["unit"], row["tenant_id"], row[column])]
            entry[0] += amount
            entry[1] += 1
    expected = []
    for unit in sorted(totals):
        ranked = sorted(((k, v) for k, v in sums.items() if k[0] == unit), key=lambda kv: (-kv[1][0], kv[0][1], kv[0][2]))
        for rank, ((_, tenant, key), (charged, charges)) in enumerate(ranked[:3], start=1):
            expected.append((unit, rank, tenant, key, charged, charges,
                             (Decimal(charged) / totals[unit]).quantize(Decimal("0.000001"), ROUND_HALF_UP)
                             if totals[unit] else None))
    found = [(r["unit"], r["rank"], r["tenant_id"], r["key"], int(r["charged"]), r["charges"], r["share"])
             for r in rows(workload_db, "SELECT * FROM cycles_reporting.top_spenders(%s, %s, %s, 3)",
                           start, end, dimension)]
    assert found == expected
    assert len(found) >= 2


def test_utilisation_is_every_budget_now(workload_db: psycopg.Connection, ledger: Ledger) -> None:
    found = {(r["scope"], r["unit"]): r for r in rows(workload_db, "SELECT * FROM cycles_reporting.utilisation")}
    assert len(found) == len(ledger.budgets)
    for budget in ledger.budgets:
        row = found[(budget["scope"], budget["unit"])]
        used = budget["spent"] + budget["reserved"] + budget["debt"]
        assert row["utilisation"] == ((Decimal(used) / budget["allocated"]).quantize(Decimal("0.000001"), ROUND_HALF_UP)
                                      if budget["allocated"] else None)
        assert (row["allocated"], row["spent"], row["reserved"], row["debt"], row["remaining"]) == (
            budget["allocated"], budget["spent"], budget["reserved"], budget["debt"], budget["remaining"])
        assert row["has_debt"] == (budget["debt"] > 0) and row["is_over_limit"] == budget["is_over_limit"]
        assert row["status"] == budget["status"]
    assert any(r["status"] == "FROZEN" for r in found.values())


@pytest.mark.parametrize("bucket", ["day", "month", "total"])
def test_denials_and_expiries_match_the_event_outbox(workload_db: psycopg.Connection, ledger: Ledger,
                                                      bucket: str) -> None:
    start, end = START - timedelta(days=1), START + SPAN + timedelta(days=1)
    expected: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
    for event in ledger.events:
        if event["event_type"] not in ("reservation.denied", "reservation.expired"):
            continue
        data = event["data"]
        key = (start if bucket == "total" else truncate(event["created_at"], bucket, "UTC"), event["tenant_id"],
               event["event_type"], data.get("reason_code"), data.get("unit"))
        expected[key][0] += 1
        expected[key][1] += data.get("requested_amount", data.get("estimated_amount"))
    found = {(r["bucket_start"], r["tenant_id"], r["event_type"], r["reason_code"], r["unit"]):
             [r["events"], int(r["amount"])]
             for r in rows(workload_db, "SELECT * FROM cycles_reporting.denials_and_expiries(%s, %s, %s)",
                           start, end, bucket)}
    assert found == dict(expected)
    assert {k[2] for k in found} == {"reservation.denied", "reservation.expired"}


def test_balance_as_of_equals_a_replay_at_random_instants(workload_db: psycopg.Connection, ledger: Ledger) -> None:
    rng = random.Random(7)
    instants = [START - timedelta(days=3), START + SPAN + timedelta(days=3)]
    instants += [START + SPAN * rng.random() for _ in range(25)]
    instants += [rng.choice(ledger.rows)["created_at"] for _ in range(10)]  # at a row: it counts
    instants += [t - timedelta(microseconds=1) for t in instants[-10:]]    # just before it: it does not
    for budget in ledger.budgets:
        for moment in instants:
            replay = ledger.balance_at(budget["budget_id"], moment)
            found = rows(workload_db, "SELECT * FROM cycles_reporting.balance_as_of(%s, %s, %s)",
                         budget["scope"], budget["unit"], moment)
            if replay is None:
                assert found == []
                continue
            (row,) = found
            assert (row["allocated"], row["spent"], row["reserved"], row["debt"]) == replay
            assert row["remaining"] == replay[0] - replay[1] - replay[2] - replay[3]
            assert row["entry_created_at"] <= moment
    now = {(b["scope"], b["unit"]): b for b in ledger.budgets}
    for (scope, unit), budget in now.items():
        (latest,) = rows(workload_db, "SELECT * FROM cycles_reporting.balance_as_of(%s, %s, '2100-01-01')", scope, unit)
        assert (latest["allocated"], latest["spent"], latest["reserved"], latest["debt"], latest["remaining"]) == (
            budget["allocated"], budget["spent"], budget["reserved"], budget["debt"], budget["remaining"])


def test_statement_identity_holds_for_every_tenant_and_month(workload_db: psycopg.Connection, ledger: Ledger) -> None:
    months = ledger.months()
    checked = 0
    for tenant in TENANTS:
        for month in [*months, months[-1] + timedelta(days=40)]:
            start = month
            end = truncate(month + timedelta(days=40), "month", "UTC")
            lines = rows(workload_db, "SELECT * FROM cycles_reporting.statement(%s, %s)", tenant, month.date())
            budgets = [b for b in ledger.budgets if b["tenant_id"] == tenant]
            assert [(r["scope"], r["unit"]) for r in lines] == sorted(
                ((b["scope"], b["unit"]) for b in budgets if ledger.balance_at(b["budget_id"], end - timedelta(microseconds=1))),
                key=lambda su: (su[0].encode(), su[1]))
            for line in lines:
                assert line["balanced"] is True
                (budget,) = [b for b in budgets if (b["scope"], b["unit"]) == (line["scope"], line["unit"])]
                opening = ledger.balance_at(budget["budget_id"], start - timedelta(microseconds=1)) or (0, 0, 0, 0)
                closing = ledger.balance_at(budget["budget_id"], end - timedelta(microseconds=1))
                assert (line["opening_allocated"], line["opening_spent"], line["opening_reserved"],
                        line["opening_debt"]) == opening
                assert (line["closing_allocated"], line["closing_spent"], line["closing_reserved"],
                        line["closing_debt"]) == closing
                month_rows = [r for r in ledger.rows
                              if r["budget_id"] == budget["budget_id"] and start <= r["created_at"] < end]
                assert line["funded"] == sum(r["allocated_delta"] for r in month_rows)
                assert line["spent"] == sum(Ledger.measures(r)["spent"] for r in month_rows)
                assert line["charges"] == sum(Ledger.measures(r)["charges"] for r in month_rows)
                assert line["expired"] == sum(Ledger.measures(r)["expired"] for r in month_rows)
                checked += 1
    assert checked >= 3 * 5


def test_statement_funding_lists_the_months_funding_rows(workload_db: psycopg.Connection, ledger: Ledger) -> None:
    for month in ledger.months():
        end = truncate(month + timedelta(days=40), "month", "UTC")
        expected = [r["entry_id"] for r in ledger.rows
                    if r["tenant_id"] == "t-alpha" and month <= r["created_at"] < end
                    and r["operation"] in ("CREATE", "CREDIT", "DEBIT", "RESET", "RESET_SPENT", "REPAY_DEBT")]
        found = [r["entry_id"] for r in rows(workload_db, "SELECT * FROM cycles_reporting.statement_funding(%s, %s)",
                                             "t-alpha", month.date())]
        assert found == expected


def test_reconciliation_and_chains_are_clean(workload_db: psycopg.Connection) -> None:
    assert rows(workload_db, "SELECT * FROM cycles_reporting.reconciliation") == []
    assert rows(workload_db, "SELECT * FROM cycles_reporting.verify_ledger_chain()") == []
    heads = rows(workload_db, "SELECT * FROM cycles_reporting.chain_heads")
    assert len(heads) == rows(workload_db, "SELECT count(*) AS n FROM cycles.budgets")[0]["n"]


def test_ledger_rows_carry_what_reports_need(ledger: Ledger) -> None:
    running: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    last_time: dict[int, datetime] = {}
    last_hash: dict[int, bytes | None] = defaultdict(lambda: None)
    for row in sorted(ledger.rows, key=lambda r: (r["budget_id"], r["created_at"])):
        # Chain order is also write order.
        assert row["created_at"] > last_time.get(row["budget_id"], datetime.min.replace(tzinfo=UTC))
        last_time[row["budget_id"]] = row["created_at"]
        totals = running[row["budget_id"]]
        for i, counter in enumerate(("allocated", "spent", "reserved", "debt")):
            totals[i] += row[f"{counter}_delta"]
            assert row[f"{counter}_after"] == totals[i]
        # The hash, recomputed from the documented canonical text, outside the database.
        assert row["prev_hash"] == last_hash[row["budget_id"]]
        assert hashlib.sha256(canonical_text(row).encode()).digest() == row["entry_hash"]
        last_hash[row["budget_id"]] = row["entry_hash"]
        assert row["operation_lead"] == (row["entry_id"] in ledger.leads)
        if row["subject"] is not None:
            assert row["subject_agent"] == (row["subject"].get("agent") or "").lower() or None
            assert row["tenant_id"] == row["subject"]["tenant"]
        if row["actor_type"] == "api_key":
            assert row["actor_key_id"] is not None
        if row["operation"] == "EXPIRE":
            assert row["actor_type"] == "system"
        if row["operation"] in ("RESERVE", "COMMIT", "RELEASE", "EXPIRE"):
            assert row["reservation_id"] is not None and row["action_kind"] is not None
        if row["operation"] == "EVENT":
            assert row["event_id"] is not None and row["action_name"] is not None


@pytest.mark.parametrize(("call", "message"), [
    ("cycles_reporting.spend('2026-02-01', '2026-01-01')", "from < to"),
    ("cycles_reporting.spend('2026-01-01', '2026-02-01', 'week')", "unknown bucket"),
    ("cycles_reporting.spend('2026-01-01', '2026-02-01', 'day', '{colour}')", "unknown dimension"),
    ("cycles_reporting.spend('2026-01-01', '2026-02-01', p_time_zone => 'Mars/Olympus')", "unknown time zone"),
    ("cycles_reporting.spend('2026-01-01', '2026-02-01', p_unit => 'GOLD')", "unknown unit"),
    ("cycles_reporting.spend('2026-01-01', '2026-02-01', p_scope_prefix => 'planet:x')", "malformed scope"),
    ("cycles_reporting.top_spenders('2026-01-01', '2026-02-01', 'unit')", "unknown dimension"),
    ("cycles_reporting.top_spenders('2026-01-01', '2026-02-01', 'agent', 0)", "limit"),
    ("cycles_reporting.balance_as_of('tenant:x', 'TOKENS', NULL)", "instant"),
    ("cycles_reporting.statement('nobody', '2026-01-01')", "not found"),
    ("cycles_reporting.statement('t-alpha', '2026-01-01', 'Nowhere/Land')", "unknown time zone"),
    ("cycles_reporting.verify_ledger_chain(p_unit => 'GOLD')", "unknown unit"),
])
def test_bad_report_arguments_are_clear_errors(workload_db: psycopg.Connection, call: str, message: str) -> None:
    with pytest.raises(psycopg.Error) as caught:
        workload_db.execute(f"SELECT * FROM {call}")  # type: ignore[arg-type]
    assert caught.value.sqlstate is not None and caught.value.sqlstate.startswith("CY")
    assert message in str(caught.value)
