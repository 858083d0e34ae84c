"""The request bounds declared in app.wire and the ones the SQL functions
enforce are the same: at each boundary both accept, or both refuse."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg
import pytest

from app.wire import INT64_MAX, ReservationCreateRequest, ReservationExtendRequest
from tests.api.provision import Tenant, funded_tenant, reserve_body, unique

Mutation = Callable[[dict[str, Any]], None]


def _field(path: str, value: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        target = body
        for name in parents:
            target = target[name]
        target[leaf] = value
    return mutate


RESERVE_BOUNDARIES: list[tuple[str, Mutation]] = [
    ("ttl 999", _field("ttl_ms", 999)),
    ("ttl 1000", _field("ttl_ms", 1000)),
    ("ttl 86400000", _field("ttl_ms", 86_400_000)),
    ("ttl 86400001", _field("ttl_ms", 86_400_001)),
    ("grace -1", _field("grace_period_ms", -1)),
    ("grace 0", _field("grace_period_ms", 0)),
    ("grace 60000", _field("grace_period_ms", 60_000)),
    ("grace 60001", _field("grace_period_ms", 60_001)),
    ("amount -1", _field("estimate.amount", -1)),
    ("amount 0", _field("estimate.amount", 0)),
    ("amount int64 max", _field("estimate.amount", INT64_MAX)),
    ("amount int64 max + 1", _field("estimate.amount", INT64_MAX + 1)),
    ("key 0", _field("idempotency_key", "")),
    ("key 256", _field("idempotency_key", "k" * 256)),
    ("key 257", _field("idempotency_key", "k" * 257)),
    ("kind 64", _field("action.kind", "k" * 64)),
    ("kind 65", _field("action.kind", "k" * 65)),
    ("name 256", _field("action.name", "n" * 256)),
    ("name 257", _field("action.name", "n" * 257)),
    ("tags 10", _field("action.tags", ["t"] * 10)),
    ("tags 11", _field("action.tags", ["t"] * 11)),
    ("tag 64", _field("action.tags", ["t" * 64])),
    ("tag 65", _field("action.tags", ["t" * 65])),
    ("agent 128", _field("subject.agent", "a" * 128)),
    ("agent 129", _field("subject.agent", "a" * 129)),
    ("unit EUR", _field("estimate.unit", "EUR")),
    ("policy NOPE", _field("overage_policy", "NOPE")),
]


def _wire_accepts(decoder: msgspec.json.Decoder[Any], body: dict[str, Any]) -> bool:
    try:
        decoder.decode(msgspec.json.encode(body))
    except msgspec.ValidationError:
        return False
    return True


def _sql_accepts(conn: Any, statement: str, params: dict[str, Any]) -> bool:
    try:
        conn.execute(statement, params)
    except psycopg.Error as exc:
        assert exc.sqlstate == "CY400", f"unexpected {exc.sqlstate}: {exc}"
        return False
    return True


@pytest.fixture(scope="module")
def tenant(admin_conn: Any) -> Tenant:
    return funded_tenant(admin_conn)


@pytest.mark.parametrize("mutate", [m for _, m in RESERVE_BOUNDARIES], ids=[n for n, _ in RESERVE_BOUNDARIES])
def test_reserve_bounds_agree(admin_conn: Any, tenant: Tenant, mutate: Mutation) -> None:
    body = reserve_body(tenant, dry_run=True)
    mutate(body)
    sql_accepts = _sql_accepts(
        admin_conn, "SELECT cycles.reserve(p_api_key => %(key)s, p_request => %(request)s::jsonb)",
        {"key": tenant.api_key, "request": json.dumps(body)})
    assert _wire_accepts(msgspec.json.Decoder(ReservationCreateRequest), body) == sql_accepts


@pytest.mark.parametrize("extend_by_ms", [0, 1, 86_400_000, 86_400_001])
def test_extend_bounds_agree(admin_conn: Any, tenant: Tenant, extend_by_ms: int) -> None:
    created = admin_conn.execute(
        "SELECT cycles.reserve(p_api_key => %s, p_request => %s::jsonb) ->> 'reservation_id'",
        (tenant.api_key, json.dumps(reserve_body(tenant, 1)))).fetchone()[0]
    body = {"idempotency_key": unique("e-"), "extend_by_ms": extend_by_ms}
    sql_accepts = _sql_accepts(
        admin_conn,
        "SELECT cycles.extend(p_api_key => %(key)s, p_reservation_id => %(id)s, p_request => %(request)s::jsonb)",
        {"key": tenant.api_key, "id": created, "request": json.dumps(body)})
    assert _wire_accepts(msgspec.json.Decoder(ReservationExtendRequest), body) == sql_accepts
