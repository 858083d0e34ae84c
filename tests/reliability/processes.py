"""Processes the crash tests kill: a PostgreSQL cluster of their own (with
the durable defaults: fsync and synchronous_commit on) and a server process
they can SIGKILL and start again on the same port."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from app.pgcluster import Cluster
from tests import server


def _children(pid: int) -> list[int]:
    """Direct children of a process, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def crash_postgres(cluster: Cluster) -> None:
    """SIGKILL the postmaster and every process it started, at once: no
    shutdown checkpoint, no flush; what survives is what was on disk (WAL)."""
    postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    victims = [postmaster, *_children(postmaster)]
    for pid in victims:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in victims):
        if time.monotonic() > deadline:
            raise RuntimeError(f"postgres processes survived SIGKILL: {victims}")
        time.sleep(0.05)
    # A killed postmaster nobody has reaped yet is a zombie, which pg_ctl
    # and the next postmaster take for a live one. After a real crash the
    # process is simply gone: so are its lock files here.
    (cluster.data_dir / "postmaster.pid").unlink(missing_ok=True)
    (cluster.socket_dir / f".s.PGSQL.{cluster.port}.lock").unlink(missing_ok=True)


@contextmanager
def private_cluster(base: Path) -> Iterator[Cluster]:
    """A cluster of its own on a free port, with PostgreSQL's durable
    defaults (unlike the session cluster, which trades durability for speed)."""
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    cluster = Cluster(base / "cluster", port=server.free_port())
    cluster.start(os.environ.get("CYCLES_CRASH_PG_OPTIONS", ""))
    try:
        yield cluster
    finally:
        cluster.stop("immediate")


class ServerProcess(server.ServerProcess):
    """The real server (one worker) on a fixed port, restartable; sweeping
    every 200 ms."""

    def __init__(self, conninfo: str, log_file: Path, **env: str) -> None:
        super().__init__(conninfo, log_file, **{
            "CYCLES_SWEEP_INTERVAL_MS": "200", "CYCLES_POOL_MIN_SIZE": "2", "CYCLES_POOL_MAX_SIZE": "8", **env})


def report(name: str, figures: dict[str, Any]) -> None:
    """Prints a test's measured figures (pytest -s) and appends them as a
    JSON line to the file named by CYCLES_RELIABILITY_REPORT, if set."""
    line = json.dumps({"test": name, **figures})
    print(line)
    target = os.environ.get("CYCLES_RELIABILITY_REPORT")
    if target:
        with open(target, "a") as out:
            out.write(line + "\n")
