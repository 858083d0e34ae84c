"""The SDK recovery profile (cycles-sdk-recovery): every scenario of the
protocol's catalog (spec/scenarios.yaml) is bound to native tests that run
against the real server. This SDK claims the durable level, so core, durable
and boundary scenarios are all bound.

The catalog is read from ``CYCLES_SDK_SCENARIOS_YAML`` or, failing that, from
a checkout of the protocol repository next to this one (``../*/spec/scenarios.yaml``).
``python -m tests.sdk.recovery_adapter <ID>`` runs a scenario's tests the way the
protocol's conformance runner expects.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import yaml

from tests.api.conftest import ROOT

SCENARIO_TESTS: dict[str, list[str]] = {
    "CR-CORE-001": [
        "tests/sdk/test_recovery.py::test_lost_commit_response_reuses_the_key",
        "tests/sdk/test_recovery.py::test_lost_commit_response_reuses_the_key_async",
    ],
    "CR-CORE-002": [
        "tests/sdk/test_recovery.py::test_expired_commit_falls_back_to_an_event",
        "tests/sdk/test_recovery.py::test_expired_commit_falls_back_to_an_event_async",
    ],
    "CR-CORE-003": ["tests/sdk/test_recovery.py::test_heartbeat_transport_failure_is_observable_and_non_fatal"],
    "CR-CORE-004": ["tests/sdk/test_recovery.py::test_nonconformant_commit_success_is_retried_with_the_same_key"],
    "CR-DURABLE-001": [
        "tests/sdk/test_recovery.py::test_journal_is_written_before_the_first_commit_leaves",
        "tests/sdk/test_restart.py::test_killed_before_first_commit_then_replayed_once",
        "tests/sdk/test_restart.py::test_killed_after_commit_reached_the_server_is_applied_once",
    ],
    "CR-DURABLE-002": ["tests/sdk/test_restart.py::test_expired_replay_switches_durably_to_event_mode"],
    "CR-DURABLE-003": ["tests/sdk/test_recovery.py::test_rate_limit_floor_survives_restart"],
    "CR-DURABLE-004": ["tests/sdk/test_recovery.py::test_tenant_journal_survives_key_rotation"],
    "CR-DURABLE-005": ["tests/sdk/test_recovery.py::test_corrupt_and_unsupported_records_are_quarantined"],
    "CR-DURABLE-006": ["tests/sdk/test_restart.py::test_concurrent_replay_by_two_processes_is_exactly_once"],
    "CR-DURABLE-007": ["tests/sdk/test_recovery.py::test_journal_filenames_and_legacy_migration"],
    "CR-BOUNDARY-001": [
        "tests/sdk/test_decorator.py::test_missing_actual_after_work_never_releases_nor_settles",
        "tests/sdk/test_decorator.py::test_failure_before_work_releases",
    ],
}
CLAIMED_LEVELS = {"core", "durable", "boundary"}


def catalog_path() -> Path | None:
    configured = os.environ.get("CYCLES_SDK_SCENARIOS_YAML")
    if configured:
        return Path(configured)
    found = sorted(ROOT.parent.glob("*/spec/scenarios.yaml"))
    return found[0] if found else None


def test_every_mapped_test_exists() -> None:
    for node_ids in SCENARIO_TESTS.values():
        assert node_ids
        for node_id in node_ids:
            path, name = node_id.split("::")
            module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
            assert callable(getattr(module, name, None)), node_id


def test_every_catalog_scenario_is_mapped() -> None:
    path = catalog_path()
    if path is None:
        pytest.skip("no scenario catalog: set CYCLES_SDK_SCENARIOS_YAML")
    catalog = yaml.safe_load(path.read_text())
    assert catalog["profile"] == "cycles-sdk-recovery"
    claimed = {s["id"] for s in catalog["scenarios"] if s["level"] in CLAIMED_LEVELS}
    assert claimed == set(SCENARIO_TESTS)
