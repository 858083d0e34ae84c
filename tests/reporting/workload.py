"""A random workload through the real cycles.* functions, spread over months.

Every ledger row and event is written by the functions under test (tenants,
budgets, funding, reserve, commit with and without overage, release, expiry,
direct events, DENY decisions). The workload runs in seconds, so afterwards
its clock is stretched: every ledger and event time t becomes
``START + (t - t0) * factor``. The stretch keeps every order (within a budget
the times stay strictly increasing), and the hash chains are then rebuilt
row by row with cycles._ledger_entry_hash, as a superuser with the
append-only trigger disabled. Reports then see three months of history.

The ``Ledger`` class is the independent side: plain Python over the raw
rows, used by the tests to recompute every report.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

START = datetime(2026, 1, 10, 6, 30, tzinfo=UTC)
SPAN = timedelta(days=95)
# How far the report summaries of the shared workload database are built (a
# whole UTC hour inside the history).
SUMMARISED_TO = datetime(2026, 2, 20, 13, 0, tzinfo=UTC)
TENANTS = ("t-alpha", "t-beta", "t-gamma")
UNITS = ("TOKENS", "USD_MICROCENTS")
AGENTS = ("planner", "coder", "critic", "scraper")
WORKFLOWS = ("nightly", "support", None)
ACTIONS = (("llm.completion", "gpt"), ("llm.completion", "claude"), ("tool.call", "search"), ("tool.call", "fetch"))
RUNTIME_OPERATIONS = ("RESERVE", "COMMIT", "RELEASE", "EXPIRE", "EVENT")
FUNDING_OPERATIONS = ("CREATE", "CREDIT", "DEBIT", "RESET", "RESET_SPENT", "REPAY_DEBT")


@dataclass
class Workload:
    keys: dict[str, str]
    reservations: int
    expired: int


def _call(db: psycopg.Connection, sql: str, *args: Any) -> Any:
    row = db.execute(sql, [Jsonb(a) if isinstance(a, dict) else a for a in args]).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def _try(db: psycopg.Connection, sql: str, *args: Any) -> Any | None:
    """A call that may be refused (budget exceeded, frozen...): refusals change nothing."""
    try:
        return _call(db, sql, *args)
    except psycopg.Error as exc:
        assert exc.sqlstate is not None and exc.sqlstate.startswith("CY"), exc
        return None


def _subject(rng: random.Random, tenant: str) -> dict[str, str]:
    subject = {"tenant": tenant, "workspace": rng.choice(["w1", "w1", "w2"]), "agent": rng.choice(AGENTS)}
    workflow = rng.choice(WORKFLOWS)
    if workflow is not None:
        subject["workflow"] = workflow
    if rng.random() < 0.3:
        subject["agent"] = subject["agent"].upper()  # levels are lower-cased on the ledger
    return subject


def _request(rng: random.Random, tenant: str, unit: str, amount: int, field: str = "estimate",
             **extra: Any) -> dict[str, Any]:
    kind, name = rng.choice(ACTIONS)
    return {"idempotency_key": uuid.uuid4().hex, "subject": _subject(rng, tenant),
            "action": {"kind": kind, "name": name}, field: {"unit": unit, "amount": amount}, **extra}


def run(db: psycopg.Connection, seed: int, operations_per_tenant: int = 100) -> Workload:
    """Runs the workload, then stretches its clock and rebuilds the chains."""
    rng = random.Random(seed)
    keys: dict[str, str] = {}
    for tenant in TENANTS:
        _call(db, "SELECT cycles.create_tenant(%s, %s)", tenant, tenant.title())
        keys[tenant] = _call(db, "SELECT cycles.create_api_key(%s, 'workload') ->> 'key_secret'", tenant)
        _call(db, "SELECT cycles.create_budget(%s, 'TOKENS', 200000, 5000)", f"tenant:{tenant}")
        _call(db, "SELECT cycles.create_budget(%s, 'USD_MICROCENTS', 90000, 0, 'ALLOW_WITH_OVERDRAFT')",
              f"tenant:{tenant}")
        _call(db, "SELECT cycles.create_budget(%s, 'TOKENS', 20000, 3000)", f"tenant:{tenant}/workspace:w1")
        _call(db, "SELECT cycles.create_budget(%s, 'TOKENS', 1500, 3000, 'ALLOW_WITH_OVERDRAFT')",
              f"tenant:{tenant}/workspace:w1/agent:coder")
        _call(db, "SELECT cycles.create_budget(%s, 'USD_MICROCENTS', 30000)", f"tenant:{tenant}/workspace:w2")

    reservations = 0
    expiring: list[str] = []
    for _ in range(operations_per_tenant):
        for tenant in TENANTS:
            key = keys[tenant]
            unit = rng.choice(UNITS)
            amount = rng.randint(1, 900)
            roll = rng.random()
            if roll < 0.08:
                operation = rng.choice(["CREDIT", "CREDIT", "DEBIT", "REPAY_DEBT", "RESET", "RESET_SPENT"])
                scope = rng.choice([f"tenant:{tenant}", f"tenant:{tenant}/workspace:w1",
                                    f"tenant:{tenant}/workspace:w1/agent:coder"])
                _try(db, "SELECT cycles.fund_budget(%s, 'TOKENS', %s, %s, %s, p_spent => %s, p_reason => 'workload')",
                     scope, operation, rng.randint(500, 5000) if operation.startswith("RESET") else amount * 3,
                     uuid.uuid4().hex, rng.randint(0, 2000))
            elif roll < 0.18:
                event = _request(rng, tenant, unit, amount, field="actual")
                event["overage_policy"] = rng.choice(["ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT", "REJECT"])
                _try(db, "SELECT cycles.create_event(%s, %s)", key, event)
            elif roll < 0.25:
                decision = _call(db, "SELECT cycles.decide(%s, %s)", key,
                                 _request(rng, tenant, unit, rng.choice([amount, 10**9])))
                assert decision["decision"] in ("ALLOW", "ALLOW_WITH_CAPS", "DENY")
            else:
                short = roll > 0.92
                request = _request(rng, tenant, unit, amount,
                                   **({"ttl_ms": 1000, "grace_period_ms": 0} if short else {}))
                reserved = _try(db, "SELECT cycles.reserve(%s, %s)", key, request)
                if reserved is None:
                    continue
                reservations += 1
                rid = reserved["reservation_id"]
                if short:
                    expiring.append(rid)
                elif rng.random() < 0.7:
                    actual = max(0, amount + rng.randint(-amount, amount // 2))
                    _try(db, "SELECT cycles.commit(%s, %s, %s)", key, rid,
                         {"idempotency_key": uuid.uuid4().hex, "actual": {"unit": unit, "amount": actual}})
                else:
                    _try(db, "SELECT cycles.release(%s, %s, %s)", key, rid, {"idempotency_key": uuid.uuid4().hex})
        if expiring and rng.random() < 0.1:
            _expire(db, expiring)
            expiring = []
    expired = _expire(db, expiring)
    _call(db, "SELECT cycles.freeze_budget(%s, 'USD_MICROCENTS')", "tenant:t-gamma/workspace:w2")
    stretch(db)
    return Workload(keys=keys, reservations=reservations, expired=expired)


def _expire(db: psycopg.Connection, reservation_ids: list[str]) -> int:
    """Moves the reservations' deadlines into the past (tests never sleep) and sweeps."""
    db.execute("UPDATE cycles.reservations SET created_at_ms = created_at_ms - 5000,"
               " expires_at_ms = expires_at_ms - 5000 WHERE reservation_id = ANY(%s) AND status = 'ACTIVE'",
               (reservation_ids,))
    count: int = _call(db, "SELECT cycles.expire_due(1000)")
    return count


def stretch(db: psycopg.Connection) -> None:
    """Spreads the ledger and events over SPAN from START, then rebuilds every chain."""
    bounds = db.execute("SELECT min(t), max(t) FROM (SELECT created_at AS t FROM cycles.ledger_entries"
                        " UNION ALL SELECT created_at FROM cycles.events) AS x").fetchone()
    assert bounds is not None
    first, last = bounds
    factor = SPAN.total_seconds() / max((last - first).total_seconds(), 1e-3)
    with db.transaction():
        db.execute("ALTER TABLE cycles.ledger_entries DISABLE TRIGGER ledger_entries_append_only")
        # Two steps: the first moves every row far away so that no new time
        # collides with an old one on the (budget_id, created_at) key.
        db.execute("UPDATE cycles.ledger_entries SET created_at = created_at + interval '100 years'")
        db.execute("UPDATE cycles.ledger_entries SET created_at = %s + (created_at - interval '100 years' - %s) * %s",
                   (START, first, factor))
        db.execute("UPDATE cycles.events SET created_at = %s + (created_at - %s) * %s", (START, first, factor))
        db.execute("""
            DO $$
            DECLARE
                v_row  cycles.ledger_entries;
                v_prev cycles.ledger_entries;
            BEGIN
                FOR v_row IN SELECT * FROM cycles.ledger_entries ORDER BY budget_id, created_at LOOP
                    v_row.prev_hash := CASE WHEN v_prev.budget_id = v_row.budget_id THEN v_prev.entry_hash END;
                    v_row.entry_hash := cycles._ledger_entry_hash(v_row);
                    UPDATE cycles.ledger_entries
                    SET prev_hash = v_row.prev_hash, entry_hash = v_row.entry_hash
                    WHERE tenant_id = v_row.tenant_id AND entry_id = v_row.entry_id
                      AND created_at = v_row.created_at;
                    v_prev := v_row;
                END LOOP;
            END;
            $$""")
        db.execute("ALTER TABLE cycles.ledger_entries ENABLE TRIGGER ledger_entries_append_only")


# The independent side ----------------------------------------------------------


def truncate(moment: datetime, bucket: str, zone: str) -> datetime:
    """PostgreSQL's date_trunc(bucket, moment, zone), in Python."""
    local = moment.astimezone(ZoneInfo(zone))
    if bucket == "hour":
        local = local.replace(minute=0, second=0, microsecond=0)
    elif bucket == "day":
        local = local.replace(hour=0, minute=0, second=0, microsecond=0)
    elif bucket == "month":
        local = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    local = local.replace(tzinfo=None).replace(tzinfo=ZoneInfo(zone))  # re-resolve the offset at the new wall time
    return local.astimezone(UTC)


DIMENSION_COLUMNS = {
    "tenant": "tenant_id", "scope": "scope", "unit": "unit", "action_kind": "action_kind",
    "action_name": "action_name", "workspace": "subject_workspace", "app": "subject_app",
    "workflow": "subject_workflow", "agent": "subject_agent", "toolset": "subject_toolset",
}


class Ledger:
    """The raw ledger rows and events, and every report recomputed from them."""

    def __init__(self, db: psycopg.Connection) -> None:
        with db.cursor(row_factory=dict_row) as cur:
            self.rows: list[dict[str, Any]] = cur.execute(
                "SELECT * FROM cycles.ledger_entries ORDER BY entry_id").fetchall()
            self.events: list[dict[str, Any]] = cur.execute(
                "SELECT * FROM cycles.events ORDER BY seq").fetchall()
            self.budgets: list[dict[str, Any]] = cur.execute(
                "SELECT * FROM cycles.budgets ORDER BY budget_id").fetchall()
        # One operation, many budgets: the first row written (lowest entry_id)
        # of each (operation, reservation or event id) stands for it.
        first: dict[tuple[str, str], int] = {}
        for row in self.rows:
            group = row["reservation_id"] or row["event_id"]
            if group is not None:
                first.setdefault((row["operation"], group), row["entry_id"])
        self.leads = {row["entry_id"] for row in self.rows
                      if (row["reservation_id"] or row["event_id"]) is None
                      or first[(row["operation"], row["reservation_id"] or row["event_id"])] == row["entry_id"]}

    @staticmethod
    def measures(row: dict[str, Any]) -> dict[str, int]:
        charge = row["operation"] in ("COMMIT", "EVENT")
        return {
            "spent": row["spent_delta"] if charge else 0,
            "debt": row["debt_delta"] if charge else 0,
            "charged": row["spent_delta"] + row["debt_delta"] if charge else 0,
            "reserved": row["reserved_delta"] if row["operation"] == "RESERVE" else 0,
            "released": -row["reserved_delta"] if row["operation"] == "RELEASE" else 0,
            "expired": -row["reserved_delta"] if row["operation"] == "EXPIRE" else 0,
            "charges": 1 if charge else 0,
        }

    @staticmethod
    def operation_path(row: dict[str, Any]) -> str:
        path = f"tenant:{row['tenant_id']}"
        for level in ("workspace", "app", "workflow", "agent", "toolset"):
            if row[f"subject_{level}"] is not None:
                path += f"/{level}:{row[f'subject_{level}']}"
        return path

    def spend(self, start: datetime, end: datetime, bucket: str, group_by: Iterable[str], tenant: str | None = None,
              unit: str | None = None, prefix: str | None = None, zone: str = "UTC") -> dict[tuple[Any, ...], dict[str, int]]:
        dims = [d for d in DIMENSION_COLUMNS if d in set(group_by) | {"unit"}]
        by_scope = "scope" in dims
        totals: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for row in self.rows:
            if not start <= row["created_at"] < end or row["operation"] not in RUNTIME_OPERATIONS:
                continue
            if (tenant and row["tenant_id"] != tenant) or (unit and row["unit"] != unit):
                continue
            if not by_scope and row["entry_id"] not in self.leads:
                continue
            if prefix is not None:
                path = row["scope"] if by_scope else self.operation_path(row)
                if path != prefix and not path.startswith(prefix + "/"):
                    continue
            key = (start if bucket == "total" else truncate(row["created_at"], bucket, zone),
                   *(row[DIMENSION_COLUMNS[d]] for d in dims))
            for name, value in self.measures(row).items():
                totals[key][name] += value
        return {k: dict(v) for k, v in totals.items()}

    def balance_at(self, budget_id: int, moment: datetime) -> tuple[int, int, int, int] | None:
        """Replays the budget's deltas up to and including moment."""
        seen = False
        allocated = spent = reserved = debt = 0
        for row in self.rows:
            if row["budget_id"] == budget_id and row["created_at"] <= moment:
                seen = True
                allocated += row["allocated_delta"]
                spent += row["spent_delta"]
                reserved += row["reserved_delta"]
                debt += row["debt_delta"]
        return (allocated, spent, reserved, debt) if seen else None

    def months(self) -> list[datetime]:
        firsts = {truncate(row["created_at"], "month", "UTC") for row in self.rows}
        return sorted(firsts)


def canonical_text(row: dict[str, Any]) -> str:
    """The chain's canonical text of a ledger row, rebuilt in Python from the
    documented rules (PostgreSQL's record text form)."""

    def field(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            text = "t" if value else "f"
        elif isinstance(value, datetime):
            delta = value - datetime(1970, 1, 1, tzinfo=UTC)
            text = str((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)
        elif isinstance(value, bytes):
            text = value.hex()
        elif isinstance(value, dict):
            text = jsonb_text(value)
        else:
            text = str(value)
        if text == "" or any(c in text for c in '"\\(),') or any(c.isspace() for c in text):
            return '"' + text.replace("\\", "\\\\").replace('"', '""') + '"'
        return text

    names = ("entry_id", "tenant_id", "budget_id", "scope", "unit", "operation", "allocated_delta", "spent_delta",
             "reserved_delta", "debt_delta", "reservation_id", "event_id", "action_kind", "action_name", "subject",
             "idempotency_key", "reason", "request_id", "trace_id", "actor_type", "actor_key_id", "created_at",
             "subject_workspace", "subject_app", "subject_workflow", "subject_agent", "subject_toolset",
             "operation_lead", "allocated_after", "spent_after", "reserved_after", "debt_after", "prev_hash")
    return "(" + ",".join(field(row[name]) for name in names) + ")"


def jsonb_text(value: Any) -> str:
    """jsonb's output text: object keys ordered by length then bytes, ', ' and ': ' separators."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {jsonb_text(value[k])}" for k in keys) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)
