"""Test provisioning through the admin SQL functions, plus the request
bodies and the state snapshots the API tests share."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

Conn = psycopg.Connection[Any]

USD = "USD_MICROCENTS"


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    api_key: str

    def headers(self, **extra: str) -> dict[str, str]:
        return {"X-Cycles-API-Key": self.api_key, **extra}

    def subject(self, **levels: str) -> dict[str, Any]:
        return {"tenant": self.tenant_id, **levels}

    @property
    def scope(self) -> str:
        return f"tenant:{self.tenant_id}"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def new_api_key(conn: Conn, tenant_id: str, permissions: list[str] | None = None) -> str:
    row = conn.execute(
        "SELECT cycles.create_api_key(p_tenant_id => %s, p_name => %s, p_permissions => %s) ->> 'key_secret'",
        (tenant_id, "api test key", permissions)).fetchone()
    assert row is not None and row[0]
    secret: str = row[0]
    return secret


def new_tenant(conn: Conn, permissions: list[str] | None = None) -> Tenant:
    """A fresh tenant (unique id) with one API key (default permissions)."""
    tenant_id = unique("t-")
    conn.execute("SELECT cycles.create_tenant(p_tenant_id => %s, p_name => %s)", (tenant_id, "API test tenant"))
    return Tenant(tenant_id, new_api_key(conn, tenant_id, permissions))


def create_budget(
    conn: Conn, scope: str, allocated: int, unit: str = USD, overdraft_limit: int = 0,
    policy: str | None = None,
) -> None:
    conn.execute(
        "SELECT cycles.create_budget(p_scope => %s, p_unit => %s, p_allocated => %s,"
        " p_overdraft_limit => %s, p_commit_overage_policy => %s)",
        (scope, unit, allocated, overdraft_limit, policy))


def budget(conn: Conn, scope: str, unit: str = USD) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT allocated, spent, reserved, debt, remaining, is_over_limit, status"
            " FROM cycles.budgets WHERE scope = %s AND unit = %s", (scope, unit)).fetchone()
    assert row is not None, f"no budget {scope} {unit}"
    return row


def tenant_state(conn: Conn, tenant_id: str) -> dict[str, Any]:
    """Everything a request could have changed for a tenant: budget counters,
    and the number of reservations, ledger rows, events and idempotency records."""
    budgets = conn.execute(
        "SELECT scope, unit, allocated, spent, reserved, debt, remaining, is_over_limit, status"
        " FROM cycles.budgets WHERE tenant_id = %s ORDER BY scope, unit", (tenant_id,)).fetchall()
    counts = conn.execute(
        "SELECT (SELECT count(*) FROM cycles.reservations WHERE tenant_id = %(t)s),"
        " (SELECT count(*) FROM cycles.ledger_entries WHERE tenant_id = %(t)s),"
        " (SELECT count(*) FROM cycles.events WHERE tenant_id = %(t)s),"
        " (SELECT count(*) FROM cycles.idempotency_records WHERE tenant_id = %(t)s)",
        {"t": tenant_id}).fetchone()
    return {"budgets": budgets, "counts": counts}


def reservation_status(conn: Conn, reservation_id: str) -> str | None:
    row = conn.execute(
        "SELECT status FROM cycles.reservations WHERE reservation_id = %s", (reservation_id,)).fetchone()
    return None if row is None else str(row[0])


def reserve_body(tenant: Tenant, amount: int = 1000, unit: str = USD, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "idempotency_key": unique("idem-"),
        "subject": tenant.subject(workspace="w1"),
        "action": {"kind": "llm.completion", "name": "openai:gpt-4o"},
        "estimate": {"unit": unit, "amount": amount},
    }
    body.update(fields)
    return body


def event_body(tenant: Tenant, amount: int = 500, unit: str = USD, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "idempotency_key": unique("evt-"),
        "subject": tenant.subject(workspace="w1"),
        "action": {"kind": "tool.search", "name": "web.search"},
        "actual": {"unit": unit, "amount": amount},
    }
    body.update(fields)
    return body


def funded_tenant(conn: Conn, tenant_total: int = 1_000_000, workspace_total: int = 100_000) -> Tenant:
    """A tenant with USD budgets on tenant:<id> and tenant:<id>/workspace:w1."""
    tenant = new_tenant(conn)
    create_budget(conn, tenant.scope, tenant_total)
    create_budget(conn, f"{tenant.scope}/workspace:w1", workspace_total)
    return tenant


def find_nulls(value: Any, path: str = "$") -> list[str]:
    """JSON paths of every null in a decoded JSON document."""
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in find_nulls(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [p for index, item in enumerate(value) for p in find_nulls(item, f"{path}[{index}]")]
    return []
