"""docs/mcp.md: its cost maps load and its host configurations are valid JSON."""

from __future__ import annotations

import json
import re
import tomllib

from app.mcp.costmap import parse_cost_map
from tests.server import ROOT

DOC = (ROOT / "docs" / "mcp.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.DOTALL)


def test_every_cost_map_in_the_docs_loads() -> None:
    maps = [parse_cost_map(tomllib.loads(block)) for block in blocks("toml")]
    assert len(maps) == 2
    filesystem = maps[1]
    assert filesystem.toolset == "filesystem"
    assert filesystem.for_tool("write_file").cost == {"USD_MICROCENTS": 50_000, "CREDITS": 1}
    assert filesystem.for_tool("move_file").toolset == "filesystem-moves"


def test_every_host_configuration_is_json_naming_the_commands() -> None:
    configs = [json.loads(block) for block in blocks("json")]
    assert len(configs) == 4
    commands = [server.get("args", [None, None])[:2] for config in configs
                for server in config["mcpServers"].values()]
    assert ["mcp", "serve"] in commands and ["mcp", "gateway"] in commands
