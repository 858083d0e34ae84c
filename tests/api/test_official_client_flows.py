"""The official client's flows end to end: async decorator, dry run, release
on failure, heartbeat, and the commit-after-expiry recovery through events."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from runcycles import (
    AsyncCyclesClient,
    BudgetExceededError,
    CyclesClient,
    CyclesConfig,
    DryRunResult,
    cycles,
    get_cycles_context,
)

from tests.api.conftest import ApiServer
from tests.api.provision import Tenant, budget, create_budget, funded_tenant, new_api_key, unique


def _config(api_server: ApiServer, tenant: Tenant, **overrides: Any) -> CyclesConfig:
    settings: dict[str, Any] = {
        "base_url": api_server.base_url, "api_key": tenant.api_key, "tenant": tenant.tenant_id,
        "workspace": "w1", "retry_enabled": False, "journal_enabled": False}
    settings.update(overrides)
    return CyclesConfig(**settings)


def test_async_decorator_reserves_and_commits(api_server: ApiServer, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)

    async def scenario() -> str:
        async with AsyncCyclesClient(_config(api_server, tenant)) as client:

            @cycles(estimate=4_000, actual=lambda result: len(result) * 100, action_kind="llm.completion",
                    action_name="claude", client=client)
            async def answer(question: str) -> str:
                context = get_cycles_context()
                assert context is not None and context.reservation_id
                assert context.decision is not None and context.decision.value == "ALLOW"
                await asyncio.sleep(0)
                return question * 3

            return await answer("ab")

    assert asyncio.run(scenario()) == "ababab"
    workspace = budget(admin_conn, f"{tenant.scope}/workspace:w1")
    assert (workspace["spent"], workspace["reserved"]) == (600, 0)


def test_async_denial_raises_budget_exceeded(api_server: ApiServer, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn, workspace_total=1_000)

    async def scenario() -> None:
        async with AsyncCyclesClient(_config(api_server, tenant)) as client:

            @cycles(estimate=1_001, action_kind="llm.completion", action_name="m", client=client)
            async def expensive() -> None:
                raise AssertionError("must not run")

            await expensive()

    with pytest.raises(BudgetExceededError):
        asyncio.run(scenario())
    assert budget(admin_conn, f"{tenant.scope}/workspace:w1")["reserved"] == 0


def test_dry_run_returns_dry_run_result_and_changes_nothing(api_server: ApiServer, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    ran = []
    with CyclesClient(_config(api_server, tenant)) as client:

        @cycles(estimate=2_500, dry_run=True, action_kind="llm.completion", action_name="m", client=client)
        def guarded() -> str:
            ran.append(True)
            return "ran"

        result = guarded()
    assert isinstance(result, DryRunResult)
    assert result.decision.value == "ALLOW"
    assert result.affected_scopes == [tenant.scope, f"{tenant.scope}/workspace:w1"]
    assert ran == []
    assert budget(admin_conn, tenant.scope)["reserved"] == 0


def test_failing_function_releases_its_reservation(api_server: ApiServer, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    with CyclesClient(_config(api_server, tenant)) as client:

        @cycles(estimate=7_000, action_kind="tool.call", action_name="crm.update", client=client)
        def broken() -> None:
            raise RuntimeError("tool failed")

        with pytest.raises(RuntimeError):
            broken()
    workspace = budget(admin_conn, f"{tenant.scope}/workspace:w1")
    assert (workspace["spent"], workspace["reserved"], workspace["remaining"]) == (0, 0, 100_000)
    statuses = admin_conn.execute(
        "SELECT status, release_reason FROM cycles.reservations WHERE tenant_id = %s", (tenant.tenant_id,)).fetchall()
    assert statuses == [("RELEASED", "guarded_method_failed")]


def test_heartbeat_extends_a_long_call(api_server: ApiServer, admin_conn: Any) -> None:
    """The client schedules its heartbeat from remaining_ttl_ms; a call longer
    than the TTL survives because extends move the expiry forward."""
    tenant = funded_tenant(admin_conn)
    with CyclesClient(_config(api_server, tenant)) as client:

        @cycles(estimate=1_000, actual=900, ttl_ms=1_000, grace_period_ms=0, action_kind="llm.completion",
                action_name="m", client=client)
        def slow() -> str:
            time.sleep(1.6)
            return "done"

        assert slow() == "done"
    row = admin_conn.execute(
        "SELECT status, extension_count, committed FROM cycles.reservations WHERE tenant_id = %s",
        (tenant.tenant_id,)).fetchone()
    assert row is not None
    status, extensions, committed = row
    assert status == "COMMITTED" and committed == 900
    assert extensions >= 1


def test_commit_after_expiry_is_recovered_through_events_exactly_once(
    api_server: ApiServer, admin_conn: Any, tmp_path: Path,
) -> None:
    """No extensions allowed, so the reservation expires while the work runs:
    the commit meets 410 and the client settles the spend via POST /v1/events
    with the commit's idempotency key. The spend is applied once."""
    tenant_id = unique("t-")
    admin_conn.execute(
        "SELECT cycles.create_tenant(p_tenant_id => %s, p_name => 'expiry', "
        "p_options => '{\"max_reservation_extensions\": 0}')", (tenant_id,))
    tenant = Tenant(tenant_id, new_api_key(admin_conn, tenant_id))
    create_budget(admin_conn, tenant.scope, 1_000_000)
    create_budget(admin_conn, f"{tenant.scope}/workspace:w1", 100_000)
    config = _config(api_server, tenant, retry_enabled=True, retry_initial_delay=0.05, retry_max_delay=0.2,
                     journal_enabled=True, journal_dir=str(tmp_path))
    with CyclesClient(config) as client:

        @cycles(estimate=2_000, actual=3_333, ttl_ms=1_000, grace_period_ms=0, action_kind="llm.completion",
                action_name="m", client=client)
        def overran() -> str:
            time.sleep(1.3)
            return "done"

        assert overran() == "done"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and budget(admin_conn, tenant.scope)["spent"] == 0:
            time.sleep(0.1)
    workspace = budget(admin_conn, f"{tenant.scope}/workspace:w1")
    assert (workspace["spent"], workspace["reserved"]) == (3_333, 0)
    events = admin_conn.execute(
        "SELECT count(*) FROM cycles.ledger_entries WHERE tenant_id = %s AND operation = 'EVENT'"
        " AND scope = %s", (tenant.tenant_id, tenant.scope)).fetchone()
    assert events == (1,)
    expired = admin_conn.execute(
        "SELECT status FROM cycles.reservations WHERE tenant_id = %s", (tenant.tenant_id,)).fetchall()
    assert expired == [("EXPIRED",)]
