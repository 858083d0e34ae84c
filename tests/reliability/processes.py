"""Processes the crash tests kill: a PostgreSQL cluster of their own (with
the durable defaults: fsync and synchronous_commit on) and a server process
they can SIGKILL and start again on the same port."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from app.pgcluster import Cluster
from tests.server import GRANIAN, ROOT, free_port, wait_until_healthy


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
    cluster = Cluster(base / "cluster", port=free_port())
    cluster.start(os.environ.get("CYCLES_CRASH_PG_OPTIONS", ""))
    try:
        yield cluster
    finally:
        cluster.stop("immediate")


class ServerProcess:
    """The real server (granian, one worker) on a fixed port, restartable."""

    def __init__(self, conninfo: str, log_file: Path, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.admin_key = "admin-" + secrets.token_hex(16)
        self.log_file = log_file
        self.environment = {
            **os.environ, "CYCLES_DATABASE_URL": conninfo, "CYCLES_ADMIN_API_KEY": self.admin_key,
            "CYCLES_SWEEP_INTERVAL_MS": "200", "CYCLES_POOL_MIN_SIZE": "2", "CYCLES_POOL_MAX_SIZE": "8",
            "CYCLES_WEBHOOKS_DISABLED": "true", **env}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [str(GRANIAN), "--interface", "asgi", "--factory", "app.main:create_app",
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                cwd=ROOT, env=self.environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until_healthy(self.process, self.base_url, self.log_file)

    def kill(self) -> None:
        """SIGKILL the server's whole process group (granian and its worker)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


def report(name: str, figures: dict[str, Any]) -> None:
    """Prints a test's measured figures (pytest -s) and appends them as a
    JSON line to the file named by CYCLES_RELIABILITY_REPORT, if set."""
    line = json.dumps({"test": name, **figures})
    print(line)
    target = os.environ.get("CYCLES_RELIABILITY_REPORT")
    if target:
        with open(target, "a") as out:
            out.write(line + "\n")
