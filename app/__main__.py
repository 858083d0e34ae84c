"""``python3 -m app <command>``: the two set-up commands of the README.

Runs with the standard library only. If the project's virtual environment
(``.venv`` at the repository root) is missing or out of date it is created and
the project installed into it; then the command is re-executed inside it:

- ``python3 -m app serve`` starts the server (embedded PostgreSQL by default);
- ``python3 -m app test`` runs the whole test suite;
- anything else is passed to the ``cycles`` command.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".cycles-install-stamp"


def _install_fingerprint() -> str:
    """Changes whenever the declared dependencies change, so a stale venv is refreshed."""
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "sdk/pyproject.toml"):
        path = ROOT / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _ensure_venv() -> None:
    fingerprint = _install_fingerprint()
    if VENV_PYTHON.exists() and STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    if not VENV_PYTHON.exists():
        print(f"creating virtual environment in {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing the project and its test dependencies", file=sys.stderr)
    pip = [str(VENV_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    targets = ["-e", f"{ROOT}[test]"]
    if (ROOT / "sdk" / "pyproject.toml").exists():
        targets += ["-e", str(ROOT / "sdk")]
    subprocess.run([*pip, *targets], check=True)
    STAMP.write_text(fingerprint)


def main() -> None:
    args = sys.argv[1:] or ["--help"]
    _ensure_venv()
    if args[0] == "test":
        command = [str(VENV_PYTHON), "-m", "pytest", *args[1:]]
    else:
        command = [str(VENV / "bin" / "cycles"), *args]
    os.chdir(ROOT)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
