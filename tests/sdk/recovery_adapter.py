"""Adapter for the protocol's SDK recovery conformance runner.

``python -m tests.sdk.recovery_adapter <SCENARIO-ID>`` reads the scenario
inputs on stdin (unused beyond the id check), runs the native tests bound to
the scenario (tests/sdk/test_profile_scenarios.py) with pytest against the
real server, and prints one JSON result on stdout; pytest output goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys

import pytest
import yaml

from tests.sdk.test_profile_scenarios import SCENARIO_TESTS


def main() -> int:
    scenario_id = sys.argv[1]
    data = sys.stdin.read()
    if data.strip():
        inputs = yaml.safe_load(data)
        if isinstance(inputs, dict) and inputs.get("id") not in (None, scenario_id):
            print(f"stdin describes {inputs.get('id')}, not {scenario_id}", file=sys.stderr)
            return 2
    tests = SCENARIO_TESTS.get(scenario_id)
    if not tests:
        print(json.dumps({"scenario_id": scenario_id, "passed": False, "native_tests": []}))
        return 1
    with contextlib.redirect_stdout(sys.stderr):
        code = pytest.main(["-q", "-p", "no:cacheprovider", *tests])
    print(json.dumps({"scenario_id": scenario_id, "passed": code == 0, "native_tests": tests}))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
