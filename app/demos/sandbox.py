"""What both demos share: a server to talk to (the one given, or a throwaway
embedded one), a fresh tenant provisioned through the public admin API, and
the command that shows the run's ledger rows."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.pgcluster import Cluster

READY_TIMEOUT_S = 60.0
USD_MICROCENTS_PER_DOLLAR = 100_000_000

# Everything the demos do with their tenant key: budgets are created with it
# (admin:write), calls are reserved and settled, balances read back.
DEMO_KEY_PERMISSIONS = [
    "reservations:create", "reservations:commit", "reservations:release", "reservations:extend",
    "reservations:list", "balances:read", "admin:read", "admin:write"]


class DemoError(Exception):
    """The demo cannot run (server unreachable, provisioning refused, ...)."""


@dataclass(frozen=True)
class Target:
    """The server a demo runs against. `data_dir` and `pid` (of the `cycles
    serve` process) are set for a throwaway server."""

    base_url: str
    admin_key: str
    data_dir: Path | None = None
    kept: bool = False
    pid: int | None = None


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    api_key: str


def dollars(microcents: int) -> str:
    """$1.23 for 123_000_000 USD_MICROCENTS (cents are whole in the demos)."""
    return f"${microcents / USD_MICROCENTS_PER_DOLLAR:,.2f}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cycles_command() -> list[str]:
    script = Path(sys.executable).parent / "cycles"
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def _wait_ready(process: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"the demo server exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise DemoError(f"the demo server was not ready after {READY_TIMEOUT_S:.0f}s:\n{log.read_text(errors='replace')}")


@contextmanager
def cycles_serve(env: dict[str, str], log: Path) -> Iterator[tuple[str, int]]:
    """`cycles serve` with `env` on a free port of 127.0.0.1, output to `log`;
    yields (base URL, pid) once /ready answers, and stops it on exit."""
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen([*_cycles_command(), "serve"], env={**env, "CYCLES_PORT": str(port),
                                   "CYCLES_HOST": "127.0.0.1"}, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        _wait_ready(process, base_url, log)
        yield base_url, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def throwaway_server(keep: bool = False, workers: int | None = 1) -> Iterator[Target]:
    """`cycles serve` on a new embedded cluster in a temporary directory,
    stopped (and, unless `keep`, deleted) on exit. Also what the benchmark
    suite measures, so it is started exactly as a user starts it."""
    base = Path(tempfile.mkdtemp(prefix="cycles-demo-"))
    if os.geteuid() == 0:
        # The cluster then runs as an unprivileged user, who must reach its files.
        base.chmod(0o755)
    data_dir = base / "data"
    admin_key = "cyc_admin_" + secrets.token_urlsafe(32)
    env = {name: value for name, value in os.environ.items() if name != "CYCLES_DATABASE_URL"}
    env.update(CYCLES_DATA_DIR=str(data_dir), CYCLES_ADMIN_API_KEY=admin_key, CYCLES_LOG_LEVEL="warning")
    if workers is not None:  # None: the server's default
        env["CYCLES_WORKERS"] = str(workers)
    try:
        with cycles_serve(env, base / "server.log") as (base_url, pid):
            yield Target(base_url, admin_key, data_dir, keep, pid)
    finally:
        cluster = Cluster(data_dir / "postgres")
        if (cluster.data_dir / "postmaster.pid").exists():
            cluster.stop("immediate")
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


@contextmanager
def demo_target(base_url: str | None, admin_key: str | None, keep: bool = False) -> Iterator[Target]:
    """The given server, or a throwaway one when no base URL is given."""
    if base_url is None:
        with throwaway_server(keep) as target:
            yield target
        return
    key = admin_key or os.environ.get("CYCLES_ADMIN_API_KEY")
    if not key:
        raise DemoError("--admin-key (or CYCLES_ADMIN_API_KEY) is required with --base-url")
    yield Target(base_url.rstrip("/"), key)


def _check(response: httpx.Response, what: str) -> httpx.Response:
    if response.status_code != 201:
        raise DemoError(f"could not {what}: HTTP {response.status_code} {response.text}")
    return response


def provision_tenant(target: Target, budgets: dict[str, int]) -> Tenant:
    """A new tenant demo-<random>, a key for it, and the USD_MICROCENTS budgets
    {scope suffix ("" for the tenant itself, or "/agent:x/..."): allocated}."""
    tenant_id = "demo-" + secrets.token_hex(4)
    admin = {"X-Admin-API-Key": target.admin_key}
    with httpx.Client(base_url=target.base_url, timeout=10) as http:
        try:
            _check(http.post("/v1/admin/tenants", headers=admin,
                             json={"tenant_id": tenant_id, "name": f"Demo {tenant_id}"}), "create the tenant")
            key = _check(http.post("/v1/admin/api-keys", headers=admin, json={
                "tenant_id": tenant_id, "name": "demo", "permissions": DEMO_KEY_PERMISSIONS}), "mint an API key")
            secret: str = key.json()["key_secret"]
            for suffix, amount in budgets.items():
                _check(http.post("/v1/admin/budgets", headers={"X-Cycles-API-Key": secret}, json={
                    "scope": f"tenant:{tenant_id}{suffix}", "unit": "USD_MICROCENTS",
                    "allocated": {"amount": amount, "unit": "USD_MICROCENTS"}}), f"create the budget {suffix or 'tenant'}")
        except httpx.TransportError as exc:
            raise DemoError(f"cannot reach {target.base_url}: {exc}") from exc
    return Tenant(tenant_id, secret)


def ledger_query(tenant_id: str) -> str:
    return ("SELECT entry_id, scope, operation, spent_delta, reserved_delta, action_name "
            f"FROM cycles.ledger_entries WHERE tenant_id = '{tenant_id}' ORDER BY entry_id")


def ledger_hint(target: Target, tenant_id: str) -> str:
    """Where the run's ledger rows can be seen, honestly for each kind of server."""
    command = f'cycles psql -c "{ledger_query(tenant_id)}"'
    if target.data_dir is None:
        return f"Ledger rows of this run (where the server's CYCLES_DATA_DIR / CYCLES_DATABASE_URL are set):\n  {command}"
    if target.kept:
        return f"Ledger rows of this run (the demo's data was kept):\n  CYCLES_DATA_DIR={target.data_dir} {command}"
    return ("Ledger rows of this run: the throwaway server and its data are gone now; run the demo with --keep\n"
            f"to keep them, or with --base-url against your own server, then:\n  {command}")
