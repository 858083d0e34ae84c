"""SDK tests run against the real server of tests/api (granian + PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cycles_sdk import CyclesConfig

from tests.api.conftest import ApiServer, admin_conn, api_server  # noqa: F401
from tests.api.provision import Tenant


@pytest.fixture
def make_config(api_server: ApiServer, tmp_path: Path) -> Callable[..., CyclesConfig]:  # noqa: F811
    """A config for a tenant: short retry delays, a private journal directory."""

    def build(tenant: Tenant, **overrides: Any) -> CyclesConfig:
        settings: dict[str, Any] = {
            "base_url": api_server.base_url, "api_key": tenant.api_key, "tenant": tenant.tenant_id,
            "workspace": "w1", "retry_initial_delay": 0.01, "retry_max_delay": 0.05,
            "journal_dir": str(tmp_path / "journal"), "retry_flush_timeout": 2.0}
        settings.update(overrides)
        return CyclesConfig(**settings)

    return build
