"""The official client (runcycles 0.5.3) and this SDK, given the same
workload, leave identical balances; and they accept each other's subject
defaults and denials the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import runcycles
from cycles_sdk import AsyncCyclesClient, BudgetExceededError, CyclesClient, CyclesConfig, cycles

from tests.api.conftest import ApiServer
from tests.api.provision import Tenant, funded_tenant

COSTS = [1_000, 2_500, 0, 4_000, 750]
BUDGET = 9_000


def _balances(conn: Any, tenant: Tenant) -> list[tuple[Any, ...]]:
    rows = conn.execute("SELECT regexp_replace(scope, '^tenant:[^/]+', 'tenant:T'), allocated, spent, reserved,"
                        " debt, remaining FROM cycles.budgets WHERE tenant_id = %s ORDER BY scope",
                        (tenant.tenant_id,)).fetchall()
    return [tuple(row) for row in rows]


def _official(api_server: ApiServer, tenant: Tenant) -> tuple[list[int], int]:
    config = runcycles.CyclesConfig(base_url=api_server.base_url, api_key=tenant.api_key, tenant=tenant.tenant_id,
                                    workspace="w1", retry_enabled=False, journal_enabled=False)
    done, denied = [], 0
    with runcycles.CyclesClient(config) as client:
        for cost in COSTS:

            @runcycles.cycles(estimate=2_500, actual=cost, action_kind="llm.completion", action_name="m",
                              client=client)
            def call(c: int = cost) -> int:
                return c

            try:
                done.append(call())
            except runcycles.BudgetExceededError:
                denied += 1
    return done, denied


def _ours(tenant: Tenant, make_config: Callable[..., CyclesConfig]) -> tuple[list[int], int]:
    done, denied = [], 0
    with CyclesClient(make_config(tenant)) as client:
        for cost in COSTS:

            @cycles(estimate=2_500, actual=cost, action_kind="llm.completion", action_name="m", client=client)
            def call(c: int = cost) -> int:
                return c

            try:
                done.append(call())
            except BudgetExceededError:
                denied += 1
    return done, denied


def test_same_workload_same_balances(api_server: ApiServer, admin_conn: Any,
                                     make_config: Callable[..., CyclesConfig]) -> None:
    theirs_tenant = funded_tenant(admin_conn, workspace_total=BUDGET)
    ours_tenant = funded_tenant(admin_conn, workspace_total=BUDGET)
    theirs = _official(api_server, theirs_tenant)
    ours = _ours(ours_tenant, make_config)
    assert ours == theirs
    assert theirs[1] > 0  # the workload reaches the budget
    assert _balances(admin_conn, ours_tenant) == _balances(admin_conn, theirs_tenant)


def test_async_same_workload_same_balances(api_server: ApiServer, admin_conn: Any,
                                           make_config: Callable[..., CyclesConfig]) -> None:
    theirs_tenant = funded_tenant(admin_conn)
    ours_tenant = funded_tenant(admin_conn)

    async def run(client: Any, decorator: Any) -> None:
        for cost in COSTS:

            @decorator(estimate=5_000, actual=cost, action_kind="tool.call", action_name="t", client=client)
            async def call() -> None:
                await asyncio.sleep(0)

            await call()

    async def scenario() -> None:
        official = runcycles.CyclesConfig(base_url=api_server.base_url, api_key=theirs_tenant.api_key,
                                          tenant=theirs_tenant.tenant_id, workspace="w1", retry_enabled=False,
                                          journal_enabled=False)
        async with runcycles.AsyncCyclesClient(official) as theirs:
            await run(theirs, runcycles.cycles)
        async with AsyncCyclesClient(make_config(ours_tenant)) as ours:
            await run(ours, cycles)

    asyncio.run(scenario())
    assert _balances(admin_conn, ours_tenant) == _balances(admin_conn, theirs_tenant)
    assert _balances(admin_conn, ours_tenant)[1][2] == sum(COSTS)
