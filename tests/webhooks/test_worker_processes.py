"""`cycles worker` processes against a real receiver: two workers racing
never send a delivery twice, and a worker killed with SIGKILL mid-batch loses
nothing once a worker runs again (only its in-flight requests repeat, with
the same event id)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.webhooks.conftest import emit, subscribe
from tests.webhooks.receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent.parent
CYCLES = ROOT / ".venv" / "bin" / "cycles"


def start_worker(conninfo: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CYCLES_DATABASE_URL": conninfo, "CYCLES_DEV_MODE": "true",
           "CYCLES_WEBHOOK_ALLOW_PRIVATE": "true", "CYCLES_WEBHOOK_POLL_INTERVAL_MS": "50"}
    return subprocess.Popen([str(CYCLES), "worker"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def wait_until_settled(db: psycopg.Connection, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = db.execute("SELECT count(*) FILTER (WHERE status IN ('PENDING', 'RETRYING')),"
                         " count(*) FILTER (WHERE status = 'FAILED') FROM cycles.webhook_deliveries").fetchone()
        assert row is not None
        assert row[1] == 0, "no delivery to a healthy receiver fails"
        if row[0] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("deliveries still open")


def by_subscription(receiver: Receiver) -> dict[str, list[str]]:
    sent: dict[str, list[str]] = {}
    for request in receiver.received():
        sent.setdefault(request.path, []).append(request.headers["x-cycles-event-id"])
    return sent


def test_two_workers_racing_send_each_delivery_once_and_in_order(
        acme: psycopg.Connection, conninfo: str, receiver: Receiver,
        workers: list[subprocess.Popen[bytes]]) -> None:
    paths = ["/hook/a", "/hook/b", "/hook/c", "/hook/d"]
    for path in paths:
        subscribe(acme, receiver.url.replace("/hook", path))
    receiver.delay_s = 0.005
    workers.extend([start_worker(conninfo), start_worker(conninfo)])
    ids = emit(acme, 40)
    wait_until_settled(acme)
    sent = by_subscription(receiver)
    assert sorted(sent) == paths
    for path in paths:
        assert sent[path] == ids, f"{path}: every event once, in event order"


def test_sigkill_mid_batch_loses_nothing(
        acme: psycopg.Connection, conninfo: str, receiver: Receiver,
        workers: list[subprocess.Popen[bytes]]) -> None:
    paths = ["/hook/a", "/hook/b", "/hook/c"]
    for path in paths:
        subscribe(acme, receiver.url.replace("/hook", path))
    ids = emit(acme, 10)
    receiver.delay_s = 0.3  # keeps each batch in flight long enough to kill the worker inside it
    first = start_worker(conninfo)
    workers.append(first)
    receiver.wait_for(len(paths) + 1)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    in_flight_at_kill = len(receiver.received())
    receiver.delay_s = 0.0
    workers.append(start_worker(conninfo))
    wait_until_settled(acme)
    sent = by_subscription(receiver)
    duplicates = 0
    for path in paths:
        distinct = list(dict.fromkeys(sent[path]))
        assert distinct == ids, f"{path}: every committed event arrives, in order"
        duplicates += sum(n - 1 for n in Counter(sent[path]).values())
    # Only requests of the killed batch (at most one per subscription) repeat.
    assert duplicates <= len(paths) and in_flight_at_kill > 0
    history = acme.execute("SELECT count(*), count(*) FILTER (WHERE attempts = 1) FROM cycles.webhook_deliveries"
                           ).fetchone()
    assert history == (30, 30), "the killed attempt left no trace: it was rolled back"
