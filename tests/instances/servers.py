"""Server instances for the multi-instance tests: granian with several
worker processes (as `cycles serve` runs it) in a process group of its own,
so one instance can be SIGKILLed whole; and a reserve/commit load spread
over the instances that are still up."""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.api.provision import Tenant, reserve_body
from tests.server import ServerProcess


class Instance(ServerProcess):
    """One server instance: granian with `workers` worker processes and a
    small pool each."""

    def __init__(self, conninfo: str, log_file: Path, admin_key: str, workers: int = 2, **env: str) -> None:
        super().__init__(conninfo, log_file, admin_key, workers, **{
            "CYCLES_POOL_MIN_SIZE": "1", "CYCLES_POOL_MAX_SIZE": "4", **env})


def new_admin_key() -> str:
    return "admin-" + secrets.token_hex(16)


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    reserved: list[str] = field(default_factory=list)
    committed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + self.transport_errors


def run_load(instances: list[Instance], tenant: Tenant, stop: threading.Event, result: LoadResult,
             commit_share: float, ttl_ms: int, seed: int) -> None:
    """One client thread: reserve (short TTL, no grace) on a live instance,
    commit a share of them at once, leave the rest to expire; until stop."""
    rng = random.Random(seed)
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            live = [instance for instance in instances if instance.alive]
            if not live:
                return
            instance = rng.choice(live)
            body = reserve_body(tenant, amount=1000, ttl_ms=ttl_ms, grace_period_ms=0)
            try:
                response = client.post(f"{instance.base_url}/v1/reservations", json=body,
                                       headers=tenant.headers())
                with result.lock:
                    result.statuses[response.status_code] += 1
                if response.status_code != 200:
                    continue
                reservation_id: str = response.json()["reservation_id"]
                with result.lock:
                    result.reserved.append(reservation_id)
                if rng.random() >= commit_share:
                    continue
                commit: dict[str, Any] = {"idempotency_key": f"c-{reservation_id}",
                                          "actual": {"unit": "USD_MICROCENTS", "amount": 600}}
                response = client.post(f"{instance.base_url}/v1/reservations/{reservation_id}/commit",
                                       json=commit, headers=tenant.headers())
                with result.lock:
                    result.statuses[response.status_code] += 1
                    if response.status_code == 200:
                        result.committed.append(reservation_id)
            except httpx.TransportError:
                # The instance was killed under this request: its outcome is
                # unknown to the client, and the database decides.
                with result.lock:
                    result.transport_errors += 1
                time.sleep(0.01)
