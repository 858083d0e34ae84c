"""Typed exceptions from real server refusals: the body's error code picks
the class, and the fields come from the body and headers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from cycles_sdk import (
    CyclesClient,
    CyclesConfig,
    CyclesProtocolError,
    DebtOutstandingError,
    ReservationFinalizedError,
    cycles,
)

from tests.api.provision import create_budget, funded_tenant, new_tenant, reserve_body

Config = Callable[..., CyclesConfig]


def test_second_commit_is_reservation_finalized(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn)
    with CyclesClient(make_config(tenant)) as client:
        rid = client.create_reservation(reserve_body(tenant)).get_body_attribute("reservation_id")
        commit = {"idempotency_key": str(uuid.uuid4()), "actual": {"unit": "USD_MICROCENTS", "amount": 10}}
        assert client.commit_reservation(rid, commit).status == 200
        again = client.commit_reservation(rid, {**commit, "idempotency_key": str(uuid.uuid4())})
    error = again.to_error()
    assert isinstance(error, ReservationFinalizedError) and error.is_reservation_finalized()
    assert error.status == 409 and error.request_id and not error.is_retryable()


def test_debt_outstanding_blocks_the_call(admin_conn: Any, make_config: Config) -> None:
    tenant = new_tenant(admin_conn)
    create_budget(admin_conn, tenant.scope, 1_000)
    # Debt without an overdraft allowance (set directly, keeping the remaining identity).
    admin_conn.execute(
        "UPDATE cycles.budgets SET debt = 10, remaining = remaining - 10 WHERE scope = %s", (tenant.scope,))
    ran = False
    with CyclesClient(make_config(tenant, workspace=None)) as client:

        @cycles(estimate=5, client=client)
        def work() -> None:
            nonlocal ran
            ran = True

        with pytest.raises(DebtOutstandingError) as blocked:
            work()
    assert not ran and blocked.value.error_code == "DEBT_OUTSTANDING" and blocked.value.is_debt_outstanding()
    assert blocked.value.status == 409 and blocked.value.request_id


def test_closed_tenant_key_is_refused_before_the_work(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn)
    admin_conn.execute("SELECT cycles.close_tenant(p_tenant_id => %s)", (tenant.tenant_id,))
    ran = False
    with CyclesClient(make_config(tenant)) as client:

        @cycles(estimate=500, client=client)
        def work() -> None:
            nonlocal ran
            ran = True

        with pytest.raises(CyclesProtocolError) as refused:
            work()
    assert not ran and refused.value.status == 401 and refused.value.error_code == "UNAUTHORIZED"
    assert type(refused.value) is CyclesProtocolError
