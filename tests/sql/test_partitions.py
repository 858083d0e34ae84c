"""The ledger is partitioned by month: partitions are created ahead, a DEFAULT
partition catches the rest, every partition is as append-only as the ledger,
rows move out of DEFAULT when their month is created, reports and chain
checks work across partitions, and a detached month can be verified alone."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from tests.reporting import workload


def partitions(db: psycopg.Connection) -> list[str]:
    rows = db.execute("""
        SELECT c.relname FROM pg_catalog.pg_inherits AS i
        JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'cycles.ledger_entries'::regclass ORDER BY c.relname""").fetchall()
    return [r[0] for r in rows]


def month_name(moment: datetime) -> str:
    return f"ledger_entries_p{moment.year:04d}{moment.month:02d}"


def rows_per_partition(db: psycopg.Connection) -> dict[str, int]:
    return dict(db.execute("SELECT c.relname, count(*) FROM cycles.ledger_entries AS l"
                           " JOIN pg_catalog.pg_class AS c ON c.oid = l.tableoid GROUP BY 1").fetchall())


def chain_problems(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    return db.execute("SELECT * FROM cycles.verify_ledger_chain()").fetchall()


def fund(db: psycopg.Connection) -> None:
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    db.execute("SELECT cycles.create_budget('tenant:acme', 'TOKENS', 1000)")
    db.execute("SELECT cycles.fund_budget('tenant:acme', 'TOKENS', 'CREDIT', 5, 'k1')")


def test_load_creates_this_and_the_next_month_and_a_default(db: psycopg.Connection) -> None:
    now = db.execute("SELECT clock_timestamp() AT TIME ZONE 'UTC'").fetchone()
    assert now is not None
    months = db.execute("""
        SELECT 'ledger_entries_p' || to_char(date_trunc('month', %s::timestamp) + make_interval(months => g), 'YYYYMM')
        FROM generate_series(0, 1) AS g""", (now[0],)).fetchall()
    assert partitions(db) == sorted(["ledger_entries_default", *(m[0] for m in months)])
    again = db.execute("SELECT cycles.ensure_ledger_partitions(1)").fetchone()
    assert again is not None and again[0] == {"created": [], "moved_rows": 0}


def test_rows_land_in_their_months_partition(db: psycopg.Connection) -> None:
    fund(db)
    now = db.execute("SELECT clock_timestamp()").fetchone()
    assert now is not None
    assert rows_per_partition(db) == {month_name(now[0].astimezone(UTC)): 2}


@pytest.mark.parametrize("statement", [
    "UPDATE {t} SET reason = 'x'",
    "DELETE FROM {t}",
    "TRUNCATE {t}",
])
def test_every_partition_is_append_only(db: psycopg.Connection, statement: str) -> None:
    fund(db)
    db.execute("SELECT cycles.ensure_ledger_partitions(0, '2031-05-01')")
    # Row triggers fire on rows: try the statements on the partition that has some.
    (holder,) = rows_per_partition(db)
    targets = [holder] if not statement.startswith("TRUNCATE") else partitions(db)
    for name in targets:
        with pytest.raises(psycopg.Error) as caught:
            db.execute(statement.format(t=f"cycles.{name}"))  # type: ignore[arg-type]
        assert caught.value.sqlstate == "CY0LA", name


def test_every_partition_carries_both_triggers(db: psycopg.Connection) -> None:
    db.execute("SELECT cycles.ensure_ledger_partitions(1, '2031-05-01')")
    missing = db.execute("""
        SELECT c.relname, t.name FROM pg_catalog.pg_inherits AS i
        JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
        CROSS JOIN (VALUES ('ledger_entries_append_only'), ('ledger_entries_no_truncate')) AS t (name)
        WHERE i.inhparent = 'cycles.ledger_entries'::regclass
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger AS g
                          WHERE g.tgrelid = c.oid AND g.tgname = t.name AND g.tgenabled = 'O')""").fetchall()
    assert missing == []


def test_no_role_but_the_owner_has_privileges_on_a_partition(db: psycopg.Connection) -> None:
    db.execute("SELECT cycles.ensure_ledger_partitions(1, '2031-05-01')")
    granted = db.execute("""
        SELECT c.relname, c.relacl::text FROM pg_catalog.pg_inherits AS i
        JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'cycles.ledger_entries'::regclass
          AND (has_table_privilege('cycles_app', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
               OR has_table_privilege('cycles_reporting', c.oid, 'SELECT'))""").fetchall()
    assert granted == []


def test_a_month_without_partition_goes_to_default_and_moves_out_when_created(db: psycopg.Connection) -> None:
    fund(db)
    # A month far ahead has no partition: rows written "then" land in DEFAULT
    # (the clock is moved by rewriting created_at as the reporting workload does).
    db.execute("ALTER TABLE cycles.ledger_entries DISABLE TRIGGER ledger_entries_append_only")
    db.execute("UPDATE cycles.ledger_entries SET created_at = created_at + interval '5 years'")
    db.execute("ALTER TABLE cycles.ledger_entries ENABLE TRIGGER ledger_entries_append_only")
    moved = db.execute("SELECT min(created_at) FROM cycles.ledger_entries").fetchone()
    assert moved is not None
    target = month_name(moved[0].astimezone(UTC))
    assert rows_per_partition(db) == {"ledger_entries_default": 2}
    before = db.execute("SELECT entry_id, created_at, entry_hash FROM cycles.ledger_entries ORDER BY entry_id").fetchall()

    result = db.execute("SELECT cycles.ensure_ledger_partitions(0, %s::date)", (moved[0].date(),)).fetchone()
    assert result is not None and result[0] == {"created": [target], "moved_rows": 2}
    assert rows_per_partition(db) == {target: 2}
    after = db.execute("SELECT entry_id, created_at, entry_hash FROM cycles.ledger_entries ORDER BY entry_id").fetchall()
    assert after == before
    # The moved rows' partition is as protected as any other.
    with pytest.raises(psycopg.Error) as caught:
        db.execute(f"DELETE FROM cycles.{target}")  # type: ignore[arg-type]
    assert caught.value.sqlstate == "CY0LA"
    # The default partition's trigger is back on after the move.
    assert db.execute("SELECT tgenabled FROM pg_catalog.pg_trigger WHERE tgname = 'ledger_entries_append_only'"
                      " AND tgrelid = 'cycles.ledger_entries_default'::regclass").fetchone() == ("O",)


def test_bad_arguments_and_an_archived_name_are_refused(db: psycopg.Connection) -> None:
    for months in (-1, 121, None):
        with pytest.raises(psycopg.Error) as caught:
            db.execute("SELECT cycles.ensure_ledger_partitions(%s)", (months,))
        assert caught.value.sqlstate == "CY400"
    db.execute("SELECT cycles.ensure_ledger_partitions(0, '2031-05-01')")
    db.execute("ALTER TABLE cycles.ledger_entries DETACH PARTITION cycles.ledger_entries_p203105")
    with pytest.raises(psycopg.Error) as caught:
        db.execute("SELECT cycles.ensure_ledger_partitions(0, '2031-05-01')")
    assert caught.value.sqlstate == "CY400" and "not a partition" in str(caught.value)


@pytest.fixture
def history(db: psycopg.Connection) -> psycopg.Connection:
    """Three months of history (Jan 10 - Apr 15, 2026) written by the real
    functions, moved into one partition per month."""
    workload.run(db, seed=7, operations_per_tenant=40)
    assert set(rows_per_partition(db)) == {"ledger_entries_default"}
    result = db.execute("SELECT cycles.ensure_ledger_partitions(3, '2026-01-01')").fetchone()
    assert result is not None
    assert result[0]["created"] == [f"ledger_entries_p2026{m:02d}" for m in (1, 2, 3, 4)]
    return db


def test_reports_and_checks_hold_across_partitions(history: psycopg.Connection) -> None:
    db = history
    spread = rows_per_partition(db)
    assert set(spread) == {f"ledger_entries_p2026{m:02d}" for m in (1, 2, 3, 4)}
    assert db.execute("SELECT count(*) FROM cycles.verify_ledger()").fetchone() == (0,)
    assert chain_problems(db) == []
    assert db.execute("SELECT count(*) FROM cycles_reporting.reconciliation").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM cycles.verify_ledger_segment('cycles.ledger_entries')").fetchone() == (0,)
    # Monthly statements balance, and each month's charges equal that partition's rows.
    for month in (1, 2, 3, 4):
        lines = db.execute("SELECT balanced, charges FROM cycles_reporting.statement('t-alpha', %s)",
                           (f"2026-{month:02d}-01",)).fetchall()
        assert lines and all(balanced for balanced, _ in lines)
        in_partition = db.execute(
            f"SELECT count(*) FROM cycles.ledger_entries_p2026{month:02d}"  # type: ignore[arg-type]
            " WHERE tenant_id = 't-alpha' AND operation IN ('COMMIT', 'EVENT')").fetchone()
        assert in_partition is not None and sum(c for _, c in lines) == in_partition[0]
    total = db.execute("SELECT sum(charged) FROM cycles_reporting.spend('2026-01-01', '2026-05-01', 'total')"
                       ).fetchone()
    direct = db.execute("SELECT sum(spent_delta + debt_delta) FROM cycles.ledger_entries"
                        " WHERE operation IN ('COMMIT', 'EVENT') AND operation_lead").fetchone()
    assert total == direct
    # A month's report reads only that month's partition.
    plan = db.execute("EXPLAIN SELECT * FROM cycles.ledger_entries"
                      " WHERE created_at >= '2026-02-01' AND created_at < '2026-03-01'").fetchall()
    scanned = " ".join(line[0] for line in plan)
    assert "ledger_entries_p202602" in scanned
    assert "ledger_entries_p202601" not in scanned and "ledger_entries_p202603" not in scanned


def test_a_new_row_continues_a_chain_whose_head_is_in_an_older_month(history: psycopg.Connection) -> None:
    db = history
    head = db.execute("""
        SELECT l.entry_hash, l.allocated_after FROM cycles.ledger_entries AS l JOIN cycles.budgets AS b
          ON b.tenant_id = l.tenant_id AND b.budget_id = l.budget_id
        WHERE b.scope = 'tenant:t-alpha' AND b.unit = 'TOKENS' ORDER BY l.created_at DESC LIMIT 1""").fetchone()
    assert head is not None
    for n in range(2):  # the first looks back into April; the second finds it in this month
        db.execute("SELECT cycles.fund_budget('tenant:t-alpha', 'TOKENS', 'CREDIT', 10, %s)", (f"late-{n}",))
    rows = db.execute("""
        SELECT l.prev_hash, l.entry_hash, l.allocated_after FROM cycles.ledger_entries AS l
        WHERE l.tenant_id = 't-alpha' AND l.scope = 'tenant:t-alpha' AND l.unit = 'TOKENS'
        ORDER BY l.created_at DESC LIMIT 2""").fetchall()
    assert rows[1][0] == head[0] and rows[0][0] == rows[1][1]
    assert (rows[1][2], rows[0][2]) == (head[1] + 10, head[1] + 20)
    assert chain_problems(db) == []
    assert db.execute("SELECT count(*) FROM cycles.verify_ledger()").fetchone() == (0,)


def test_tampering_inside_one_partition_is_found(history: psycopg.Connection) -> None:
    db = history
    db.execute("ALTER TABLE cycles.ledger_entries DISABLE TRIGGER ledger_entries_append_only")
    db.execute("UPDATE cycles.ledger_entries_p202602 SET spent_delta = spent_delta + 1 WHERE entry_id ="
               " (SELECT min(entry_id) FROM cycles.ledger_entries_p202602 WHERE operation = 'COMMIT')")
    db.execute("ALTER TABLE cycles.ledger_entries ENABLE TRIGGER ledger_entries_append_only")
    assert {p for *_, p in chain_problems(db)} == {"entry_hash"}
    assert [p for *_, p in db.execute(
        "SELECT * FROM cycles.verify_ledger_segment('cycles.ledger_entries_p202602',"
        " 'cycles.ledger_entries_p202601')").fetchall()] == ["entry_hash"]


def test_a_detached_month_verifies_alone_and_the_next_continues_it(history: psycopg.Connection) -> None:
    db = history
    heads = dict(db.execute("""
        SELECT DISTINCT ON (budget_id) budget_id, entry_hash FROM cycles.ledger_entries_p202601
        ORDER BY budget_id, created_at DESC""").fetchall())
    db.execute("CREATE SCHEMA cycles_archive")
    db.execute("ALTER TABLE cycles.ledger_entries DETACH PARTITION cycles.ledger_entries_p202601")
    db.execute("ALTER TABLE cycles.ledger_entries_p202601 SET SCHEMA cycles_archive")
    archive = "cycles_archive.ledger_entries_p202601"
    assert db.execute(f"SELECT count(*) FROM {archive}").fetchone() != (0,)  # type: ignore[arg-type]
    # The archived month is a complete chain start: every chain starts in it.
    assert db.execute("SELECT * FROM cycles.verify_ledger_segment(%s)", (archive,)).fetchall() == []
    # February continues January: its first rows name January's last hashes.
    assert db.execute("SELECT * FROM cycles.verify_ledger_segment('cycles.ledger_entries_p202602', %s)",
                      (archive,)).fetchall() == []
    firsts = dict(db.execute("""
        SELECT DISTINCT ON (budget_id) budget_id, prev_hash FROM cycles.ledger_entries_p202602
        ORDER BY budget_id, created_at""").fetchall())
    assert all(firsts[b] == heads[b] for b in firsts if b in heads)
    # Without January, February alone starts mid-chain: only as an anchored segment.
    alone = db.execute("SELECT problem FROM cycles.verify_ledger_segment('cycles.ledger_entries_p202602')"
                       ).fetchall()
    assert alone and {p for (p,) in alone} <= {"first_row", "balance"}
    assert db.execute("SELECT * FROM cycles.verify_ledger_segment('cycles.ledger_entries_p202602',"
                      " p_anchored => true)").fetchall() == []
    # The remaining ledger: reports over the attached months still run.
    lines = db.execute("SELECT balanced FROM cycles_reporting.statement('t-beta', '2026-03-01')").fetchall()
    assert lines and all(b for (b,) in lines)
    # The archive keeps its rows read-only for the application role.
    assert db.execute("SELECT has_table_privilege('cycles_app', %s, 'SELECT')", (archive,)).fetchone() == (False,)


def test_segment_check_refuses_other_tables(db: psycopg.Connection) -> None:
    with pytest.raises(psycopg.Error) as caught:
        db.execute("SELECT * FROM cycles.verify_ledger_segment('cycles.api_keys')")
    assert caught.value.sqlstate == "CY400"


def test_creating_a_partition_waits_for_budget_writers_instead_of_deadlocking(
        db: psycopg.Connection, pg_cluster: Any) -> None:
    """A writer holds a budget row and then reads or appends to the ledger;
    a new partition's foreign key needs a lock on budgets. The function takes
    budgets first, as writers do: it waits for the writer, which goes on. In
    the other order each waits for the other until the deadlock detector
    fails one of them."""
    fund(db)
    conninfo = pg_cluster.conninfo(db.info.dbname)
    outcome: list[Any] = []
    with psycopg.connect(conninfo) as writer, psycopg.connect(conninfo, autocommit=True) as maintenance:
        writer.execute("UPDATE cycles.budgets SET updated_at = clock_timestamp() WHERE scope = 'tenant:acme'")
        pid = maintenance.info.backend_pid

        def ensure() -> None:
            try:
                outcome.append(maintenance.execute("SELECT cycles.ensure_ledger_partitions(4)").fetchone())
            except psycopg.Error as error:
                outcome.append(error)

        thread = threading.Thread(target=ensure)
        thread.start()
        deadline = time.monotonic() + 30
        while db.execute("SELECT 1 FROM pg_catalog.pg_locks WHERE pid = %s AND NOT granted", (pid,)).fetchone() is None:
            assert time.monotonic() < deadline, "the partition maker never waited for the writer"
            time.sleep(0.01)
        writer.execute("SELECT count(*) FROM cycles.ledger_entries WHERE tenant_id = 'acme'")
        writer.commit()
        thread.join(timeout=30)
    assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
    assert len(outcome[0][0]["created"]) == 3
