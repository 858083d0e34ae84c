"""With no --base-url a demo starts its own embedded server; with --keep its
data survives, and the printed ledger command shows the run's rows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.pgcluster import Cluster

pytestmark = pytest.mark.slow


def cycles_command() -> list[str]:
    script = Path(sys.executable).parent / "cycles"
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def test_authority_demo_on_a_kept_throwaway_server() -> None:
    env = {name: value for name, value in os.environ.items()
           if name not in ("CYCLES_DATABASE_URL", "CYCLES_ADMIN_API_KEY", "CYCLES_DATA_DIR")}
    env["COLUMNS"] = "200"
    result = subprocess.run([*cycles_command(), "demo", "authority", "--keep"], env=env, capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"^  CYCLES_DATA_DIR=(\S+) cycles psql -c \"(.+)\"$", result.stdout, re.MULTILINE)
    assert match is not None, result.stdout
    data_dir, query = Path(match.group(1)), match.group(2)
    try:
        assert "3 ran, 1 blocked" in result.stdout
        # The server is stopped, its cluster too: the printed command starts it for the query.
        assert not (data_dir / "postgres" / "data" / "postmaster.pid").exists()
        rows = subprocess.run([*cycles_command(), "psql", "-At", "-c", query],
                              env={**env, "CYCLES_DATA_DIR": str(data_dir)}, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert rows.returncode == 0, rows.stderr
        operations = [line.split("|")[2] for line in rows.stdout.splitlines()]
        # Two reservations (note, CRM), each on the tenant's and the toolset's budget; none for the email.
        assert operations.count("RESERVE") == 4
        assert operations.count("COMMIT") == 4
    finally:
        cluster = Cluster(data_dir / "postgres")
        if (cluster.data_dir / "postmaster.pid").exists():
            cluster.stop("immediate")
        shutil.rmtree(data_dir.parent, ignore_errors=True)
