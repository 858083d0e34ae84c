"""The schema is ready to be distributed by tenant_id (docs/scaling.md).

From the catalog: every tenant-owned table (a table of schema cycles with a
NOT NULL tenant_id, except the documented ones below) has tenant_id leading
its primary key and every unique index, and every foreign key between such
tables carries tenant_id. sql/distributed/citus.sql distributes each of them
exactly once, in one colocation group. And, empirically, every statement the
runtime hot path runs against a tenant-owned table names the tenant: the
plans auto_explain reports for reserve, commit, release, extend, decide,
events and balances all scan those tables by a tenant_id condition.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from app.schema import SQL_DIR, sql_files

CITUS = SQL_DIR / "distributed" / "citus.sql"

# Tables with a NOT NULL tenant_id that are not distributed by it, and why.
EXCEPTIONS = {
    # The tenant registry itself: parent_tenant_id references another
    # tenant's row, and authentication reads it before any shard is chosen.
    "tenants": "reference",
    # Authentication goes from a secret's hash to a tenant: the lookup cannot
    # name the tenant, so every node keeps a copy. Written only by admins.
    "api_keys": "reference",
    # The admin plane's log: tenant_id may be a sentinel (__admin__,
    # __unauth__), rows are listed across tenants, nothing on the hot path
    # reads it.
    "audit_logs": "local",
}
# Tables without a NOT NULL tenant_id, kept on the coordinator: admin-plane
# sessions and bulk-action replays, the dashboard and report summaries'
# progress marks, and the maintenance jobs' schedule and run log.
LOCAL_WITHOUT_TENANT = {
    "dashboard_sessions", "bulk_action_records", "dashboard_summary_state", "report_summary_state",
    "maintenance_jobs", "maintenance_runs"}


def tenant_owned(db: psycopg.Connection) -> list[str]:
    rows = db.execute("""
        SELECT c.relname
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
        WHERE c.relnamespace = 'cycles'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND a.attnotnull AND NOT a.attisdropped
        ORDER BY c.relname""").fetchall()
    return [r[0] for r in rows if r[0] not in EXCEPTIONS]


def test_the_tenant_owned_tables_are_the_expected_ones(db: psycopg.Connection) -> None:
    owned = tenant_owned(db)
    assert {"budgets", "reservations", "idempotency_records", "ledger_entries", "events", "policies"} <= set(owned)
    everything = {r[0] for r in db.execute(
        "SELECT relname FROM pg_catalog.pg_class WHERE relnamespace = 'cycles'::regnamespace"
        " AND relkind IN ('r', 'p') AND NOT relispartition").fetchall()}
    assert set(EXCEPTIONS) <= everything
    assert everything == set(owned) | set(EXCEPTIONS) | LOCAL_WITHOUT_TENANT


def test_tenant_id_leads_every_primary_key_and_unique_index(db: psycopg.Connection) -> None:
    owned = tenant_owned(db)
    offenders = db.execute("""
        SELECT c.relname, i.indexrelid::regclass::text, i.indisprimary
        FROM pg_catalog.pg_index AS i
        JOIN pg_catalog.pg_class AS c ON c.oid = i.indrelid
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
        WHERE c.relnamespace = 'cycles'::regnamespace AND c.relname = ANY (%s)
          AND (i.indisunique OR i.indisprimary) AND i.indkey[0] <> a.attnum""", (owned,)).fetchall()
    assert offenders == []
    without_pk = db.execute("""
        SELECT c.relname FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'cycles'::regnamespace AND c.relname = ANY (%s)
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_index AS i WHERE i.indrelid = c.oid AND i.indisprimary)""",
        (owned,)).fetchall()
    assert without_pk == []


def test_foreign_keys_between_tenant_owned_tables_carry_tenant_id(db: psycopg.Connection) -> None:
    owned = tenant_owned(db)
    keys = db.execute("""
        SELECT k.conname, k.conrelid::regclass::text, k.confrelid::regclass::text,
               array_position(k.conkey, a.attnum) AS here, array_position(k.confkey, f.attnum) AS there
        FROM pg_catalog.pg_constraint AS k
        JOIN pg_catalog.pg_class AS c ON c.oid = k.conrelid
        JOIN pg_catalog.pg_class AS r ON r.oid = k.confrelid
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = k.conrelid AND a.attname = 'tenant_id'
        JOIN pg_catalog.pg_attribute AS f ON f.attrelid = k.confrelid AND f.attname = 'tenant_id'
        WHERE k.contype = 'f' AND k.conparentid = 0
          AND c.relname = ANY (%s) AND r.relname = ANY (%s)""", (owned, owned)).fetchall()
    assert keys, "the ledger's key to budgets is such a foreign key"
    assert [k for k in keys if k[3] is None or k[3] != k[4]] == []


def citus_calls() -> list[tuple[str, str, str | None]]:
    """(function, table, colocate_with) of every distribution call in citus.sql."""
    text = re.sub(r"--[^\n]*", "", CITUS.read_text())
    calls = []
    for match in re.finditer(r"SELECT\s+(create_distributed_table|create_reference_table|"
                             r"citus_add_local_table_to_metadata)\(\s*'([^']+)'([^;]*)\);", text):
        colocate = re.search(r"colocate_with\s*=>\s*'([^']+)'", match.group(3))
        calls.append((match.group(1), match.group(2), colocate.group(1) if colocate else None))
    return calls


def test_citus_script_distributes_every_tenant_owned_table_once_colocated(db: psycopg.Connection) -> None:
    calls = citus_calls()
    distributed = [table for function, table, _ in calls if function == "create_distributed_table"]
    owned = [f"cycles.{name}" for name in tenant_owned(db)]
    assert sorted(distributed) == sorted(owned)
    assert len(distributed) == len(set(distributed))
    for function, table, colocate in calls:
        if function == "create_distributed_table":
            assert re.search(rf"'{re.escape(table)}',\s*'tenant_id'", CITUS.read_text()), table
            # One group: the first table opens it, every other joins it.
            expected = "none" if table == distributed[0] else distributed[0]
            assert colocate == expected, table
    reference = {t for f, t, _ in calls if f == "create_reference_table"}
    assert reference == {f"cycles.{n}" for n, kind in EXCEPTIONS.items() if kind == "reference"}
    assert not any(f"'cycles.{n}'" in CITUS.read_text() for n in ("audit_logs", "bulk_action_records"))


def test_the_citus_script_is_not_part_of_the_schema() -> None:
    assert CITUS.exists()
    assert CITUS not in sql_files() and all(path.parent == SQL_DIR for path in sql_files())


# Hot path: every scan of a tenant-owned table names the tenant ----------------


def table_of(relation: str, owned: set[str]) -> str | None:
    """The tenant-owned table a scanned relation belongs to (a ledger partition is the ledger)."""
    if relation in owned:
        return relation
    if relation.startswith("ledger_entries_"):
        return "ledger_entries"
    return None


def untenanted_scans(plan: dict[str, Any], owned: set[str]) -> list[str]:
    """Scans of tenant-owned tables, in a plan tree, that have no tenant_id condition."""
    found: list[str] = []
    relation = plan.get("Relation Name")
    table = table_of(relation, owned) if relation else None
    if table is not None and plan["Node Type"] != "ModifyTable":
        conditions = " ".join(str(plan.get(k, "")) for k in ("Index Cond", "Filter", "Recheck Cond"))
        conditions += " ".join(str(child.get("Index Cond", "")) for child in plan.get("Plans", [])
                               if child["Node Type"] == "Bitmap Index Scan")
        if "tenant_id" not in conditions:
            found.append(f"{plan['Node Type']} on {relation}")
    for child in plan.get("Plans", []):
        found += untenanted_scans(child, owned)
    return found


@pytest.fixture
def explained(db: psycopg.Connection) -> Iterator[Callable[[str, tuple[Any, ...]], list[dict[str, Any]]]]:
    """Runs one statement with auto_explain on and returns the JSON plans of
    every statement it ran, nested ones (inside the functions) included."""
    db.execute("LOAD 'auto_explain'")
    db.execute("SET auto_explain.log_min_duration = 0")
    db.execute("SET auto_explain.log_nested_statements = on")
    db.execute("SET auto_explain.log_format = json")
    db.execute("SET client_min_messages = log")
    notices: list[str] = []
    db.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))

    def run(sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        notices.clear()
        db.execute(sql, params)  # type: ignore[arg-type]
        plans = []
        for message in notices:
            start = message.find("{")
            if "plan:" in message and start >= 0:
                plans.append(json.loads(message[start:]))
        return plans

    yield run
    db.execute("SET client_min_messages = notice")


def hot_path_calls(db: psycopg.Connection) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """Setup (admin, not explained) of two tenants, then the hot-path calls of one."""
    for tenant in ("acme", "other"):
        db.execute("SELECT cycles.create_tenant(%s, %s)", (tenant, tenant))
        for scope in (f"tenant:{tenant}", f"tenant:{tenant}/workspace:w", f"tenant:{tenant}/workspace:w/agent:a"):
            db.execute("SELECT cycles.create_budget(%s, 'TOKENS', 1000000)", (scope,))
    row = db.execute("SELECT cycles.create_api_key('acme', 'hot') ->> 'key_secret'").fetchone()
    assert row is not None
    key = row[0]
    subject = {"tenant": "acme", "workspace": "w", "agent": "a"}
    action = {"kind": "llm.completion", "name": "m"}

    def req(**fields: Any) -> Jsonb:
        return Jsonb({"idempotency_key": uuid.uuid4().hex, **fields})

    reserve = req(subject=subject, action=action, estimate={"unit": "TOKENS", "amount": 900000})
    yield "SELECT cycles.reserve(%s, %s)", (key, reserve)
    yield "SELECT cycles.reserve(%s, %s)", (key, reserve)  # the idempotent replay
    reserved = db.execute("SELECT reservation_id FROM cycles.reservations WHERE tenant_id = 'acme'").fetchall()
    first = reserved[0][0]
    yield "SELECT cycles.extend(%s, %s, %s)", (key, first, req(extend_by_ms=1000))
    yield "SELECT cycles.commit(%s, %s, %s)", (key, first, req(actual={"unit": "TOKENS", "amount": 950000}))
    second = db.execute("SELECT cycles.reserve(%s, %s) ->> 'reservation_id'",
                        (key, req(subject=subject, action=action, estimate={"unit": "TOKENS", "amount": 5})))
    rid = second.fetchone()
    assert rid is not None
    yield "SELECT cycles.release(%s, %s, %s)", (key, rid[0], req())
    yield "SELECT cycles.decide(%s, %s)", (key, req(subject=subject, action=action,
                                                    estimate={"unit": "TOKENS", "amount": 10}))
    yield "SELECT cycles.create_event(%s, %s)", (key, req(subject=subject, action=action,
                                                          actual={"unit": "TOKENS", "amount": 7}))
    yield "SELECT cycles.balances(%s, %s)", (key, Jsonb({"tenant": "acme", "workspace": "w"}))
    # Batched reserves: the set-based path, then the per-item path (a dry run in the batch).
    small = [req(subject=subject, action=action, estimate={"unit": "TOKENS", "amount": 3}) for _ in range(3)]
    yield "SELECT * FROM cycles.reserve_batch(%s, %s, %s)", (key, small, [Jsonb({})] * 3)
    mixed = [*small[:1], req(subject=subject, action=action, estimate={"unit": "TOKENS", "amount": 3}, dry_run=True)]
    yield "SELECT * FROM cycles.reserve_batch(%s, %s, %s)", (key, mixed, [Jsonb({})] * 2)
    # Batched settlements: a commit and a release.
    batched = db.execute("SELECT array_agg(reservation_id ORDER BY reservation_id) FROM cycles.reservations"
                         " WHERE tenant_id = 'acme' AND status = 'ACTIVE'").fetchone()
    assert batched is not None and len(batched[0]) >= 2
    yield "SELECT * FROM cycles.settle_batch(%s, %s, %s, %s, %s)", (
        key, ["commit", "release"], batched[0][:2], [req(actual={"unit": "TOKENS", "amount": 2}), req()],
        [Jsonb({})] * 2)


def test_hot_path_statements_all_name_the_tenant(
        db: psycopg.Connection, explained: Callable[[str, tuple[Any, ...]], list[dict[str, Any]]]) -> None:
    owned = set(tenant_owned(db))
    seen: set[str] = set()
    problems: list[str] = []
    for sql, params in hot_path_calls(db):
        plans = explained(sql, params)
        assert plans, sql
        for plan in plans:
            text = json.dumps(plan)
            seen |= {t for t in owned if f'"Relation Name": "{t}' in text}
            problems += [f"{sql}: {scan} in {plan['Query Text'][:120]!r}"
                         for scan in untenanted_scans(plan["Plan"], owned)]
    assert problems == []
    # The check saw the tables the hot path works on.
    assert {"budgets", "reservations", "idempotency_records", "ledger_entries", "events"} <= seen


def test_the_hot_path_check_catches_a_query_without_its_tenant(
        db: psycopg.Connection, explained: Callable[[str, tuple[Any, ...]], list[dict[str, Any]]]) -> None:
    """The same check over a function that looks budgets up by scope alone,
    as cycles._lock_budgets did before keys led with tenant_id."""
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    db.execute("SELECT cycles.create_budget('tenant:acme', 'TOKENS', 10)")
    db.execute("""
        CREATE FUNCTION pg_temp.lock_without_tenant(p_scope text) RETURNS bigint
        LANGUAGE plpgsql AS $$
        DECLARE v bigint;
        BEGIN
            SELECT b.budget_id INTO v FROM cycles.budgets AS b
            WHERE b.scope = p_scope AND b.unit = 'TOKENS' FOR UPDATE;
            PERFORM FROM cycles.ledger_entries AS l WHERE l.budget_id = v ORDER BY l.created_at DESC LIMIT 1;
            RETURN v;
        END;
        $$""")
    owned = set(tenant_owned(db))
    plans = explained("SELECT pg_temp.lock_without_tenant(%s)", ("tenant:acme",))
    found = [scan for plan in plans for scan in untenanted_scans(plan["Plan"], owned)]
    assert any("budgets" in scan for scan in found)
    assert any("ledger_entries" in scan for scan in found)
