"""Building blocks for the runtime protocol tests: tenants, keys and budgets
written straight into the tables (so these tests do not depend on the admin
functions), calls of the cycles.* runtime functions, error capture, and the
ledger reconciliation every money-changing test ends with."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

SECRET_PREFIX = "cyc_live_test_"
ALL_RUNTIME_PERMISSIONS = [
    "reservations:create", "reservations:commit", "reservations:release",
    "reservations:extend", "reservations:list", "balances:read",
]


@dataclass(frozen=True)
class CyclesError:
    """A cycles.* error as the HTTP layer sees it: the error code and details
    from the JSON DETAIL of the raised exception."""

    sqlstate: str
    error: str
    message: str
    details: dict[str, Any]


def create_tenant(db: psycopg.Connection, tenant_id: str, **settings: Any) -> None:
    columns = ["tenant_id", "name", *settings]
    values = [tenant_id, tenant_id.title(), *settings.values()]
    placeholders = ", ".join(["%s"] * len(values))
    db.execute(f"INSERT INTO cycles.tenants ({', '.join(columns)}) VALUES ({placeholders})",  # type: ignore[arg-type]
               values)


def set_tenant_status(db: psycopg.Connection, tenant_id: str, status: str) -> None:
    db.execute(
        "UPDATE cycles.tenants SET status = %s,"
        " closed_at = CASE WHEN %s = 'CLOSED' THEN clock_timestamp() END WHERE tenant_id = %s",
        (status, status, tenant_id))


def create_key(db: psycopg.Connection, tenant_id: str,
               permissions: list[str] | None = None) -> str:
    """A new ACTIVE key of the tenant; returns its secret."""
    secret = SECRET_PREFIX + uuid.uuid4().hex
    key_id = "key_" + uuid.uuid4().hex[:16]
    db.execute(
        "INSERT INTO cycles.api_keys (key_id, tenant_id, key_prefix, key_hash, name, permissions, expires_at)"
        " VALUES (%s, %s, %s, cycles._hash_secret(%s), %s, %s, clock_timestamp() + interval '1 day')",
        (key_id, tenant_id, secret[:24], secret, "test key",
         permissions if permissions is not None else ALL_RUNTIME_PERMISSIONS))
    return secret


def create_budget(db: psycopg.Connection, scope: str, allocated: int, unit: str = "USD_MICROCENTS",
                  overdraft_limit: int = 0, commit_overage_policy: str | None = None) -> int:
    """A budget row plus the CREATE ledger row that funds it."""
    tenant_id = scope.split("/")[0].split(":", 1)[1]
    row = db.execute(
        "INSERT INTO cycles.budgets (tenant_id, scope, unit, allocated, remaining, overdraft_limit,"
        " commit_overage_policy) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING budget_id",
        (tenant_id, scope, unit, allocated, allocated, overdraft_limit, commit_overage_policy)).fetchone()
    assert row is not None
    budget_id: int = row[0]
    db.execute(
        "SELECT cycles._append_ledger(%s, %s, %s, %s, 'CREATE', '{\"type\": \"admin\"}'::jsonb,"
        " p_allocated_delta => %s)", (budget_id, tenant_id, scope, unit, allocated))
    return budget_id


def set_budget(db: psycopg.Connection, scope: str, **columns: Any) -> None:
    """Changes non-counter columns of a budget (status, is_over_limit, ...)."""
    assignments = ", ".join(f"{name} = %s" for name in columns)
    db.execute(f"UPDATE cycles.budgets SET {assignments} WHERE scope = %s",  # type: ignore[arg-type]
               [*columns.values(), scope])


def budget(db: psycopg.Connection, scope: str, unit: str = "USD_MICROCENTS") -> dict[str, Any]:
    cursor = db.execute(
        "SELECT allocated, spent, reserved, debt, remaining, is_over_limit, status"
        " FROM cycles.budgets WHERE scope = %s AND unit = %s", (scope, unit))
    row = cursor.fetchone()
    assert row is not None, scope
    names = [c.name for c in cursor.description or []]
    return dict(zip(names, row, strict=True))


def reservation(db: psycopg.Connection, reservation_id: str) -> dict[str, Any]:
    cursor = db.execute("SELECT * FROM cycles.reservations WHERE reservation_id = %s", (reservation_id,))
    row = cursor.fetchone()
    assert row is not None, reservation_id
    names = [c.name for c in cursor.description or []]
    return dict(zip(names, row, strict=True))


def ledger_mismatches(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    """Budgets whose counters differ from the sums of their ledger deltas, or
    whose remaining breaks the identity (plain SQL, independent of the code
    under test)."""
    return db.execute(
        """
        SELECT b.scope, b.unit, b.allocated, b.spent, b.reserved, b.debt, b.remaining,
               s.allocated, s.spent, s.reserved, s.debt
        FROM cycles.budgets AS b
        LEFT JOIN LATERAL (
            SELECT coalesce(sum(l.allocated_delta), 0) AS allocated,
                   coalesce(sum(l.spent_delta), 0) AS spent,
                   coalesce(sum(l.reserved_delta), 0) AS reserved,
                   coalesce(sum(l.debt_delta), 0) AS debt
            FROM cycles.ledger_entries AS l WHERE l.tenant_id = b.tenant_id AND l.budget_id = b.budget_id) AS s ON true
        WHERE (b.allocated, b.spent, b.reserved, b.debt) <> (s.allocated, s.spent, s.reserved, s.debt)
           OR b.remaining <> b.allocated - b.spent - b.reserved - b.debt
           OR b.reserved < 0
        """).fetchall()


def assert_ledger_consistent(db: psycopg.Connection) -> None:
    assert ledger_mismatches(db) == []
    assert db.execute("SELECT count(*) FROM cycles.verify_ledger()").fetchone() == (0,)


def events(db: psycopg.Connection, event_type: str | None = None) -> list[dict[str, Any]]:
    cursor = db.execute(
        "SELECT event_type, scope, source, actor, data FROM cycles.events"
        " WHERE %(type)s::text IS NULL OR event_type = %(type)s ORDER BY seq", {"type": event_type})
    names = [c.name for c in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def call(db: psycopg.Connection, function: str, key: str | None, *args: Any,
         ctx: dict[str, Any] | None = None) -> Any:
    """Calls a runtime function by name with the key first and ctx last;
    dicts are passed as jsonb. Returns the decoded JSON result."""
    params = [key, *[Jsonb(a) if isinstance(a, dict) else a for a in args], Jsonb(ctx or {})]
    placeholders = ", ".join(["%s"] * len(params))
    row = db.execute(f"SELECT cycles.{function}({placeholders})", params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


@contextmanager
def raises(error: str) -> Iterator[list[CyclesError]]:
    """Expects a cycles error with this code; yields a list that holds it
    afterwards, for assertions on the details."""
    caught: list[CyclesError] = []
    with pytest.raises(psycopg.Error) as info:
        yield caught
    diag = info.value.diag
    assert diag.sqlstate is not None and diag.sqlstate.startswith("CY"), (diag.sqlstate, diag.message_primary)
    detail = json.loads(diag.message_detail or "{}")
    assert detail.get("error") == error, (detail, diag.message_primary)
    caught.append(CyclesError(diag.sqlstate, detail["error"], diag.message_primary or "",
                              detail.get("details") or {}))


def reserve_request(amount: int, key: str | None = None, unit: str = "USD_MICROCENTS",
                    subject: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "idempotency_key": key or uuid.uuid4().hex,
        "subject": subject if subject is not None else {"tenant": "acme", "workspace": "w1"},
        "action": {"kind": "llm.completion", "name": "openai:gpt-4o"},
        "estimate": {"unit": unit, "amount": amount},
        **extra,
    }


@dataclass(frozen=True)
class Fixture:
    """The standard fixture: tenants acme (budgets), beta (budgets), gamma
    (none) with their keys. USD budgets: tenant:acme 1,000,000;
    tenant:acme/workspace:w1 100,000; tenant:acme/workspace:od 1,000 with an
    overdraft limit of 500; tenant:beta 1,000,000."""

    ka: str
    kb: str
    kc: str


def standard_fixture(db: psycopg.Connection) -> Fixture:
    for tenant_id in ("acme", "beta", "gamma"):
        create_tenant(db, tenant_id)
    create_budget(db, "tenant:acme", 1_000_000)
    create_budget(db, "tenant:acme/workspace:w1", 100_000)
    create_budget(db, "tenant:acme/workspace:od", 1_000, overdraft_limit=500)
    create_budget(db, "tenant:beta", 1_000_000)
    return Fixture(ka=create_key(db, "acme"), kb=create_key(db, "beta"), kc=create_key(db, "gamma"))


def age_reservation(db: psycopg.Connection, reservation_id: str, by_ms: int) -> None:
    """Moves a reservation's clock back by by_ms (created and expiry), as if
    it had been made that long ago: tests never sleep."""
    db.execute(
        "UPDATE cycles.reservations SET created_at_ms = created_at_ms - %s, expires_at_ms = expires_at_ms - %s"
        " WHERE reservation_id = %s", (by_ms, by_ms, reservation_id))
