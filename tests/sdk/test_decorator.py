"""The @cycles decorator against the real server, sync and async."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from cycles_sdk import (
    AsyncCyclesClient,
    BudgetExceededError,
    CyclesClient,
    CyclesConfig,
    CyclesMetrics,
    DryRunResult,
    MissingActualError,
    cycles,
    get_cycles_context,
    set_default_client,
    set_default_config,
)
from cycles_sdk.heartbeat import next_delay_ms

from tests.api.provision import budget, funded_tenant, reservation_status
from tests.sdk.faults import FaultyTransport

Config = Callable[..., CyclesConfig]


def _spend(conn: Any, tenant: Any) -> tuple[int, int]:
    row = budget(conn, f"{tenant.scope}/workspace:w1")
    return row["spent"], row["reserved"]


def test_budget_stop_sync(admin_conn: Any, make_config: Config) -> None:
    cost, calls = 700, 5
    tenant = funded_tenant(admin_conn, workspace_total=calls * cost)
    with CyclesClient(make_config(tenant)) as client:

        @cycles(estimate=cost, actual=cost, action_kind="llm.completion", action_name="gpt", client=client)
        def step(i: int) -> int:
            return i

        done = [step(i) for i in range(calls)]
        with pytest.raises(BudgetExceededError) as denied:
            step(calls)
    assert done == list(range(calls))
    assert denied.value.error_code == "BUDGET_EXCEEDED" and denied.value.status == 409
    assert denied.value.request_id
    assert _spend(admin_conn, tenant) == (calls * cost, 0)


def test_budget_stop_async(admin_conn: Any, make_config: Config) -> None:
    cost, calls = 300, 4
    tenant = funded_tenant(admin_conn, workspace_total=calls * cost)
    ran: list[int] = []

    async def scenario() -> None:
        async with AsyncCyclesClient(make_config(tenant)) as client:

            @cycles(estimate=cost, action_kind="llm.completion", action_name="claude", client=client)
            async def step(i: int) -> int:
                ran.append(i)
                await asyncio.sleep(0)
                return i

            for i in range(calls):
                assert await step(i) == i
            with pytest.raises(BudgetExceededError):
                await step(calls)

    asyncio.run(scenario())
    assert ran == list(range(calls))  # the denied call never ran
    assert _spend(admin_conn, tenant) == (calls * cost, 0)


def test_context_metrics_and_metadata_reach_the_commit(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn)
    with CyclesClient(make_config(tenant)) as client:

        @cycles(estimate=lambda text: len(text) * 10, actual=lambda out: len(out), action_kind="tool.x",
                action_name=lambda text: f"echo-{len(text)}", client=client)
        def echo(text: str) -> str:
            context = get_cycles_context()
            assert context is not None and context.decision == "ALLOW"
            assert context.estimate == len(text) * 10 and context.expires_at_ms is not None
            context.metrics = CyclesMetrics(tokens_input=3, tokens_output=4, model_version="m1")
            context.commit_metadata = {"trace": "abc"}
            return text * 2

        assert echo("hello") == "hellohello"
        assert get_cycles_context() is None
    row = admin_conn.execute(
        "SELECT status, action->>'name', estimate, metrics->>'tokens_output', committed_metadata->>'trace'"
        " FROM cycles.reservations WHERE tenant_id = %s", (tenant.tenant_id,)).fetchone()
    assert row == ("COMMITTED", "echo-5", 50, "4", "abc")
    assert _spend(admin_conn, tenant) == (10, 0)


def test_failure_before_work_releases(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn)
    seen: list[str] = []
    with CyclesClient(make_config(tenant)) as client:

        @cycles(estimate=900, client=client)
        def broken() -> None:
            context = get_cycles_context()
            assert context is not None
            seen.append(context.reservation_id)
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            broken()
    assert reservation_status(admin_conn, seen[0]) == "RELEASED"
    assert _spend(admin_conn, tenant) == (0, 0)


def test_missing_actual_after_work_never_releases_nor_settles(admin_conn: Any, make_config: Config) -> None:
    """CR-BOUNDARY-001: the work ran, no actual is known: no commit, no event, no release."""
    tenant = funded_tenant(admin_conn)
    seen: list[str] = []
    with CyclesClient(make_config(tenant)) as client:

        @cycles(estimate=900, actual=lambda result: None, use_estimate_if_actual_not_provided=False, client=client)
        def work() -> str:
            context = get_cycles_context()
            assert context is not None
            seen.append(context.reservation_id)
            return "done"

        with pytest.raises(MissingActualError):
            work()
    assert reservation_status(admin_conn, seen[0]) == "ACTIVE"
    assert _spend(admin_conn, tenant) == (0, 900)


def test_dry_run_does_not_run_the_function(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn)
    with CyclesClient(make_config(tenant)) as client:

        @cycles(estimate=500, dry_run=True, client=client)
        def never() -> str:
            raise AssertionError("must not run")

        result: Any = never()
    assert isinstance(result, DryRunResult) and result.decision == "ALLOW"
    assert result.affected_scopes
    assert _spend(admin_conn, tenant) == (0, 0)


def test_default_config_and_default_client(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn)

    @cycles(estimate=100, actual=40)
    def job() -> int:
        return 1

    try:
        with pytest.raises(ValueError, match="no Cycles client"):
            job()
        set_default_config(make_config(tenant))
        assert job() == 1
        set_default_config(None)
        with CyclesClient(make_config(tenant)) as client:
            set_default_client(client)
            assert job() == 1
    finally:
        set_default_client(None)
        set_default_config(None)
    assert _spend(admin_conn, tenant) == (80, 0)


def test_heartbeat_keeps_a_short_reservation_alive(admin_conn: Any, make_config: Config) -> None:
    import time

    tenant = funded_tenant(admin_conn)
    with CyclesClient(make_config(tenant)) as client:

        @cycles(estimate=100, actual=100, ttl_ms=2_000, client=client)
        def slow() -> int:
            context = get_cycles_context()
            assert context is not None
            first = context.expires_at_ms
            time.sleep(2.6)  # longer than the TTL: only the heartbeat keeps it alive
            assert context.expires_at_ms is not None and first is not None and context.expires_at_ms > first
            assert context.heartbeat_failures == []
            return 1

        assert slow() == 1
    assert _spend(admin_conn, tenant) == (100, 0)


def test_local_validation_sends_nothing(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn)
    with CyclesClient(make_config(tenant)) as client:

        @cycles(estimate=-1, client=client)
        def bad() -> None:
            raise AssertionError("must not run")

        with pytest.raises(ValueError, match=r"estimate\.amount"):
            bad()
    assert admin_conn.execute("SELECT count(*) FROM cycles.reservations WHERE tenant_id = %s",
                              (tenant.tenant_id,)).fetchone() == (0,)


def test_heartbeat_is_scheduled_from_the_remaining_ttl(admin_conn: Any, make_config: Config) -> None:
    """A short call under a long lease costs exactly one reserve and one commit:
    the first beat is due at half the server's remaining_ttl_ms, not at once."""
    assert next_delay_ms(60_000, 0) == 30_000
    assert next_delay_ms(60_000, 12_000) == 24_000  # slow round trips: three of them kept in reserve
    assert next_delay_ms(1_000, 400) == 50  # a round trip that eats the lease: beat at once
    tenant = funded_tenant(admin_conn)
    transport = FaultyTransport()
    with CyclesClient(make_config(tenant), transport=transport) as client:

        @cycles(estimate=100, actual=60, ttl_ms=60_000, client=client)
        def quick() -> int:
            return 1

        quick()
    assert [s.path.rsplit("/", 1)[-1] for s in transport.seen] == ["reservations", "commit"]
    assert _spend(admin_conn, tenant) == (60, 0)
