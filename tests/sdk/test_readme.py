"""Every Python example of sdk/README.md runs against the real server, with
CYCLES_* pointing at a freshly funded tenant."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import ROOT, ApiServer
from tests.api.provision import budget, create_budget, new_tenant

EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "sdk" / "README.md").read_text(), re.DOTALL)
FUNDS = 10_000_000


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index: int, api_server: ApiServer, admin_conn: Any, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    tenant = new_tenant(admin_conn)
    create_budget(admin_conn, tenant.scope, FUNDS)
    for name, value in {"CYCLES_BASE_URL": api_server.base_url, "CYCLES_API_KEY": tenant.api_key,
                        "CYCLES_TENANT": tenant.tenant_id, "CYCLES_JOURNAL_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    script = tmp_path / f"example_{index}.py"
    script.write_text(EXAMPLES[index])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    row = budget(admin_conn, tenant.scope)
    assert row["reserved"] == 0  # every reservation the example made was settled
    if "stopped after" in out:
        calls = int(out.split("stopped after ")[1].split()[0])
        assert calls == 10 and row["spent"] == FUNDS
