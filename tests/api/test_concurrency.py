"""Concurrency through the real server: parallel HTTP clients against shared
budgets never oversubscribe them, and every level's counters stay equal to
its ledger."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.api.conftest import ApiServer
from tests.api.provision import (
    USD,
    budget,
    create_budget,
    funded_tenant,
    new_tenant,
    reserve_body,
    unique,
)

LEVELS = ("workspace", "app", "workflow", "agent", "toolset")


def _post(api_server: ApiServer, path: str, key: str, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=api_server.base_url, timeout=30) as client:
        return client.post(path, json=body, headers={"X-Cycles-API-Key": key})


def _unreconciled(conn: Any, tenant_id: str) -> list[Any]:
    rows: list[Any] = conn.execute(
        "SELECT * FROM cycles.verify_ledger() AS v WHERE v.scope LIKE %s", (f"tenant:{tenant_id}%",)).fetchall()
    return rows


def test_parallel_reserves_never_oversubscribe(api_server: ApiServer, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn, tenant_total=1_000_000, workspace_total=100_000)
    bodies = [reserve_body(tenant, 10_000) for _ in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda b: _post(api_server, "/v1/reservations", tenant.api_key, b), bodies))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 10 + [409] * 10
    assert {r.json()["error"] for r in responses if r.status_code == 409} == {"BUDGET_EXCEEDED"}
    workspace = budget(admin_conn, f"{tenant.scope}/workspace:w1")
    assert (workspace["reserved"], workspace["remaining"]) == (100_000, 0)
    assert budget(admin_conn, tenant.scope)["reserved"] == 100_000
    assert _unreconciled(admin_conn, tenant.tenant_id) == []


def test_concurrent_same_key_reserves_create_one_reservation(api_server: ApiServer, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    body = reserve_body(tenant, 1_000)
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(lambda _: _post(api_server, "/v1/reservations", tenant.api_key, body), range(10)))
    assert {r.status_code for r in responses} == {200}
    ids = {r.json()["reservation_id"] for r in responses}
    assert len(ids) == 1
    count = admin_conn.execute(
        "SELECT count(*) FROM cycles.reservations WHERE tenant_id = %s", (tenant.tenant_id,)).fetchone()
    assert count == (1,)
    assert budget(admin_conn, tenant.scope)["reserved"] == 1_000


def test_mixed_storm_across_six_levels_keeps_ledger_exact(api_server: ApiServer, admin_conn: Any) -> None:
    """Reserve, commit (under, at and over the estimate), release and extend
    from 8 clients on every level of a 6-level hierarchy at once."""
    tenant = new_tenant(admin_conn)
    path = tenant.scope
    create_budget(admin_conn, path, 10_000_000, overdraft_limit=0)
    subject: dict[str, str] = {"tenant": tenant.tenant_id}
    for level in LEVELS:
        subject[level] = "x"
        path = f"{path}/{level}:x"
        create_budget(admin_conn, path, 2_000_000 + 1_000 * len(subject), overdraft_limit=50_000)

    def worker(seed: int) -> list[int]:
        rng = random.Random(seed)
        seen: list[int] = []
        with httpx.Client(base_url=api_server.base_url, timeout=30,
                          headers={"X-Cycles-API-Key": tenant.api_key}) as client:
            for _ in range(12):
                # A random prefix of the hierarchy, so the levels see different traffic.
                depth = rng.randint(1, len(LEVELS))
                partial = {k: v for i, (k, v) in enumerate(subject.items()) if i <= depth}
                policy = rng.choice(["REJECT", "ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT"])
                estimate = rng.randint(1, 40_000)
                created = client.post("/v1/reservations", json={
                    "idempotency_key": unique("storm-"), "subject": partial,
                    "action": {"kind": "llm.completion", "name": "m"},
                    "estimate": {"unit": USD, "amount": estimate}, "overage_policy": policy})
                seen.append(created.status_code)
                if created.status_code != 200:
                    continue
                reservation_id = created.json()["reservation_id"]
                step = rng.random()
                if step < 0.2:
                    seen.append(client.post(f"/v1/reservations/{reservation_id}/extend", json={
                        "idempotency_key": unique("ext-"), "extend_by_ms": 1000}).status_code)
                if step < 0.5:
                    actual = rng.choice([0, estimate // 2, estimate, estimate * 2])
                    seen.append(client.post(f"/v1/reservations/{reservation_id}/commit", json={
                        "idempotency_key": unique("c-"), "actual": {"unit": USD, "amount": actual}}).status_code)
                elif step < 0.8:
                    seen.append(client.post(f"/v1/reservations/{reservation_id}/release", json={
                        "idempotency_key": unique("r-")}).status_code)
                # else: left ACTIVE, for the sweeper or for later.
        return seen

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = [s for seen in pool.map(worker, range(8)) for s in seen]
    # Only protocol outcomes: no 500, no deadlock surfacing as an error.
    assert set(statuses) <= {200, 409}, statuses
    assert statuses.count(200) > 0
    assert _unreconciled(admin_conn, tenant.tenant_id) == []
    identity = admin_conn.execute(
        "SELECT count(*) FROM cycles.budgets WHERE tenant_id = %s"
        " AND remaining <> allocated - spent - reserved - debt", (tenant.tenant_id,)).fetchone()
    assert identity == (0,)
    # Every level holds exactly the estimates of the ACTIVE reservations charged to it.
    held = admin_conn.execute("""
        SELECT b.scope, b.reserved, coalesce(sum(r.estimate), 0)
        FROM cycles.budgets AS b
        LEFT JOIN cycles.reservations AS r
          ON r.status = 'ACTIVE' AND b.scope = ANY (r.budgeted_scopes) AND r.unit = b.unit
        WHERE b.tenant_id = %s
        GROUP BY b.scope, b.reserved""", (tenant.tenant_id,)).fetchall()
    assert all(reserved == expected for _, reserved, expected in held), held
