"""Process-level recovery: a worker process is SIGKILLed between its work and
its commit (or in the middle of settling); a fresh process replays the journal
and the spend is applied exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from cycles_sdk import CyclesConfig, Journal
from cycles_sdk.journal import JournalRecord

from tests.api.conftest import ROOT, ApiServer
from tests.api.provision import Tenant, budget, funded_tenant

ESTIMATE, ACTUAL = 5_000, 1_234


def _run(mode: str, settings: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.sdk.worker", mode, json.dumps(settings)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _settings(api_server: ApiServer, tenant: Tenant, journal_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"base_url": api_server.base_url, "api_key": tenant.api_key, "tenant": tenant.tenant_id,
            "journal_dir": str(journal_dir), "estimate": ESTIMATE, "actual": ACTUAL, **extra}


def _journal(settings: dict[str, Any]) -> Journal:
    return Journal.for_config(CyclesConfig(base_url=settings["base_url"], api_key=settings["api_key"],
                                           tenant=settings["tenant"], journal_dir=settings["journal_dir"]))


def _records(journal: Journal) -> list[JournalRecord]:
    if not journal.directory.is_dir():
        return []
    return [msgspec.json.decode(p.read_bytes(), type=JournalRecord)
            for p in sorted(journal.directory.glob("v2-*.json"))]


def _workspace(conn: Any, tenant: Tenant) -> tuple[int, int]:
    row = budget(conn, f"{tenant.scope}/workspace:w1")
    return row["spent"], row["reserved"]


def _replay(settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    done = _run("replay", {**settings, **extra})
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_killed_before_first_commit_then_replayed_once(api_server: ApiServer, admin_conn: Any,
                                                       tmp_path: Path) -> None:
    """CR-DURABLE-001: the journal write precedes the first commit request."""
    tenant = funded_tenant(admin_conn)
    settings = _settings(api_server, tenant, tmp_path, die="before_commit")
    died = _run("work", settings)
    assert died.returncode == -9, died.stderr
    (record,) = _records(_journal(settings))  # written before the request could leave
    assert record.mode == "commit" and record.commit["actual"]["amount"] == ACTUAL
    assert _workspace(admin_conn, tenant) == (0, ESTIMATE)  # nothing settled yet
    result = _replay(settings)
    assert result["left"] == 0 and _records(_journal(settings)) == []
    commits = [r for r in result["requests"] if r["path"].endswith("/commit")]
    assert [r["key"] for r in commits] == [record.idempotency_key]
    assert _workspace(admin_conn, tenant) == (ACTUAL, 0)
    # A second restart finds nothing to do and changes nothing.
    assert _replay(settings)["requests"] == []
    assert _workspace(admin_conn, tenant) == (ACTUAL, 0)


def test_next_start_replays_without_being_asked(api_server: ApiServer, admin_conn: Any, tmp_path: Path) -> None:
    """The next process that guards a call with the same server and tenant
    settles what the killed one left behind (background replay at start,
    bounded flush at exit), without any explicit flush."""
    tenant = funded_tenant(admin_conn)
    settings = _settings(api_server, tenant, tmp_path, die="before_commit")
    assert _run("work", settings).returncode == -9
    (record,) = _records(_journal(settings))
    normal = _run("work", {**settings, "die": "none"})
    assert normal.returncode == 0, normal.stderr
    assert _records(_journal(settings)) == []
    assert admin_conn.execute("SELECT status FROM cycles.reservations WHERE reservation_id = %s",
                              (record.reservation_id,)).fetchone() == ("COMMITTED",)
    assert _workspace(admin_conn, tenant) == (2 * ACTUAL, 0)


def test_killed_after_commit_reached_the_server_is_applied_once(api_server: ApiServer, admin_conn: Any,
                                                                tmp_path: Path) -> None:
    tenant = funded_tenant(admin_conn)
    settings = _settings(api_server, tenant, tmp_path, die="after_commit")
    assert _run("work", settings).returncode == -9
    (record,) = _records(_journal(settings))
    assert _workspace(admin_conn, tenant) == (ACTUAL, 0)  # applied, but the answer was lost
    result = _replay(settings)
    assert result["left"] == 0
    assert [r["key"] for r in result["requests"]] == [record.idempotency_key]
    assert _workspace(admin_conn, tenant) == (ACTUAL, 0)  # the replay is the same commit, not a second


def test_expired_replay_switches_durably_to_event_mode(api_server: ApiServer, admin_conn: Any,
                                                       tmp_path: Path) -> None:
    """CR-DURABLE-002: restart, commit meets 410, event mode is persisted, the
    process dies before the event, the next restart sends the event once."""
    tenant = funded_tenant(admin_conn)
    settings = _settings(api_server, tenant, tmp_path, die="before_commit", ttl_ms=1_000)
    assert _run("work", settings).returncode == -9
    (record,) = _records(_journal(settings))
    time.sleep(1.3)  # the reservation (ttl 1 s, no grace) expires
    dying = _run("work_replay_die_before_event", settings)
    assert dying.returncode == -9, dying.stderr
    (switched,) = _records(_journal(settings))
    assert switched.mode == "event" and switched.idempotency_key == record.idempotency_key
    assert _workspace(admin_conn, tenant)[0] == 0
    result = _replay(settings)
    assert result["left"] == 0 and _records(_journal(settings)) == []
    assert [(r["path"], r["key"]) for r in result["requests"]] == [("/v1/events", record.idempotency_key)]
    assert _workspace(admin_conn, tenant) == (ACTUAL, 0)


def test_concurrent_replay_by_two_processes_is_exactly_once(api_server: ApiServer, admin_conn: Any,
                                                            tmp_path: Path) -> None:
    """CR-DURABLE-006: two independent worker processes replay the same record together."""
    tenant = funded_tenant(admin_conn)
    settings = _settings(api_server, tenant, tmp_path, die="before_commit")
    assert _run("work", settings).returncode == -9
    (record,) = _records(_journal(settings))
    start_at = time.time() + 1.0
    command = [sys.executable, "-m", "tests.sdk.worker", "replay", json.dumps({**settings, "start_at": start_at})]
    workers = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}) for _ in range(2)]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    keys = {r["key"] for result in results for r in result["requests"]}
    assert keys == {record.idempotency_key}
    assert all(result["left"] == 0 for result in results)
    assert _records(_journal(settings)) == []
    assert _workspace(admin_conn, tenant) == (ACTUAL, 0)
    assert admin_conn.execute("SELECT status, committed FROM cycles.reservations WHERE reservation_id = %s",
                              (record.reservation_id,)).fetchone() == ("COMMITTED", ACTUAL)
