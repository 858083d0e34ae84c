"""stream_reservation, sync and async, against the real server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cycles_sdk import (
    AsyncCyclesClient,
    BudgetExceededError,
    CyclesClient,
    CyclesConfig,
    ModelPrice,
    StreamUsage,
    cost_microcents,
    set_default_client,
    stream_reservation,
)

from tests.api.provision import budget, funded_tenant, reservation_status

Config = Callable[..., CyclesConfig]
PRICE = ModelPrice(input_per_mtok="2.50", output_per_mtok="10.00")
ACTION = {"kind": "llm.completion", "name": "openai:gpt-4o"}


def _fake_llm_stream(chunks: int) -> Iterator[str]:
    for index in range(chunks):
        yield f"tok{index} "


def _workspace(conn: Any, tenant: Any) -> tuple[int, int]:
    row = budget(conn, f"{tenant.scope}/workspace:w1")
    return row["spent"], row["reserved"]


def test_stream_commits_its_real_token_cost(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn, tenant_total=10_000_000, workspace_total=10_000_000)
    with CyclesClient(make_config(tenant)) as client, client.stream_reservation(
            action=ACTION, estimate=5_000_000) as stream:
        stream.usage.add_input_tokens(1200)
        for _chunk in _fake_llm_stream(37):
            stream.usage.add_output_tokens(1)
        stream.usage.set_actual_cost(cost_microcents(
            {"prompt_tokens": stream.usage.tokens_input, "completion_tokens": stream.usage.tokens_output}, PRICE))
        rid = stream.reservation_id
        assert stream.decision == "ALLOW"
    # 1200 x 2.50 / 1e6 USD + 37 x 10 / 1e6 USD = 0.00337 USD = 337_000 micro-cents
    assert _workspace(admin_conn, tenant) == (337_000, 0)
    assert stream.settlement is not None and stream.settlement.settled and stream.settlement_error is None
    row = admin_conn.execute("SELECT status, metrics->>'tokens_input', metrics->>'tokens_output'"
                             " FROM cycles.reservations WHERE reservation_id = %s", (rid,)).fetchone()
    assert row == ("COMMITTED", "1200", "37")


def test_stream_cost_fn_and_error_release(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn)

    def cost(usage: StreamUsage) -> int:
        return usage.tokens_output * 100

    with CyclesClient(make_config(tenant)) as client:
        with client.stream_reservation(action=ACTION, estimate=9_000, cost_fn=cost) as stream:
            stream.usage.add_output_tokens(42)
        assert _workspace(admin_conn, tenant) == (4_200, 0)
        with pytest.raises(ConnectionError), client.stream_reservation(action=ACTION, estimate=9_000) as broken:
            broken.usage.add_output_tokens(3)
            raise ConnectionError("stream dropped")
    assert reservation_status(admin_conn, broken.reservation_id) == "RELEASED"
    assert broken.release_error is None
    assert _workspace(admin_conn, tenant) == (4_200, 0)


def test_stream_denied_raises_before_the_body(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn, workspace_total=100)
    entered = False
    with CyclesClient(make_config(tenant)) as client:
        set_default_client(client)
        try:
            with pytest.raises(BudgetExceededError), stream_reservation(action=ACTION, estimate=1_000):
                entered = True
        finally:
            set_default_client(None)
    assert not entered


def test_async_stream(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn)

    async def scenario() -> str:
        async with AsyncCyclesClient(make_config(tenant)) as client:
            async with client.stream_reservation(action=ACTION, estimate=50_000, ttl_ms=2_000) as stream:
                for _ in range(5):
                    await asyncio.sleep(0.5)  # longer than the TTL in total: the heartbeat extends it
                    stream.usage.add_output_tokens(10)
                stream.usage.set_actual_cost(stream.usage.tokens_output * 7)
            with pytest.raises(RuntimeError):
                async with client.stream_reservation(action=ACTION, estimate=50_000) as failed:
                    raise RuntimeError("provider error")
            assert reservation_status(admin_conn, failed.reservation_id) == "RELEASED"
            assert stream.context.heartbeat_failures == []
            assert stream.context.expires_at_ms is not None
            return stream.reservation_id

    rid = asyncio.run(scenario())
    assert reservation_status(admin_conn, rid) == "COMMITTED"
    assert _workspace(admin_conn, tenant) == (350, 0)
