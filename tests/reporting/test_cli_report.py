"""``cycles report ...`` and ``cycles ledger ...`` against a database the workload filled."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.reporting import workload

WIDE = ["--from", "2026-01-01", "--to", "2026-07-01"]


@pytest.fixture
def filled(db: psycopg.Connection) -> psycopg.Connection:
    workload.run(db, seed=23, operations_per_tenant=15)
    return db


def ok(result: Any) -> str:
    assert result.exit_code == 0, result.output + result.stderr
    text: str = result.stdout
    return text


def test_report_spend_in_every_format(run: Any, filled: psycopg.Connection) -> None:
    expected = filled.execute("SELECT tenant_id, unit, charged FROM cycles_reporting.spend("
                              "'2026-01-01', '2026-07-01', 'total', '{tenant}') ORDER BY 1, 2").fetchall()
    as_json = json.loads(ok(run("report", "spend", *WIDE, "--bucket", "total", "--format", "json")))
    assert [(r["tenant_id"], r["unit"], r["charged"]) for r in as_json] == [(t, u, int(c)) for t, u, c in expected]
    assert set(as_json[0]) == {"bucket_start", "tenant_id", "unit", "spent", "debt", "charged", "reserved",
                               "released", "expired", "charges"}
    as_csv = list(csv.DictReader(io.StringIO(ok(run("report", "spend", *WIDE, "--bucket", "total",
                                                    "--format", "csv")))))
    assert [(r["tenant_id"], r["unit"], int(r["charged"])) for r in as_csv] == [(t, u, int(c)) for t, u, c in expected]
    table = ok(run("report", "spend", *WIDE, "--by", "tenant,agent", "--bucket", "month", "--tenant", "t-alpha"))
    assert "spend per month" in table and "t-alpha" in table and "coder" in table
    bad = run("report", "spend", *WIDE, "--by", "colour")
    assert bad.exit_code == 2 and "unknown dimension 'colour'" in bad.stderr
    refused = run("report", "spend", "--from", "2026-02-01", "--to", "2026-01-01")
    assert refused.exit_code == 1 and refused.stderr.startswith("error: INVALID_REQUEST: ")


def test_report_top_utilisation_denials_balance(run: Any, filled: psycopg.Connection) -> None:
    top = json.loads(ok(run("report", "top", *WIDE, "--by", "agent", "--limit", "2", "--format", "json")))
    assert top and all(r["rank"] <= 2 for r in top)
    assert {r["key"] for r in top} <= set(workload.AGENTS)
    utilisation = json.loads(ok(run("report", "utilisation", "--tenant", "t-beta", "--format", "json")))
    assert {r["scope"] for r in utilisation} == {
        "tenant:t-beta", "tenant:t-beta/workspace:w1", "tenant:t-beta/workspace:w1/agent:coder",
        "tenant:t-beta/workspace:w2"}
    assert "utilisation" in ok(run("report", "utilisation"))
    denials = json.loads(ok(run("report", "denials", *WIDE, "--bucket", "total", "--format", "json")))
    assert {r["event_type"] for r in denials} <= {"reservation.denied", "reservation.expired"}
    balance = json.loads(ok(run("report", "balance", "tenant:t-alpha", "TOKENS", "--at", "2099-01-01",
                                "--format", "json")))
    live = filled.execute("SELECT allocated, spent, reserved, debt FROM cycles.budgets"
                          " WHERE scope = 'tenant:t-alpha' AND unit = 'TOKENS'").fetchone()
    assert live is not None
    assert [(b["allocated"], b["spent"], b["reserved"], b["debt"]) for b in balance] == [live]
    assert json.loads(ok(run("report", "balance", "tenant:t-alpha", "TOKENS", "--at", "2000-01-01",
                             "--format", "json"))) == []


def test_report_statement(run: Any, filled: psycopg.Connection) -> None:
    month = filled.execute("SELECT to_char(min(created_at) AT TIME ZONE 'UTC', 'YYYY-MM')"
                           " FROM cycles.ledger_entries WHERE tenant_id = 't-gamma'").fetchone()
    assert month is not None
    table = ok(run("report", "statement", "t-gamma", month[0]))
    assert f"statement of t-gamma for {month[0]}" in table and "funding operations" in table
    assert "identity holds" in table
    document = json.loads(ok(run("report", "statement", "t-gamma", month[0], "--format", "json")))
    assert document["balanced"] is True and document["lines"]
    assert all(line["balanced"] for line in document["lines"])
    assert any(f["operation"] == "CREATE" for f in document["funding"])
    bad = run("report", "statement", "t-gamma", "January")
    assert bad.exit_code == 2 and "not a month" in bad.stderr
    unknown = run("report", "statement", "nobody", month[0])
    assert unknown.exit_code == 1 and unknown.stderr.startswith("error: TENANT_NOT_FOUND: ")


def test_reconcile_and_verify_fail_loudly_on_tampering(run: Any, filled: psycopg.Connection) -> None:
    assert "reconciled" in ok(run("report", "reconcile"))
    assert ok(run("ledger", "verify")).startswith("intact: 15 chains, ")
    target = filled.execute("SELECT entry_id FROM cycles.ledger_entries WHERE scope = 'tenant:t-beta'"
                            " AND unit = 'TOKENS' ORDER BY created_at OFFSET 3 LIMIT 1").fetchone()
    assert target is not None
    filled.execute("ALTER TABLE cycles.ledger_entries DISABLE TRIGGER ledger_entries_append_only")
    filled.execute("UPDATE cycles.ledger_entries SET spent_delta = spent_delta + 9 WHERE entry_id = %s", target)
    filled.execute("ALTER TABLE cycles.ledger_entries ENABLE TRIGGER ledger_entries_append_only")
    broken = run("ledger", "verify", "--format", "json")
    assert broken.exit_code == 1
    assert [(b["scope"], b["entry_id"], b["problem"]) for b in json.loads(broken.stdout)] == [
        ("tenant:t-beta", target[0], "entry_hash")]
    assert run("ledger", "verify", "--tenant", "t-alpha").exit_code == 0
    drift = run("report", "reconcile", "--format", "json")
    assert drift.exit_code == 1
    assert {(d["scope"], d["counter"]) for d in json.loads(drift.stdout)} == {
        ("tenant:t-beta", "spent"), ("tenant:t-beta", "remaining")}


def test_ledger_export_streams_csv_and_json_lines(run: Any, filled: psycopg.Connection, tmp_path: Path) -> None:
    total = filled.execute("SELECT count(*) FROM cycles.ledger_entries").fetchone()
    assert total is not None
    lines = ok(run("ledger", "export", "--format", "jsonl")).splitlines()
    assert len(lines) == total[0]
    rows = [json.loads(line) for line in lines]
    assert [r["entry_id"] for r in rows] == sorted(r["entry_id"] for r in rows)
    raw = filled.execute("SELECT * FROM cycles.ledger_entries ORDER BY entry_id LIMIT 40").fetchall()
    names = [c.name for c in filled.execute("SELECT * FROM cycles.ledger_entries LIMIT 0").description or []]
    # The export carries everything needed to re-verify the chain outside the database.
    for exported, values in zip(rows, raw, strict=False):
        original = dict(zip(names, values, strict=True))
        assert exported["entry_hash"] == original["entry_hash"].hex()
        assert hashlib.sha256(workload.canonical_text(original).encode()).hexdigest() == exported["entry_hash"]
        assert exported["subject"] == original["subject"]

    target = tmp_path / "alpha.csv"
    result = run("ledger", "export", "--tenant", "t-alpha", "--from", "2026-01-01", "--to", "2026-03-01",
                 "--output", str(target), "--progress")
    assert result.exit_code == 0, result.stderr
    assert "exported" in result.stderr and "exporting" in result.stderr
    exported = list(csv.DictReader(target.open()))
    expected = filled.execute("SELECT entry_id FROM cycles.ledger_entries WHERE tenant_id = 't-alpha'"
                              " AND created_at >= '2026-01-01' AND created_at < '2026-03-01' ORDER BY entry_id"
                              ).fetchall()
    assert [int(r["entry_id"]) for r in exported] == [e[0] for e in expected] and expected
    assert {r["tenant_id"] for r in exported} == {"t-alpha"}
