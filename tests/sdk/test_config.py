"""CyclesConfig.from_env reads the official client's CYCLES_* variables with
the same semantics; the low-level clients answer with CyclesResponse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cycles_sdk import CyclesClient, CyclesConfig

from tests.api.provision import funded_tenant, reserve_body

VARIABLES = {
    "CYCLES_BASE_URL": "http://cycles:7878", "CYCLES_API_KEY": "cyc_live_x", "CYCLES_TENANT": "acme",
    "CYCLES_WORKSPACE": "prod", "CYCLES_APP": "chat", "CYCLES_WORKFLOW": "wf", "CYCLES_AGENT": "bot",
    "CYCLES_TOOLSET": "search", "CYCLES_CONNECT_TIMEOUT": "1.5", "CYCLES_READ_TIMEOUT": "7",
    "CYCLES_RETRY_ENABLED": "TRUE", "CYCLES_RETRY_MAX_ATTEMPTS": "3", "CYCLES_RETRY_INITIAL_DELAY": "0.25",
    "CYCLES_RETRY_MULTIPLIER": "3", "CYCLES_RETRY_MAX_DELAY": "9", "CYCLES_RETRY_FLUSH_TIMEOUT": "4",
    "CYCLES_JOURNAL_ENABLED": "false", "CYCLES_JOURNAL_DIR": "/var/lib/j",
}


def test_from_env_reads_every_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in VARIABLES.items():
        monkeypatch.setenv(name, value)
    config = CyclesConfig.from_env()
    assert (config.base_url, config.api_key) == ("http://cycles:7878", "cyc_live_x")
    assert (config.tenant, config.workspace, config.app, config.workflow, config.agent, config.toolset) == (
        "acme", "prod", "chat", "wf", "bot", "search")
    assert (config.connect_timeout, config.read_timeout) == (1.5, 7.0)
    assert (config.retry_enabled, config.retry_max_attempts, config.retry_initial_delay,
            config.retry_multiplier, config.retry_max_delay, config.retry_flush_timeout) == (True, 3, 0.25, 3, 9, 4)
    assert (config.journal_enabled, config.journal_dir) == (False, "/var/lib/j")


def test_from_env_defaults_and_requirements(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="CYCLES_BASE_URL"):
        CyclesConfig.from_env()
    monkeypatch.setenv("CYCLES_BASE_URL", "http://x")
    with pytest.raises(ValueError, match="CYCLES_API_KEY"):
        CyclesConfig.from_env()
    monkeypatch.setenv("CYCLES_API_KEY", "k")
    monkeypatch.setenv("CYCLES_RETRY_ENABLED", "yes")  # only "true" counts as true, like the official client
    config = CyclesConfig.from_env()
    assert config.retry_enabled is False and config.journal_enabled is True and config.tenant is None
    assert (config.connect_timeout, config.read_timeout, config.retry_max_attempts) == (2.0, 5.0, 5)
    monkeypatch.setenv("MY_BASE_URL", "http://y")
    monkeypatch.setenv("MY_API_KEY", "k2")
    assert CyclesConfig.from_env(prefix="MY_").base_url == "http://y"


def test_low_level_client_answers_with_responses(admin_conn: Any, make_config: Callable[..., CyclesConfig]) -> None:
    tenant = funded_tenant(admin_conn)
    with CyclesClient(make_config(tenant)) as client:
        created = client.create_reservation(reserve_body(tenant, amount=10_000))
        assert created.status == 200 and created.request_id
        rid = created.get_body_attribute("reservation_id")
        fetched = client.get_reservation(rid)
        assert fetched.status == 200 and fetched.get_body_attribute("status") == "ACTIVE"
        listed = client.list_reservations(status="ACTIVE")
        assert [r["reservation_id"] for r in listed.body["reservations"]] == [rid]
        balances = client.get_balances(tenant=tenant.tenant_id)
        assert balances.status == 200 and balances.body["balances"]
        with pytest.raises(ValueError, match="subject filter"):
            client.get_balances()
        missing = client.get_reservation("res_does_not_exist")
        assert missing.status == 404 and missing.error_code == "NOT_FOUND" and not missing.is_success
        error = missing.to_error()
        assert error.status == 404 and error.error_code == "NOT_FOUND" and error.request_id
        too_big = client.create_reservation(reserve_body(tenant, amount=10**12))
        assert too_big.to_error().is_budget_exceeded()
        with pytest.raises(ValueError, match="idempotency_key"):
            client.create_reservation({**reserve_body(tenant), "idempotency_key": ""})
    with CyclesClient(make_config(tenant, base_url="http://127.0.0.1:9")) as unreachable:
        response = unreachable.get_reservation(rid)
    assert response.is_transport_error and response.status == -1 and response.transport_error
