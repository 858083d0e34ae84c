"""A private PostgreSQL cluster: the embedded default, also used by the tests.

The cluster lives in one directory (``data/`` for the files, ``run/`` for the
Unix socket) and listens only on that socket, so nothing else on the machine
can reach it except its owner (and root). PostgreSQL refuses to run as root:
when we are root, the cluster is owned by and run as an unprivileged system
user (``postgres`` by default) through ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEBIAN_BINDIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


class PostgresNotInstalled(RuntimeError):
    """No PostgreSQL server binaries were found on this machine."""


INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found.\n"
    "Install them, e.g. on Debian/Ubuntu: sudo apt-get install -y postgresql\n"
    "(on macOS: brew install postgresql@16), or point CYCLES_PG_BINDIR at their directory,\n"
    "or set CYCLES_DATABASE_URL to use an existing database."
)


def find_bindir() -> Path:
    """Where initdb and pg_ctl live: $CYCLES_PG_BINDIR, pg_config --bindir, Debian's layout, PATH."""
    candidates: list[Path] = []
    if env := os.environ.get("CYCLES_PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.CalledProcessError):
            pass
    candidates.extend(DEBIAN_BINDIRS)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    raise PostgresNotInstalled(INSTALL_HINT)


@dataclass
class Cluster:
    """A PostgreSQL cluster in ``base_dir``, reached through its Unix socket."""

    base_dir: Path
    port: int = 5432
    run_as: str | None = None

    def __post_init__(self) -> None:
        self.base_dir = self.base_dir.resolve()
        if self.run_as is None and os.geteuid() == 0:
            self.run_as = os.environ.get("CYCLES_PG_USER", "postgres")
        self.bindir = find_bindir()

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "run"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def superuser(self) -> str:
        return "cycles"

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user={self.superuser} dbname={dbname}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{result.stdout}{result.stderr}")

    def _own(self, path: Path) -> None:
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """initdb on first use. Local socket connections are trusted: the socket
        directory is private to the cluster's owner."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for directory in (self.base_dir, self.socket_dir):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o700)
            self._own(directory)
        if self.initialized:
            return
        result = self._run(
            "initdb", "-D", str(self.data_dir), "-U", self.superuser, "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-instructions")
        self._check(result, "initdb")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# cycles: private cluster, reachable only through its socket\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "max_connections = 200\n"
                "shared_buffers = 256MB\n"
            )

    @property
    def running(self) -> bool:
        if not self.initialized:
            return False
        return self._run("pg_ctl", "status", "-D", str(self.data_dir)).returncode == 0

    def start(self, extra_options: str = "") -> None:
        self.init()
        if self.running:
            return
        self.log_file.touch(exist_ok=True)
        self._own(self.log_file)
        options = f"-p {self.port} {extra_options}".strip()
        result = self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(self.log_file),
            "-o", options)
        if result.returncode != 0:
            log_tail = self.log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl start failed:\n{result.stdout}{result.stderr}\n{log_tail}")

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._check(self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data_dir)), "pg_ctl stop")
