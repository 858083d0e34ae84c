"""The decorator keeps signatures for type checkers: mypy (strict) on a small
typed snippet reveals the original parameter and return types and rejects
wrong calls."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.api.conftest import ROOT

SNIPPET = '''
from __future__ import annotations

from cycles_sdk import AsyncCyclesClient, CyclesClient, CyclesConfig, cycles

client = CyclesClient(CyclesConfig(base_url="http://x", api_key="k"))
aclient = AsyncCyclesClient(CyclesConfig(base_url="http://x", api_key="k"))


@cycles(estimate=lambda prompt, *, n: len(prompt) * n, actual=lambda out: len(out), client=client)
def complete(prompt: str, *, n: int = 1) -> list[str]:
    return [prompt] * n


@cycles(estimate=10, client=aclient)
async def acomplete(prompt: str, temperature: float = 0.0) -> dict[str, int]:
    return {prompt: 1}


reveal_type(complete)
reveal_type(acomplete)
reveal_type(complete("a", n=2))
complete(1)
complete("a", m=2)
'''


def test_decorator_preserves_signatures_for_mypy(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file", "/dev/null",
         "--cache-dir", str(tmp_path / "cache"), str(snippet)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        # An editable install is an import hook mypy cannot follow: point it at the source.
        env={**os.environ, "MYPYPATH": str(ROOT / "sdk")})
    out = done.stdout
    # Older mypy versions qualify builtins ("builtins.str"), newer ones do not.
    revealed = [t.replace("builtins.", "") for t in re.findall(r'Revealed type is "([^"]+)"', out)]
    assert revealed == [
        "def (prompt: str, *, n: int =) -> list[str]",
        "def (prompt: str, temperature: float =) -> typing.Coroutine[Any, Any, dict[str, int]]",
        "list[str]",
    ], out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 2, out
    assert 'Argument 1 to "complete" has incompatible type "int"; expected "str"' in errors[0]
    assert 'Unexpected keyword argument "m" for "complete"' in errors[1]
