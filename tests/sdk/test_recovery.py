"""Settlement recovery in one process, against the real server, with faults
injected between the client and the server (tests/sdk/faults.py)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cycles_sdk import AsyncCyclesClient, CyclesClient, CyclesConfig, Journal, cycles, get_cycles_context
from cycles_sdk.journal import RECORD_VERSION, JournalRecord, legacy_filename, standard_filename

from tests.api.provision import Tenant, budget, funded_tenant, new_api_key, reservation_status
from tests.sdk.faults import AsyncFaultyTransport, FaultyTransport, lose_response, status

Config = Callable[..., CyclesConfig]


def _workspace(conn: Any, tenant: Tenant) -> tuple[int, int]:
    row = budget(conn, f"{tenant.scope}/workspace:w1")
    return row["spent"], row["reserved"]


def _guarded(client: CyclesClient, actual: int = 700, **options: Any) -> Callable[[], str]:
    @cycles(estimate=1_000, actual=actual, action_kind="llm.completion", action_name="gpt", client=client,
            **options)
    def work() -> str:
        return "done"

    return work


def _records(config: CyclesConfig) -> list[JournalRecord]:
    journal = Journal.for_config(config)
    if not journal.directory.is_dir():
        return []
    return [msgspec.json.decode(p.read_bytes(), type=JournalRecord) for p in journal.directory.glob("v2-*.json")]


# --- core ----------------------------------------------------------------------


def test_lost_commit_response_reuses_the_key(admin_conn: Any, make_config: Config) -> None:
    """CR-CORE-001 (sync)."""
    tenant = funded_tenant(admin_conn)
    transport = FaultyTransport(faults=[("/commit", lose_response)])
    with CyclesClient(make_config(tenant), transport=transport) as client:
        assert _guarded(client)() == "done"
    commits = transport.paths("/commit")
    assert len(commits) == 2 and commits[0].idempotency_key == commits[1].idempotency_key
    assert commits[0].body == commits[1].body
    assert _workspace(admin_conn, tenant) == (700, 0)
    assert _records(make_config(tenant)) == []


def test_journal_is_written_before_the_first_commit_leaves(admin_conn: Any, make_config: Config) -> None:
    """CR-DURABLE-001 (in process): at the moment the commit is sent, its record
    is already on disk, with the key the request carries; success removes it."""
    tenant = funded_tenant(admin_conn)
    config = make_config(tenant)
    on_disk: list[list[JournalRecord]] = []

    def look(request: httpx.Request) -> None:
        if request.url.path.endswith("/commit"):
            on_disk.append(_records(config))

    transport = FaultyTransport(before_send=look)
    with CyclesClient(config, transport=transport) as client:
        _guarded(client)()
    ((record,),) = on_disk
    assert record.idempotency_key == transport.paths("/commit")[0].idempotency_key
    assert record.commit["actual"] == {"unit": "USD_MICROCENTS", "amount": 700}
    assert _records(config) == []


def test_lost_commit_response_reuses_the_key_async(admin_conn: Any, make_config: Config) -> None:
    """CR-CORE-001 (async)."""
    tenant = funded_tenant(admin_conn)
    transport = AsyncFaultyTransport(faults=[("/commit", lose_response), ("/commit", lose_response)])

    async def scenario() -> None:
        async with AsyncCyclesClient(make_config(tenant), transport=transport) as client:

            @cycles(estimate=1_000, actual=300, client=client)
            async def work() -> int:
                await asyncio.sleep(0)
                return 7

            assert await work() == 7

    asyncio.run(scenario())
    commits = transport.paths("/commit")
    assert len(commits) == 3 and len({c.idempotency_key for c in commits}) == 1
    assert _workspace(admin_conn, tenant) == (300, 0)


def _refuse_extends(request: httpx.Request) -> None:
    if request.url.path.endswith("/extend"):
        raise httpx.ConnectError("refused", request=request)


def test_expired_commit_falls_back_to_an_event(admin_conn: Any, make_config: Config) -> None:
    """CR-CORE-002 (sync): the heartbeat cannot reach the server, the lease
    runs out during the work, the commit meets 410, the same key settles as an event."""
    tenant = funded_tenant(admin_conn)
    transport = FaultyTransport(before_send=_refuse_extends)
    with CyclesClient(make_config(tenant), transport=transport) as client:

        @cycles(estimate=1_000, actual=640, ttl_ms=1_000, grace_period_ms=0, action_kind="tool.search",
                action_name="web", action_tags=["a"], client=client)
        def slow() -> str:
            time.sleep(1.3)
            return "late"

        assert slow() == "late"
    (commit,) = transport.paths("/commit")
    (event,) = transport.paths("/v1/events")
    assert event.idempotency_key == commit.idempotency_key
    sent = msgspec.json.decode(event.body)
    assert sent["subject"] == {"tenant": tenant.tenant_id, "workspace": "w1"}
    assert sent["action"] == {"kind": "tool.search", "name": "web", "tags": ["a"]}
    assert sent["actual"] == {"unit": "USD_MICROCENTS", "amount": 640}
    assert sent["metadata"]["recovery_reason"] == "commit_after_reservation_expired"
    assert "overage_policy" not in sent
    assert _workspace(admin_conn, tenant) == (640, 0)
    assert _records(make_config(tenant)) == []


def test_expired_commit_falls_back_to_an_event_async(admin_conn: Any, make_config: Config) -> None:
    """CR-CORE-002 (async)."""
    tenant = funded_tenant(admin_conn)
    expired = httpx.Response(410, json={"error": "RESERVATION_EXPIRED", "message": "expired", "request_id": "r"})
    transport = AsyncFaultyTransport(intercepts=[("/commit", expired)])

    async def scenario() -> None:
        async with AsyncCyclesClient(make_config(tenant), transport=transport) as client:

            @cycles(estimate=1_000, actual=250, client=client)
            async def work() -> int:
                return 1

            await work()

    asyncio.run(scenario())
    (commit,) = transport.paths("/commit")
    (event,) = transport.paths("/v1/events")
    assert event.idempotency_key == commit.idempotency_key
    assert msgspec.json.decode(event.body)["actual"] == {"unit": "USD_MICROCENTS", "amount": 250}
    assert _workspace(admin_conn, tenant)[0] == 250


def test_heartbeat_transport_failure_is_observable_and_non_fatal(admin_conn: Any, make_config: Config,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """CR-CORE-003: the first extend's answer is lost; the retry uses the same
    key, the work goes on, the commit follows."""
    tenant = funded_tenant(admin_conn)
    transport = FaultyTransport(faults=[("/extend", lose_response)])
    failures: list[Any] = []
    with caplog.at_level(logging.WARNING, logger="cycles_sdk.heartbeat"), \
            CyclesClient(make_config(tenant), transport=transport) as client:

        @cycles(estimate=1_000, actual=900, ttl_ms=1_000, client=client)
        def work() -> str:
            context = get_cycles_context()
            assert context is not None
            deadline = time.monotonic() + 5
            while len(transport.paths("/extend")) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            failures.extend(context.heartbeat_failures)
            return "finished"

        assert work() == "finished"
    extends = transport.paths("/extend")
    assert extends[0].idempotency_key == extends[1].idempotency_key
    rid = failures[0].reservation_id
    assert failures[0].disposition == "retrying" and "ReadTimeout" in failures[0].error
    assert rid in caplog.text and "retrying" in caplog.text
    assert transport.paths("/commit") and reservation_status(admin_conn, rid) == "COMMITTED"
    assert _workspace(admin_conn, tenant) == (900, 0)


@pytest.mark.parametrize("bad", [
    status(200, {"status": "COMMITTED"}),  # missing charged
    status(202, {"status": "COMMITTED", "charged": {"unit": "USD_MICROCENTS", "amount": 700}}),
    status(200, {"status": "RELEASED", "charged": {"unit": "USD_MICROCENTS", "amount": 700}}),
], ids=["missing-field", "wrong-status-code", "wrong-lifecycle-status"])
def test_nonconformant_commit_success_is_retried_with_the_same_key(
        admin_conn: Any, make_config: Config, bad: Any) -> None:
    """CR-CORE-004: only a schema-valid 200 ends the settlement."""
    tenant = funded_tenant(admin_conn)
    transport = FaultyTransport(faults=[("/commit", bad)])
    with CyclesClient(make_config(tenant), transport=transport) as client:
        _guarded(client)()
    commits = transport.paths("/commit")
    assert len(commits) == 2 and commits[0].idempotency_key == commits[1].idempotency_key
    assert _workspace(admin_conn, tenant) == (700, 0)
    assert _records(make_config(tenant)) == []


def test_reserve_retries_a_lost_answer_with_the_same_key(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn)
    transport = FaultyTransport(faults=[("/v1/reservations", lose_response),
                                        ("/v1/reservations", status(503, {"error": "INTERNAL_ERROR"}))])
    with CyclesClient(make_config(tenant), transport=transport) as client:
        _guarded(client)()
    reserves = transport.paths("/v1/reservations")
    assert len(reserves) == 3 and len({r.idempotency_key for r in reserves}) == 1
    assert admin_conn.execute("SELECT count(*) FROM cycles.reservations WHERE tenant_id = %s",
                              (tenant.tenant_id,)).fetchone() == (1,)
    assert _workspace(admin_conn, tenant) == (700, 0)


# --- durable -------------------------------------------------------------------


def test_rate_limit_floor_survives_restart(admin_conn: Any, make_config: Config) -> None:
    """CR-DURABLE-003: a 429 with Retry-After is persisted as an absolute time;
    a fresh client does not retry before it."""
    tenant = funded_tenant(admin_conn)
    config = make_config(tenant, retry_max_attempts=1)
    limited = httpx.Response(429, json={"error": "LIMIT_EXCEEDED", "message": "slow down", "request_id": "r"},
                             headers={"Retry-After": "1"})
    transport = FaultyTransport(intercepts=[("/commit", limited)])
    with CyclesClient(config, transport=transport) as client:
        _guarded(client)()
    (record,) = _records(config)
    assert record.not_before_ms >= transport.paths("/commit")[0].at_ms + 900
    assert _workspace(admin_conn, tenant) == (0, 1_000)
    fresh_transport = FaultyTransport()
    with CyclesClient(make_config(tenant), transport=fresh_transport) as fresh:
        assert fresh.replay_journal() == 1  # not yet: the floor is in the future
        assert fresh_transport.seen == []
        assert fresh.flush(timeout=5) == 0
    (retry,) = fresh_transport.paths("/commit")
    assert retry.at_ms >= record.not_before_ms and retry.idempotency_key == record.idempotency_key
    assert _records(config) == []
    assert _workspace(admin_conn, tenant) == (700, 0)


def test_long_retry_after_is_left_to_the_journal(admin_conn: Any, make_config: Config) -> None:
    """The caller is not held for an hour-long Retry-After: the floor is
    persisted and the call returns; a bounded flush leaves the record intact."""
    tenant = funded_tenant(admin_conn)
    config = make_config(tenant)
    limited = httpx.Response(429, json={"error": "LIMIT_EXCEEDED", "message": "later", "request_id": "r"},
                             headers={"Retry-After": "3600"})
    transport = FaultyTransport(intercepts=[("/commit", limited)])
    with CyclesClient(config, transport=transport) as client:
        assert _guarded(client)() == "done"
        assert client.flush(timeout=1) == 1
    (record,) = _records(config)
    assert len(transport.paths("/commit")) == 1
    assert record.not_before_ms >= transport.paths("/commit")[0].at_ms + 3_599_000
    assert _workspace(admin_conn, tenant) == (0, 1_000)
    Journal.for_config(config).remove(record.reservation_id)  # nothing left for the exit-time flush


def test_tenant_journal_survives_key_rotation(admin_conn: Any, make_config: Config) -> None:
    """CR-DURABLE-004: the partition follows the tenant, and no key is stored."""
    tenant = funded_tenant(admin_conn)
    old = make_config(tenant, retry_max_attempts=1)
    transport = FaultyTransport(before_send=lambda r: _refuse(r, "/commit"))
    with CyclesClient(old, transport=transport) as client:
        _guarded(client)()
    journal = Journal.for_config(old)
    (path,) = journal.directory.glob("v2-*.json")
    assert tenant.api_key.encode() not in path.read_bytes()
    assert path.stat().st_mode & 0o777 == 0o600
    rotated = make_config(Tenant(tenant.tenant_id, new_api_key(admin_conn, tenant.tenant_id)))
    admin_conn.execute("SELECT cycles.revoke_api_key(p_key_id => k.key_id) FROM cycles.api_keys k"
                       " WHERE k.tenant_id = %s AND k.key_hash = cycles._hash_secret(%s)",
                       (tenant.tenant_id, tenant.api_key))
    with CyclesClient(rotated) as fresh:
        assert Journal.for_config(rotated).directory == journal.directory
        assert fresh.flush(timeout=5) == 0
    assert _workspace(admin_conn, tenant) == (700, 0)


def _refuse(request: httpx.Request, suffix: str) -> None:
    if request.url.path.endswith(suffix):
        raise httpx.ConnectError("refused", request=request)


def test_auth_failure_keeps_the_record_and_never_releases(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn)
    config = make_config(tenant)
    transport = FaultyTransport(faults=[
        ("/commit", status(401, {"error": "UNAUTHORIZED", "message": "no", "request_id": "r"}))])
    with CyclesClient(config, transport=transport) as client:
        _guarded(client)()
    (record,) = _records(config)
    assert len(transport.paths("/commit")) == 1 and transport.paths("/release") == []
    # A flush with a credential the server refuses tries once, keeps the record, and returns.
    refused = FaultyTransport()
    with CyclesClient(make_config(Tenant(tenant.tenant_id, "not-a-key")), transport=refused) as wrong:
        assert wrong.flush(timeout=30) == 1
    assert [s.idempotency_key for s in refused.paths("/commit")] == [record.idempotency_key]
    with CyclesClient(config) as fresh:
        assert fresh.flush(timeout=5) == 0
    assert _workspace(admin_conn, tenant) == (700, 0)
    assert reservation_status(admin_conn, record.reservation_id) == "COMMITTED"


def test_async_client_flushes_what_a_sync_client_left(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn)
    config = make_config(tenant, retry_max_attempts=2)
    with CyclesClient(config, transport=FaultyTransport(before_send=lambda r: _refuse(r, "/commit"))) as client:
        _guarded(client)()
    assert len(_records(config)) == 1 and _workspace(admin_conn, tenant) == (0, 1_000)

    async def scenario() -> int:
        async with AsyncCyclesClient(config) as fresh:
            return await fresh.flush(timeout=5)

    assert asyncio.run(scenario()) == 0
    assert _records(config) == [] and _workspace(admin_conn, tenant) == (700, 0)


def test_understood_rejection_removes_the_record(admin_conn: Any, make_config: Config) -> None:
    tenant = funded_tenant(admin_conn)
    config = make_config(tenant)
    transport = FaultyTransport()
    with CyclesClient(config, transport=transport) as client:
        _guarded(client, actual=2**62, overage_policy="REJECT")()  # far over budget
    assert len(transport.paths("/commit")) == 1  # not retried: the answer cannot change
    assert transport.paths("/v1/events") == [] and transport.paths("/release") == []
    assert _records(config) == []
    rid = admin_conn.execute("SELECT reservation_id FROM cycles.reservations WHERE tenant_id = %s",
                             (tenant.tenant_id,)).fetchone()[0]
    assert reservation_status(admin_conn, rid) == "ACTIVE"  # never released after the work ran


def _record(reservation_id: str, **changes: Any) -> JournalRecord:
    record = JournalRecord(version=RECORD_VERSION, reservation_id=reservation_id, mode="commit",
                           idempotency_key="k-" + reservation_id, commit={}, event={})
    for name, value in changes.items():
        setattr(record, name, value)
    return record


def test_corrupt_and_unsupported_records_are_quarantined(admin_conn: Any, make_config: Config,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """CR-DURABLE-005."""
    tenant = funded_tenant(admin_conn)
    config = make_config(tenant, retry_max_attempts=1)
    with CyclesClient(config, transport=FaultyTransport(before_send=lambda r: _refuse(r, "/commit"))) as client:
        _guarded(client)()
    journal = Journal.for_config(config)
    (valid,) = journal.pending()
    (journal.directory / standard_filename("corrupt")).write_bytes(b"{not json")
    unsupported = msgspec.json.encode(_record("future", version=99))
    (journal.directory / standard_filename("future")).write_bytes(unsupported)
    with caplog.at_level(logging.WARNING, logger="cycles_sdk.journal"), CyclesClient(config) as fresh:
        assert fresh.flush(timeout=5) == 0
        quarantined = fresh.journal.quarantined if fresh.journal else []
    assert sorted(p.name.split(".json")[0] for p in quarantined) == sorted(
        n.removesuffix(".json") for n in (standard_filename("corrupt"), standard_filename("future")))
    assert all(p.parent.name == "quarantine" and p.exists() for p in quarantined)
    assert "quarantined" in caplog.text and "unsupported record version 99" in caplog.text
    assert reservation_status(admin_conn, valid.reservation_id) == "COMMITTED"
    assert _workspace(admin_conn, tenant) == (700, 0)


def test_journal_filenames_and_legacy_migration(tmp_path: Path) -> None:
    """CR-DURABLE-007."""
    journal = Journal(tmp_path / "j")
    ids = ["a/b", "a_b", "a:b", "ümlaut/ß"]
    assert standard_filename("a/b") == "v2-" + hashlib.sha256(b"a/b").hexdigest() + ".json"
    assert standard_filename("ümlaut/ß") == "v2-" + hashlib.sha256("ümlaut/ß".encode()).hexdigest() + ".json"
    assert len({standard_filename(i) for i in ids}) == len(ids)
    assert legacy_filename("a/b") == legacy_filename("a_b") == legacy_filename("a:b") == "a_b.json"
    # A legacy file holding "a/b": asking for "a_b" must neither migrate nor delete it.
    journal.directory.mkdir(parents=True)
    legacy = journal.directory / "a_b.json"
    legacy.write_bytes(msgspec.json.encode(_record("a/b")))
    assert journal.load("a_b") is None and legacy.exists()
    migrated = journal.load("a/b")
    assert migrated is not None and migrated.reservation_id == "a/b"
    assert not legacy.exists() and journal.path_for("a/b").exists()
    # Distinct identifiers never share a file.
    for rid in ids:
        journal.write(_record(rid))
    assert sorted(r.reservation_id for r in journal.pending()) == sorted(ids)
