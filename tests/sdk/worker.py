"""A separate process using the SDK, for the restart and concurrent-replay
tests: ``python -m tests.sdk.worker <mode> <json settings>``.

Modes:
- ``work``: one decorated call; ``die`` picks where the process SIGKILLs
  itself: ``before_commit`` (the commit never leaves the process),
  ``after_commit`` (the server applied it, the answer is lost with the
  process), or ``none`` (a normal run and exit);
- ``replay``: a fresh client flushes the journal (optionally waiting until
  the wall-clock ``start_at`` first, so several workers replay together) and
  prints ``{"left": n, "requests": [...]}``;
- ``work_replay_die_before_event``: a fresh client replays the journal and
  SIGKILLs itself when the replay is about to send an event.

Only the journal on disk crosses from one process to the next.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import httpx
from cycles_sdk import CyclesClient, CyclesConfig, cycles

from tests.sdk.faults import FaultyTransport


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _die_on_answer(_request: httpx.Request, _response: httpx.Response) -> None:
    _die()


def _config(settings: dict[str, Any]) -> CyclesConfig:
    return CyclesConfig(
        base_url=settings["base_url"], api_key=settings["api_key"], tenant=settings["tenant"], workspace="w1",
        journal_dir=settings["journal_dir"], retry_initial_delay=0.01, retry_max_delay=0.05,
        retry_flush_timeout=float(settings.get("flush_timeout", 5)))


def work(settings: dict[str, Any]) -> None:
    die = settings["die"]
    transport = FaultyTransport()

    def before_send(request: httpx.Request) -> None:
        if die == "before_commit" and request.url.path.endswith("/commit"):
            _die()

    transport.before_send = before_send
    if die == "after_commit":
        transport.faults.append(("/commit", _die_on_answer))
    client = CyclesClient(_config(settings), transport=transport)

    @cycles(estimate=settings["estimate"], actual=settings["actual"], ttl_ms=settings.get("ttl_ms", 60_000),
            grace_period_ms=0, action_kind="llm.completion", action_name="worker", client=client)
    def guarded() -> str:
        time.sleep(float(settings.get("work_s", 0)))
        return "done"

    guarded()
    if die != "none":
        _die()  # not reached when the kill point was hit; and never flush at exit
    # die == "none": a normal exit, with the SDK's exit-time flush


def replay(settings: dict[str, Any]) -> None:
    transport = FaultyTransport()
    client = CyclesClient(_config(settings), transport=transport)
    start_at = float(settings.get("start_at", 0))
    time.sleep(max(0.0, start_at - time.time()))
    left = client.flush()
    requests = [{"path": s.path, "key": s.idempotency_key, "at_ms": s.at_ms} for s in transport.seen]
    print(json.dumps({"left": left, "requests": requests}), flush=True)
    os._exit(0)  # skip the exit-time flush: this process reports what it did itself


def work_replay_die_before_event(settings: dict[str, Any]) -> None:
    transport = FaultyTransport()

    def before_send(request: httpx.Request) -> None:
        if request.url.path.endswith("/v1/events"):
            _die()

    transport.before_send = before_send
    CyclesClient(_config(settings), transport=transport).flush()
    _die()


if __name__ == "__main__":
    {"work": work, "replay": replay, "work_replay_die_before_event": work_replay_die_before_event}[sys.argv[1]](json.loads(sys.argv[2]))
