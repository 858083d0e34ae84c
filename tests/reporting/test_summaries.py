"""The hourly report summaries (sql/39_reporting_summaries.sql): reports that
read them give exactly the raw ledger's answer, and they are really read.

The shared workload database is summarised up to SUMMARISED_TO, in the middle
of its history, so every report here (and in test_reports.py) adds up
summary rows on one side of that point and ledger rows on the other."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from app.config import Settings
from app.db import Database, Timeouts
from app.maintenance import jobs, run_job
from app.pgcluster import Cluster
from tests.reporting.workload import (
    DIMENSION_COLUMNS,
    RUNTIME_OPERATIONS,
    SPAN,
    START,
    SUMMARISED_TO,
    Ledger,
    truncate,
)
from tests.sql.admin_calls import fails

MEASURES = ("spent", "debt", "charged", "reserved", "released", "expired", "charges")
HOUR = timedelta(hours=1)


def rows(db: psycopg.Connection, sql: str, *args: Any) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, args).fetchall()  # type: ignore[arg-type]


def spend(db: psycopg.Connection, start: datetime, end: datetime, bucket: str, group_by: list[str],
          tenant: str | None = None, unit: str | None = None, prefix: str | None = None,
          zone: str = "UTC") -> dict[tuple[Any, ...], dict[str, int]]:
    dims = [d for d in DIMENSION_COLUMNS if d in set(group_by) | {"unit"}]
    found = {}
    for row in rows(db, "SELECT * FROM cycles_reporting.spend(%s, %s, %s, %s, %s, %s, %s, %s)",
                    start, end, bucket, group_by, tenant, unit, prefix, zone):
        key = (row["bucket_start"], *(row["tenant_id" if d == "tenant" else d] for d in dims))
        assert key not in found, "one row per bucket and group"
        found[key] = {m: int(row[m]) for m in MEASURES}
    return found


@pytest.fixture(scope="module")
def hours(workload_db: psycopg.Connection) -> tuple[datetime, datetime]:
    state = rows(workload_db, "SELECT * FROM cycles.report_summary_state")
    assert len(state) == 1
    return state[0]["summarised_from"], state[0]["summarised_to"]


def test_the_first_part_of_the_history_is_summarised(ledger: Ledger, hours: tuple[datetime, datetime]) -> None:
    first = min(row["created_at"] for row in ledger.rows)
    assert hours == (first.replace(minute=0, second=0, microsecond=0), SUMMARISED_TO)
    assert any(row["created_at"] >= SUMMARISED_TO for row in ledger.rows), "a tail is left to the ledger"


def test_every_summary_row_is_the_sum_of_its_ledger_rows(workload_db: psycopg.Connection, ledger: Ledger) -> None:
    columns = ("tenant_id", "operation_lead", "scope", "unit", "action_kind", "action_name", "subject_workspace",
               "subject_app", "subject_workflow", "subject_agent", "subject_toolset")
    expected: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in ledger.rows:
        if row["created_at"] >= SUMMARISED_TO or row["operation"] not in RUNTIME_OPERATIONS:
            continue
        key = (row["created_at"].replace(minute=0, second=0, microsecond=0), *(row[c] for c in columns))
        for name, value in Ledger.measures(row).items():
            if name != "charged":
                expected[key][name] += value
    found = {(r["hour_start"], *(r[c] for c in columns)):
             {m: int(r[m]) for m in MEASURES if m != "charged"}
             for r in rows(workload_db, "SELECT * FROM cycles.report_spend_hours")}
    assert found == {k: dict(v) for k, v in expected.items()}
    # The summary's lead flag is the ledger's (independently: the first row of each operation).
    assert {r["entry_id"] for r in ledger.rows if r["operation_lead"]} == ledger.leads


# (bucket, group_by, tenant, unit, prefix, zone): by operation and by budget,
# prefix filters of both kinds, whole-hour and half-hour time zones.
CASES = [
    ("total", ["tenant"], None, None, None, "UTC"),
    ("hour", ["agent"], "t-alpha", None, None, "UTC"),
    ("day", ["scope"], None, None, None, "UTC"),
    ("day", ["tenant", "action_name"], None, "TOKENS", None, "Europe/Paris"),
    ("day", ["agent", "workflow"], None, None, "tenant:t-alpha/workspace:w1", "Europe/Paris"),
    ("month", ["scope"], None, None, "tenant:t-beta", "America/New_York"),
    ("hour", ["tenant"], None, None, None, "Asia/Kolkata"),
    ("day", ["scope", "agent"], "t-gamma", None, "tenant:t-gamma", "Asia/Kolkata"),
    ("total", ["toolset", "app", "action_kind"], None, "USD_MICROCENTS", None, "UTC"),
]


def straddling_ranges(ledger: Ledger, rng: random.Random) -> list[tuple[datetime, datetime]]:
    """Ranges across SUMMARISED_TO: on whole hours, cut mid-hour at a row's
    time, or a microsecond after one; and ones entirely on either side."""
    before = [r["created_at"] for r in ledger.rows if r["created_at"] < SUMMARISED_TO]
    after = [r["created_at"] for r in ledger.rows if r["created_at"] >= SUMMARISED_TO]
    a, b = rng.choice(before), rng.choice(after)
    return [
        (START - timedelta(days=1), START + SPAN + timedelta(days=1)),
        (SUMMARISED_TO - timedelta(days=10), SUMMARISED_TO + timedelta(days=3)),
        (a, b),
        (a + timedelta(microseconds=1), b + timedelta(microseconds=1)),
        (a.replace(minute=30, second=0, microsecond=0), SUMMARISED_TO + timedelta(minutes=1)),
        (SUMMARISED_TO - timedelta(days=20, minutes=7), SUMMARISED_TO - timedelta(days=1, minutes=3)),
        (SUMMARISED_TO, START + SPAN),
    ]


@pytest.mark.parametrize(("bucket", "group_by", "tenant", "unit", "prefix", "zone"), CASES)
def test_spend_across_the_summarised_point_equals_the_raw_ledger(
        workload_db: psycopg.Connection, ledger: Ledger, bucket: str, group_by: list[str], tenant: str | None,
        unit: str | None, prefix: str | None, zone: str) -> None:
    rng = random.Random(f"{bucket}{group_by}{zone}")
    seen = 0
    for start, end in straddling_ranges(ledger, rng):
        expected = ledger.spend(start, end, bucket, group_by, tenant, unit, prefix, zone)
        assert spend(workload_db, start, end, bucket, group_by, tenant, unit, prefix, zone) == expected
        seen += len(expected)
    assert seen


@pytest.fixture
def tampered(workload_db: psycopg.Connection) -> Iterator[tuple[psycopg.Connection, dict[str, Any]]]:
    """The workload database with 1,000,000 added to one summary row's spent,
    inside a transaction that is rolled back: a report that reads that row
    shows the difference, one that reads the ledger does not."""
    with workload_db.transaction(force_rollback=True):
        row = rows(workload_db, """
            UPDATE cycles.report_spend_hours SET spent = spent + 1000000
            WHERE summary_id = (SELECT min(summary_id) FROM cycles.report_spend_hours
                                WHERE operation_lead AND charges > 0 AND hour_start >= %s)
            RETURNING *""", SUMMARISED_TO - timedelta(days=5))[0]
        yield workload_db, row


def test_reports_read_the_summaries_for_summarised_whole_hours(
        tampered: tuple[psycopg.Connection, dict[str, Any]], ledger: Ledger) -> None:
    db, row = tampered
    hour, tenant = row["hour_start"], row["tenant_id"]
    day = truncate(hour, "day", "UTC")
    raw = ledger.spend(day, day + timedelta(days=1), "day", ["tenant"], tenant)
    found = spend(db, day, day + timedelta(days=1), "day", ["tenant"], tenant)
    key = (day, tenant, row["unit"])
    assert found[key]["spent"] == raw[key]["spent"] + 1000000
    assert found[key]["charged"] == raw[key]["charged"] + 1000000
    top = rows(db, "SELECT * FROM cycles_reporting.top_spenders(%s, %s, 'tenant', 10, %s, %s)",
               hour, hour + HOUR, tenant, row["unit"])
    in_hour = ledger.spend(hour, hour + HOUR, "total", ["tenant"], tenant, row["unit"])
    assert [int(t["charged"]) for t in top] == [in_hour[(hour, tenant, row["unit"])]["charged"] + 1000000]


def test_reports_read_the_ledger_where_an_hour_is_cut_or_straddles_a_bucket(
        tampered: tuple[psycopg.Connection, dict[str, Any]], ledger: Ledger) -> None:
    db, row = tampered
    hour, tenant = row["hour_start"], row["tenant_id"]
    # The range cuts the hour: it is read from the ledger.
    start, end = hour + timedelta(microseconds=1), hour + timedelta(days=1)
    assert spend(db, start, end, "total", ["tenant"], tenant) == ledger.spend(start, end, "total", ["tenant"], tenant)
    # Hour buckets of a half-hour time zone cut every UTC hour in two.
    start, end = hour - timedelta(hours=3), hour + timedelta(hours=3)
    assert (spend(db, start, end, "hour", ["tenant"], tenant, zone="Asia/Kolkata")
            == ledger.spend(start, end, "hour", ["tenant"], tenant, zone="Asia/Kolkata"))


def test_the_ledger_tail_after_the_summaries_is_read_as_it_grows(db: psycopg.Connection) -> None:
    # Summaries up to a point; rows written after it (the live tail) still count.
    from tests.reporting import workload

    workload.run(db, seed=7, operations_per_tenant=20)
    mid = rows(db, "SELECT date_trunc('hour', percentile_disc(0.5) WITHIN GROUP (ORDER BY created_at), 'UTC') AS t"
                   " FROM cycles.ledger_entries")[0]["t"]
    ledger = Ledger(db)
    everything = (START - timedelta(days=1), START + SPAN + timedelta(days=1))
    expected = ledger.spend(*everything, "day", ["agent"], zone="Europe/Paris")
    assert spend(db, *everything, "day", ["agent"], zone="Europe/Paris") == expected
    reached = [rows(db, "SELECT cycles._report_summarise_spend(p_budget_ms => 0, p_until => %s) AS t", mid)[0]["t"]
               for _ in range(3)]
    # Each call does a bounded share (one five-minute slice of the ledger here).
    assert reached[0] < reached[1] < reached[2] <= mid
    assert spend(db, *everything, "day", ["agent"], zone="Europe/Paris") == expected
    while reached[-1] < mid:
        reached.append(rows(db, "SELECT cycles._report_summarise_spend(p_budget_ms => 1000, p_until => %s) AS t",
                            mid)[0]["t"])
    assert rows(db, "SELECT count(*) AS n FROM cycles.report_spend_hours")[0]["n"] > 0
    assert spend(db, *everything, "day", ["agent"], zone="Europe/Paris") == expected
    assert spend(db, *everything, "month", ["scope"]) == ledger.spend(*everything, "month", ["scope"])
    # A reset forgets them; reports stay exact, and the next call starts over.
    db.execute("SELECT cycles._report_summaries_reset()")
    assert rows(db, "SELECT count(*) AS n FROM cycles.report_spend_hours")[0]["n"] == 0
    assert spend(db, *everything, "day", ["agent"], zone="Europe/Paris") == expected


def test_the_maintenance_job_summarises_and_prunes(db: psycopg.Connection) -> None:
    from tests.reporting import workload

    workload.run(db, seed=11, operations_per_tenant=10)
    ledger = Ledger(db)
    result = rows(db, "SELECT cycles.summarise_report_spend(p_budget_ms => 60000) AS r")[0]["r"]
    assert result["more"] is False
    state = rows(db, "SELECT * FROM cycles.report_summary_state")[0]
    assert state["summarised_to"] > START + SPAN
    everything = (START - timedelta(days=1), START + SPAN + timedelta(days=1))
    assert spend(db, *everything, "month", ["tenant"]) == ledger.spend(*everything, "month", ["tenant"])
    # Pruning moves the summarised start past the old hours and deletes them:
    # a retention that ends in the middle of the history.
    days = (datetime.now(UTC) - (START + SPAN / 2)).days
    cutoff = datetime.now(UTC) - timedelta(days=days)
    pruned = rows(db, "SELECT cycles.prune_report_summaries(p_retention_days => %s, p_batch_size => 5) AS r",
                  days)[0]["r"]
    assert pruned["deleted"] == 5 and pruned["more"] is True
    while pruned["more"]:
        pruned = rows(db, "SELECT cycles.prune_report_summaries(p_retention_days => %s) AS r", days)[0]["r"]
    assert rows(db, "SELECT count(*) AS n FROM cycles.report_spend_hours WHERE hour_start >= %s", cutoff)[0]["n"] > 0
    state = rows(db, "SELECT * FROM cycles.report_summary_state")[0]
    assert cutoff - HOUR <= state["summarised_from"] <= cutoff
    old = rows(db, "SELECT count(*) AS n FROM cycles.report_spend_hours WHERE hour_start < %s",
               state["summarised_from"])[0]["n"]
    assert old == 0
    assert spend(db, *everything, "month", ["tenant"]) == ledger.spend(*everything, "month", ["tenant"])


def test_the_server_runs_both_jobs(db: psycopg.Connection, pg_cluster: Cluster) -> None:
    from tests.reporting import workload

    workload.run(db, seed=13, operations_per_tenant=5)
    settings = Settings(database_url=pg_cluster.conninfo(db.info.dbname), report_summary_retention_days=36500)
    by_name = {j.name: j for j in jobs(settings)}

    async def run_both() -> list[dict[str, Any] | None]:
        assert settings.database_url is not None
        database = Database(settings.database_url, 1, 2, Timeouts(0, 0), pool_timeout_s=5)
        await database.open()
        try:
            return [await run_job(database, by_name[name], 3_600_000, "runner")
                    for name in ("summarise_report_spend", "prune_report_summaries")]
        finally:
            await database.close()

    summarised, pruned = asyncio.run(run_both())
    assert summarised is not None and summarised["batches"] >= 1
    assert pruned == {"deleted": 0, "batches": 1}
    state = rows(db, "SELECT * FROM cycles.report_summary_state")[0]
    assert state["summarised_to"] == rows(
        db, "SELECT date_trunc('hour', clock_timestamp() - interval '2 minutes', 'UTC') AS t")[0]["t"]
    assert rows(db, "SELECT count(*) AS n FROM cycles.report_spend_hours")[0]["n"] > 0
    fails(db, "INVALID_REQUEST", "SELECT cycles.summarise_report_spend(p_budget_ms => 0)")
    fails(db, "INVALID_REQUEST", "SELECT cycles.prune_report_summaries(p_retention_days => 0)")
    fails(db, "INVALID_REQUEST", "SELECT cycles.prune_report_summaries(p_batch_size => 0)")
