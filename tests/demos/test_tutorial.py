"""docs/tutorial.md works verbatim: its shell blocks run in order in one bash
session against a fresh real server (only the line starting the server is
skipped: the test starts its own and sets CYCLES_URL and ADMIN_KEY, which the
tutorial keeps when they are set), its Python block at its place in between."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import psycopg

from app.pgcluster import Cluster
from tests.server import ROOT, fresh_database, running_server

TUTORIAL = ROOT / "docs" / "tutorial.md"
BLOCK = re.compile(r"^```(sh|bash|python)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
SERVER_START = "python3 -m app serve"


def tutorial_script() -> str:
    """The tutorial as one bash script: shell blocks verbatim (minus the server
    start), each Python block fed to the project's interpreter where it stands."""
    parts = ["set -euo pipefail"]
    for language, body in BLOCK.findall(TUTORIAL.read_text()):
        if language == "python":
            parts.append(f".venv/bin/python - <<'TUTORIAL_PYTHON'\n{body}TUTORIAL_PYTHON")
        else:
            parts.append("".join(line for line in body.splitlines(keepends=True) if SERVER_START not in line))
    return "\n".join(parts) + "\n"


def test_the_tutorial_has_the_expected_blocks() -> None:
    languages = [language for language, _ in BLOCK.findall(TUTORIAL.read_text())]
    assert languages.count("python") == 1
    assert len(languages) >= 8
    assert sum(SERVER_START in line for line in tutorial_script().splitlines()) == 0
    assert SERVER_START in TUTORIAL.read_text()


def test_every_command_of_the_tutorial_works(pg_cluster: Cluster, tmp_path: Path) -> None:
    conninfo = fresh_database(pg_cluster, "cycles_tutorial")
    with running_server(conninfo) as server:
        env = {**os.environ, "CYCLES_URL": server.base_url, "ADMIN_KEY": server.admin_key,
               # `cycles psql` reaches the test database; the SDK's journal stays out of the real home.
               "CYCLES_DATABASE_URL": conninfo, "HOME": str(tmp_path)}
        env.pop("CYCLES_API_KEY", None)
        result = subprocess.run(["bash", "-c", tutorial_script()], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    output = result.stdout
    assert '"decision":"ALLOW"' in output.replace(" ", "")
    assert "stopped after 99 calls: BUDGET_EXCEEDED" in output
    assert re.search(r"COMMIT\s*\|\s*100\s*\|\s*99420000\s*\|", output), output
    assert re.search(r"RESERVE\s*\|\s*100\s*\|\s*0\s*\|", output), output
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert conn.execute("SELECT spent, reserved FROM cycles.budgets WHERE scope = 'tenant:tutorial'"
                            ).fetchone() == (99_420_000, 0)
        assert conn.execute("SELECT count(*) FROM cycles.verify_ledger()").fetchone() == (0,)
