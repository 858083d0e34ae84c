"""The official Python client (runcycles 0.5.3) against the server: its
strict response validation accepts every shape the API sends."""

from __future__ import annotations

from typing import Any

import pytest
from runcycles import BudgetExceededError, CyclesClient, CyclesConfig, cycles

from tests.api.conftest import ApiServer
from tests.api.provision import budget, funded_tenant


def _client(api_server: ApiServer, api_key: str, tenant_id: str) -> CyclesClient:
    return CyclesClient(CyclesConfig(
        base_url=api_server.base_url, api_key=api_key, tenant=tenant_id, workspace="w1",
        retry_enabled=False, journal_enabled=False))


def test_decorated_call_reserves_and_commits(api_server: ApiServer, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    with _client(api_server, tenant.api_key, tenant.tenant_id) as client:

        @cycles(estimate=5_000, actual=3_000, action_kind="llm.completion", action_name="gpt-4o", client=client)
        def summarize(text: str) -> str:
            return text.upper()

        assert summarize("hello") == "HELLO"
    workspace = budget(admin_conn, f"{tenant.scope}/workspace:w1")
    assert (workspace["spent"], workspace["reserved"]) == (3_000, 0)


def test_live_denial_raises_budget_exceeded(api_server: ApiServer, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    with _client(api_server, tenant.api_key, tenant.tenant_id) as client:

        @cycles(estimate=10**9, action_kind="llm.completion", action_name="gpt-4o", client=client)
        def expensive() -> str:
            raise AssertionError("must not run")

        with pytest.raises(BudgetExceededError):
            expensive()
    assert budget(admin_conn, tenant.scope)["reserved"] == 0


def test_client_calls_parse(api_server: ApiServer, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    with _client(api_server, tenant.api_key, tenant.tenant_id) as client:
        balances = client.get_balances(tenant=tenant.tenant_id)
        assert balances.is_success, balances
        listed = client.list_reservations(status="ACTIVE")
        assert listed.is_success, listed
