"""The gateway's cost map file, and the ``cycles mcp`` commands' refusals."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.cli import cli
from app.mcp.costmap import CostMap, CostMapError, ToolCost, load_cost_map, parse_cost_map, toolset_name
from app.mcp.settings import McpSettings, SettingsError
from tests.mcp.conftest import CYCLES


def test_a_full_toml_cost_map(tmp_path: Path) -> None:
    path = tmp_path / "costs.toml"
    path.write_text("""
toolset = "mail"
unit = "CREDITS"
default = 2
ttl_ms = 5000
overage_policy = "REJECT"
[tools]
read_inbox = 1
send_email = { USD_MICROCENTS = 5000, CREDITS = 1 }
wipe = { cost = 0, toolset = "mail-danger" }
""")
    costs = load_cost_map(path)
    assert costs.toolset == "mail" and costs.ttl_ms == 5000 and costs.overage_policy == "REJECT"
    assert costs.for_tool("unlisted") == ToolCost({"CREDITS": 2})
    assert costs.for_tool("read_inbox") == ToolCost({"CREDITS": 1})
    assert list(costs.for_tool("send_email").cost.items()) == [("USD_MICROCENTS", 5000), ("CREDITS", 1)]
    assert costs.for_tool("wipe") == ToolCost({"CREDITS": 0}, "mail-danger")


def test_json_cost_map_and_the_default(tmp_path: Path) -> None:
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"tools": {"search": 300}}))
    assert load_cost_map(path).for_tool("search") == ToolCost({"USD_MICROCENTS": 300})
    # With no file every call costs one unit, so a zero budget stops it.
    assert load_cost_map(None) == CostMap() and CostMap().for_tool("x") == ToolCost({"USD_MICROCENTS": 1})


@pytest.mark.parametrize(("document", "fragment"), [
    ({"tools": {"a": -1}}, "tools.a: a cost must be an integer"),
    ({"tools": {"a": True}}, "a cost must be an integer"),
    ({"tools": {"a": 2**63}}, "a cost must be an integer"),
    ({"tools": {"a": {"EUR": 1}}}, "unknown unit 'EUR'"),
    ({"tools": {"a": {}}}, "names no unit"),
    ({"tools": {"a": {"cost": 1, "price": 2}}}, "unknown keys ['price']"),
    ({"tools": {"a": {"toolset": "bad name"}}}, "tools.a.toolset: must be"),
    ({"tools": []}, "tools must be a table"),
    ({"unit": "EUR"}, "unit must be one of"),
    ({"ttl_ms": 10}, "ttl_ms must be"),
    ({"overage_policy": "MAYBE"}, "overage_policy must be"),
    ({"toolset": "a/b"}, "toolset: must be"),
    ({"costs": {}}, "unknown keys ['costs']"),
    ([1], "must be a table"),
])
def test_malformed_cost_maps_are_refused(document: Any, fragment: str) -> None:
    with pytest.raises(CostMapError) as error:
        parse_cost_map(document, "costs.toml")
    assert fragment in str(error.value)


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(CostMapError, match="cannot read the cost map"):
        load_cost_map(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("tools = [")
    with pytest.raises(CostMapError, match="not valid TOML"):
        load_cost_map(broken)


def test_toolset_names_from_server_names() -> None:
    assert toolset_name("Test Mail Server") == "Test-Mail-Server"
    assert toolset_name("@scope/server-filesystem") == "scope-server-filesystem"
    assert toolset_name("///") == "mcp"


def test_settings_from_the_environment() -> None:
    settings = McpSettings.from_env({"CYCLES_API_KEY": "k", "CYCLES_TENANT": "acme", "CYCLES_AGENT": "bot",
                                     "CYCLES_BASE_URL": "http://h:1/"})
    assert settings.subject == {"tenant": "acme", "agent": "bot"} and settings.base_url == "http://h:1"
    config = settings.client_config()
    assert (config.tenant, config.agent, config.journal_enabled, config.retry_enabled) == ("acme", "bot", False,
                                                                                          False)
    with pytest.raises(SettingsError, match="CYCLES_API_KEY is required"):
        McpSettings.from_env({})
    with pytest.raises(SettingsError, match="CYCLES_UNIT"):
        McpSettings.from_env({"CYCLES_API_KEY": "k", "CYCLES_UNIT": "EUR"})


def test_commands_refuse_bad_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.delenv("CYCLES_API_KEY", raising=False)
    result = runner.invoke(cli, ["mcp", "serve"])
    assert result.exit_code == 2 and "CYCLES_API_KEY is required" in result.output
    monkeypatch.setenv("CYCLES_API_KEY", "k")
    bad = tmp_path / "costs.toml"
    bad.write_text("default = -5")
    result = runner.invoke(cli, ["mcp", "gateway", "--upstream", "x", "--costs", str(bad)])
    assert result.exit_code == 2 and "default: a cost must be an integer" in result.output
    result = runner.invoke(cli, ["mcp", "gateway", "--upstream", "x", "--upstream-header", "no colon"])
    assert result.exit_code == 2 and "is not 'Name: value'" in result.output
    result = runner.invoke(cli, ["mcp", "gateway", "--upstream", "x", "--toolset", "a b"])
    assert result.exit_code == 2 and "--toolset" in result.output


def test_gateway_reports_an_upstream_that_cannot_start() -> None:
    result = subprocess.run(
        [CYCLES, "mcp", "gateway", "--upstream", "/nonexistent/server --flag"], capture_output=True, text=True,
        env={"CYCLES_API_KEY": "k", "PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL, timeout=60, check=False)
    assert result.returncode == 1
    assert "cannot connect to the upstream '/nonexistent/server --flag'" in result.stderr
