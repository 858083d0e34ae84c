"""Soak (nightly; skipped unless CYCLES_SOAK_SECONDS is set, e.g. 600):
a steady request rate (CYCLES_SOAK_RATE per second, default 50) of reserves,
commits, releases, events and reservations left to expire, for the whole
duration, against a server of its own on the private cluster. Then:

- error rate 0: every answer is a protocol outcome (no 5xx, no transport error);
- memory flat: the server's resident memory at the end is within 1.5x of
  its value after the first minute;
- latency: the median of the last minute is within 1.5x of the first minute's;
- the ledger reconciles and every invariant holds;
- table growth is reported (rows and bytes per table), for retention review.
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.reliability.conftest import PrivatePg
from tests.reliability.invariants import all_violations
from tests.reliability.processes import ServerProcess, _children, report
from tests.reliability.workload import commit_body, event_body, provision, release_body, reserve_body

SECONDS = int(os.environ.get("CYCLES_SOAK_SECONDS", "0"))
RATE = int(os.environ.get("CYCLES_SOAK_RATE", "50"))
THREADS = 4
POLICY = "ALLOW_IF_AVAILABLE"
TABLES = ("reservations", "ledger_entries", "events", "idempotency_records", "audit_logs")


def _rss_kib(pid: int) -> int:
    """Resident memory of a process and its descendants, KiB."""
    total = 0
    for process in [pid, *_children(pid), *[g for c in _children(pid) for g in _children(c)]]:
        try:
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def _tables(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, list[int]]:
    return {table: [int(v) for v in conn.execute(  # type: ignore[union-attr]
        f"SELECT count(*), pg_total_relation_size('cycles.{table}') FROM cycles.{table}").fetchone()]
            for table in TABLES}


@pytest.mark.skipif(SECONDS <= 0, reason="soak runs only with CYCLES_SOAK_SECONDS set (nightly)")
@pytest.mark.timeout(0)
def test_soak_steady_rate(running_pg: PrivatePg) -> None:
    with psycopg.connect(running_pg.conninfo, autocommit=True) as conn:
        hierarchy = provision(conn, [10**15, 10**14, 10**13])
        tables_before = _tables(conn)
    server = ServerProcess(running_pg.conninfo, running_pg.log_dir / "soak.log")
    server.start()
    assert server.process is not None
    latencies: list[tuple[float, float]] = []
    bad: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    started = time.monotonic()

    def call(client: httpx.Client, path: str, body: dict[str, object]) -> httpx.Response | None:
        begin = time.monotonic()
        try:
            response = client.post(path, json=body, headers=hierarchy.tenant.headers())
        except httpx.TransportError as exc:
            with lock:
                bad.append(f"{path}: {exc!r}")
            return None
        with lock:
            latencies.append((begin - started, time.monotonic() - begin))
            if response.status_code not in (200, 201, 409):
                bad.append(f"{path}: {response.status_code} {response.text[:200]}")
        return response

    def client_loop(number: int) -> None:
        rng = random.Random(number)
        interval = THREADS / RATE
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            next_at = time.monotonic()
            while not stop.is_set():
                depth = rng.randint(1, 3)
                estimate = rng.randint(1, 1_000)
                short = rng.random() < 0.2
                created = call(client, "/v1/reservations", reserve_body(
                    hierarchy, depth, estimate, POLICY, **({"ttl_ms": 1_000, "grace_ms": 0} if short else {})))
                if created is not None and created.status_code == 200 and not short:
                    rid = created.json()["reservation_id"]
                    if rng.random() < 0.6:
                        call(client, f"/v1/reservations/{rid}/commit", commit_body(rng.randint(0, estimate)))
                    else:
                        call(client, f"/v1/reservations/{rid}/release", release_body())
                call(client, "/v1/events", event_body(hierarchy, depth, rng.randint(1, 50), POLICY))
                next_at += interval * 3
                time.sleep(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=client_loop, args=(n,), daemon=True) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    rss_first = 0
    try:
        while time.monotonic() - started < SECONDS:
            time.sleep(1)
            if not rss_first and time.monotonic() - started >= 60:
                rss_first = _rss_kib(server.process.pid)
        rss_last = _rss_kib(server.process.pid)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        server.stop()
    elapsed = time.monotonic() - started
    first = [d for at, d in latencies if at < 60]
    last = [d for at, d in latencies if at >= elapsed - 60]
    with psycopg.connect(running_pg.conninfo, autocommit=True) as conn:
        violations = all_violations(conn, hierarchy.tenant.tenant_id, POLICY)
        tables_after = _tables(conn)
    figures = {
        "seconds": round(elapsed), "requests": len(latencies), "errors": len(bad),
        "median_ms_first_minute": round(statistics.median(first) * 1000, 2),
        "median_ms_last_minute": round(statistics.median(last) * 1000, 2),
        "rss_kib_after_first_minute": rss_first, "rss_kib_at_end": rss_last,
        "tables_before": tables_before, "tables_after": tables_after}
    report("soak", figures)
    assert bad == [], bad[:20]
    assert violations == [], violations
    assert statistics.median(last) <= 1.5 * statistics.median(first), figures
    assert rss_last <= 1.5 * rss_first, figures
