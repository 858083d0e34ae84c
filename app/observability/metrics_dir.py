"""The directory where every server process writes its metric values.

The server runs several worker processes; Prometheus' client library sums
them at scrape time from files in PROMETHEUS_MULTIPROC_DIR. The variable must
be set before any worker imports the library (it chooses its storage at
import), so ``cycles serve`` prepares it before the workers start. Standard
library only: importing the metrics library here, in the parent, would fix
its storage before the variable is set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Final

ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


def prepare() -> Path:
    """An empty directory for this run's metric files, exported to the
    workers. One the operator named is emptied (values of an earlier run
    would be added to this run's); otherwise a fresh temporary one."""
    named = os.environ.get(ENV) or os.environ.get(ENV.lower())
    if named:
        path = Path(named)
        path.mkdir(parents=True, exist_ok=True)
        for entry in path.glob("*.db"):
            entry.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="cycles-metrics-"))
    os.environ[ENV] = str(path)
    return path


def remove(path: Path) -> None:
    """Delete a directory ``prepare`` created (not one the operator named)."""
    if path.name.startswith("cycles-metrics-") and path.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(path, ignore_errors=True)
