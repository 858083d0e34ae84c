"""The invariants every run must leave true, checked with SQL against what is
stored and against the client-side log of what the server acknowledged.

Each check returns a list of violations (human-readable strings), so a
failing test prints all of them at once; an empty list is a pass.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from psycopg.rows import dict_row

from tests.api.provision import Conn
from tests.reliability.workload import CallLog, without_ttl

TERMINAL_OPERATIONS = {"COMMITTED": "COMMIT", "RELEASED": "RELEASE", "EXPIRED": "EXPIRE"}


def sweep(conn: Conn) -> int:
    """Runs the expiry sweep until nothing more is due; returns how many expired."""
    total = 0
    while True:
        row = conn.execute("SELECT cycles.expire_due(p_batch_size => 1000)").fetchone()
        assert row is not None
        total += int(row[0])
        if row[0] < 1000:
            return total


def _rows(conn: Conn, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchall()


def ledger_violations(conn: Conn, tenant_id: str) -> list[str]:
    """verify_ledger() is empty for the tenant, and the remaining identity
    holds on every budget row."""
    found = [f"verify_ledger: {row}" for row in _rows(
        conn, "SELECT * FROM cycles.verify_ledger() AS v WHERE v.tenant_id = %(t)s", {"t": tenant_id})]
    found += [f"remaining identity broken: {row}" for row in _rows(conn, """
        SELECT scope, allocated, spent, reserved, debt, remaining FROM cycles.budgets
        WHERE tenant_id = %(t)s AND remaining <> allocated - spent - reserved - debt""", {"t": tenant_id})]
    return found


def bound_violations(conn: Conn, tenant_id: str, policy: str) -> list[str]:
    """No budget oversubscribed. Under REJECT and ALLOW_IF_AVAILABLE nothing is
    ever charged beyond what is there: no debt, remaining never negative
    (Σcharged + Σreserved <= allocated). Under ALLOW_WITH_OVERDRAFT debt stays
    within the overdraft limit, except when concurrent commits pass it, which
    must then flag the budget over limit; a level without an overdraft limit
    never takes debt."""
    budgets = _rows(conn, """
        SELECT scope, allocated, spent, reserved, debt, remaining, overdraft_limit, is_over_limit
        FROM cycles.budgets WHERE tenant_id = %(t)s""", {"t": tenant_id})
    found: list[str] = []
    for row in budgets:
        if row["reserved"] < 0 or row["spent"] < 0 or row["debt"] < 0:
            found.append(f"negative counter: {row}")
        if policy in ("REJECT", "ALLOW_IF_AVAILABLE") and (row["debt"] != 0 or row["remaining"] < 0):
            found.append(f"{policy} oversubscribed: {row}")
        if row["overdraft_limit"] == 0 and row["debt"] != 0:
            found.append(f"debt without an overdraft limit: {row}")
        if row["debt"] > row["overdraft_limit"] and not row["is_over_limit"]:
            found.append(f"debt past the overdraft limit without is_over_limit: {row}")
    return found


def charge_violations(conn: Conn, tenant_id: str) -> list[str]:
    """Every level's spent + debt equals Σcharged at that level (the amounts
    committed by the reservations that charged it plus the direct events
    charged to it) less the debt funding repaid, and its reserved equals the
    estimates of the ACTIVE reservations held on it."""
    rows = _rows(conn, """
        SELECT b.scope, b.spent, b.debt, b.reserved,
               coalesce((SELECT sum(r.committed) FROM cycles.reservations AS r
                         WHERE r.tenant_id = b.tenant_id AND r.status = 'COMMITTED' AND r.unit = b.unit
                           AND b.scope = ANY (r.budgeted_scopes)), 0) AS committed,
               coalesce((SELECT sum(l.spent_delta + l.debt_delta) FROM cycles.ledger_entries AS l
                         WHERE l.tenant_id = b.tenant_id AND l.budget_id = b.budget_id
                           AND l.operation = 'EVENT'), 0) AS events,
               coalesce((SELECT -sum(l.debt_delta) FROM cycles.ledger_entries AS l
                         WHERE l.tenant_id = b.tenant_id AND l.budget_id = b.budget_id
                           AND l.operation IN ('CREDIT', 'REPAY_DEBT')), 0) AS repaid,
               coalesce((SELECT sum(r.estimate) FROM cycles.reservations AS r
                         WHERE r.tenant_id = b.tenant_id AND r.status = 'ACTIVE' AND r.unit = b.unit
                           AND b.scope = ANY (r.budgeted_scopes)), 0) AS held
        FROM cycles.budgets AS b WHERE b.tenant_id = %(t)s""", {"t": tenant_id})
    found: list[str] = []
    for row in rows:
        if row["spent"] + row["debt"] + row["repaid"] != row["committed"] + row["events"]:
            found.append(f"spent + debt is not Σcharged: {row}")
        if row["reserved"] != row["held"]:
            found.append(f"reserved is not Σ active estimates: {row}")
    return found


def reservation_violations(conn: Conn, tenant_id: str) -> list[str]:
    """Every reservation reached at most one terminal state, exactly once:
    one RESERVE ledger row per budgeted scope, one row of its terminal
    operation per budgeted scope (none while ACTIVE), no row of another
    terminal operation, and one reservation.expired event iff EXPIRED."""
    rows = _rows(conn, """
        SELECT r.reservation_id, r.status, cardinality(r.budgeted_scopes) AS scopes,
               count(l.*) FILTER (WHERE l.operation = 'RESERVE') AS reserve_rows,
               count(l.*) FILTER (WHERE l.operation = 'COMMIT') AS commit_rows,
               count(l.*) FILTER (WHERE l.operation = 'RELEASE') AS release_rows,
               count(l.*) FILTER (WHERE l.operation = 'EXPIRE') AS expire_rows,
               (SELECT count(*) FROM cycles.events AS e
                WHERE e.tenant_id = r.tenant_id AND e.event_type = 'reservation.expired'
                  AND e.data ->> 'reservation_id' = r.reservation_id) AS expired_events
        FROM cycles.reservations AS r
        LEFT JOIN cycles.ledger_entries AS l ON l.tenant_id = r.tenant_id AND l.reservation_id = r.reservation_id
        WHERE r.tenant_id = %(t)s
        GROUP BY r.tenant_id, r.reservation_id""", {"t": tenant_id})
    found: list[str] = []
    for row in rows:
        expected = {"COMMIT": 0, "RELEASE": 0, "EXPIRE": 0}
        terminal = TERMINAL_OPERATIONS.get(row["status"])
        if terminal is not None:
            expected[terminal] = row["scopes"]
        actual = {"COMMIT": row["commit_rows"], "RELEASE": row["release_rows"], "EXPIRE": row["expire_rows"]}
        if row["reserve_rows"] != row["scopes"] or actual != expected:
            found.append(f"ledger rows do not match one terminal state: {row}")
        if row["expired_events"] != (1 if row["status"] == "EXPIRED" else 0):
            found.append(f"reservation.expired events do not match the status: {row}")
    return found


def overdue_violations(conn: Conn, tenant_id: str) -> list[str]:
    """After a sweep, nothing is ACTIVE whose expires_at_ms + grace_period_ms
    had passed when the sweep began. A sweep finds the sweeper's lock taken
    while another process sweeps (it then returns at once), so a few sweeps
    are allowed before this is a violation."""
    rows: list[dict[str, Any]] = []
    for _ in range(10):
        started = conn.execute("SELECT cycles._now_ms()").fetchone()
        assert started is not None
        sweep(conn)
        rows = _rows(conn, """
            SELECT reservation_id, expires_at_ms, grace_period_ms, %(started)s AS sweep_started_ms
            FROM cycles.reservations
            WHERE tenant_id = %(t)s AND status = 'ACTIVE' AND expires_at_ms + grace_period_ms < %(started)s""",
            {"t": tenant_id, "started": started[0]})
        if not rows:
            return []
        time.sleep(0.05)
    return [f"ACTIVE past its deadline after a sweep: {row}" for row in rows]


def log_violations(conn: Conn, tenant_id: str, log: CallLog, initial_allocated: dict[str, int]) -> list[str]:
    """What the server acknowledged is what is stored, once:
    - every acknowledged reservation exists with its estimate;
    - at most one settlement (commit or release, by idempotency key) of a
      reservation was acknowledged, and the stored status and committed
      amount are the acknowledged ones;
    - every level's EVENT charges equal the charges acknowledged to it;
    - every level's allocated equals its initial allocation plus the
      acknowledged CREDITs minus the acknowledged DEBITs, less what the
      CREDITs repaid of its debt (they repay debt first);
    - replays (same key) returned the first answer."""
    found: list[str] = []
    stored = {row["reservation_id"]: row for row in _rows(conn, """
        SELECT reservation_id, status, estimate, committed FROM cycles.reservations WHERE tenant_id = %(t)s""",
        {"t": tenant_id})}
    first_answer: dict[tuple[str, str], Any] = {}
    settlements: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for call in log.calls:
        if not call.ok:
            continue
        key = (call.path, call.body["idempotency_key"])
        if key in first_answer and without_ttl(first_answer[key]) != without_ttl(call.answer):
            found.append(f"replay of {key} answered differently: {first_answer[key]} then {call.answer}")
        first_answer.setdefault(key, call.answer)
        if call.kind == "reserve":
            row = stored.get(call.reservation_id or "")
            if row is None or row["estimate"] != call.body["estimate"]["amount"]:
                found.append(f"acknowledged reservation not stored as acknowledged: {call.answer} vs {row}")
        elif call.kind in ("commit", "release"):
            assert call.reservation_id is not None
            settlements[call.reservation_id].add((call.kind, call.body["idempotency_key"]))
            row = stored.get(call.reservation_id)
            if call.kind == "commit" and (
                    row is None or row["status"] != "COMMITTED"
                    or row["committed"] != call.answer["charged"]["amount"]):
                found.append(f"acknowledged commit not stored: {call.answer} vs {row}")
            if call.kind == "release" and (row is None or row["status"] != "RELEASED"):
                found.append(f"acknowledged release not stored: {call.answer} vs {row}")
    found += [f"two settlements acknowledged for {rid}: {sorted(s)}" for rid, s in settlements.items() if len(s) > 1]

    event_charges: dict[str, int] = defaultdict(int)
    seen_events: set[str] = set()
    for call in log.ok("event"):
        if call.answer["event_id"] in seen_events:
            continue
        seen_events.add(call.answer["event_id"])
        charged = call.answer.get("charged", call.body["actual"])["amount"]
        for scope in call.scopes:
            event_charges[scope] += charged
    funding: dict[str, int] = dict(initial_allocated)
    seen_funding: set[str] = set()
    for call in log.ok("fund"):
        if call.body["idempotency_key"] in seen_funding:
            continue
        seen_funding.add(call.body["idempotency_key"])
        assert call.params is not None
        sign = 1 if call.body["operation"] == "CREDIT" else -1
        funding[call.params["scope"]] += sign * call.body["amount"]["amount"]
    for row in _rows(conn, """
            SELECT b.scope, b.allocated,
                   coalesce((SELECT sum(l.spent_delta + l.debt_delta) FROM cycles.ledger_entries AS l
                             WHERE l.tenant_id = b.tenant_id AND l.budget_id = b.budget_id
                               AND l.operation = 'EVENT'), 0) AS events,
                   coalesce((SELECT -sum(l.debt_delta) FROM cycles.ledger_entries AS l
                             WHERE l.tenant_id = b.tenant_id AND l.budget_id = b.budget_id
                               AND l.operation = 'CREDIT'), 0) AS repaid
            FROM cycles.budgets AS b WHERE b.tenant_id = %(t)s""", {"t": tenant_id}):
        if row["events"] != event_charges.get(row["scope"], 0):
            found.append(f"event charges at {row['scope']}: stored {row['events']},"
                         f" acknowledged {event_charges.get(row['scope'], 0)}")
        if row["allocated"] + row["repaid"] != funding.get(row["scope"]):
            found.append(f"allocated at {row['scope']}: stored {row['allocated']},"
                         f" acknowledged {funding.get(row['scope'])}")
    return found


def all_violations(conn: Conn, tenant_id: str, policy: str) -> list[str]:
    """Every invariant that holds whatever the traffic (sweeps first)."""
    return (overdue_violations(conn, tenant_id) + ledger_violations(conn, tenant_id)
            + bound_violations(conn, tenant_id, policy) + charge_violations(conn, tenant_id)
            + reservation_violations(conn, tenant_id))
