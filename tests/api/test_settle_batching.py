"""Settle batching through the real server (CYCLES_SETTLE_BATCHING on):
concurrent commits and releases of one key are applied in shared
transactions, and every request still gets exactly its own outcome, response
and idempotency.

Batches are made to form without timing assertions: the tenant budget's row
is held locked by the test while the requests arrive, so the first waits in
the database and the others queue in the server behind it. Whether requests
shared a transaction is read from the database: a trigger records the
top-level transaction of every reservation row a settlement writes."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from threading import Thread
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb
from runcycles import BudgetExceededError, CyclesClient, CyclesConfig, cycles

from app.config import ConfigError, Settings
from app.pgcluster import Cluster
from tests.api.checks import COMMIT_KEYS, RELEASE_KEYS, assert_error, assert_ok
from tests.api.provision import Tenant, budget, create_budget, new_tenant, reserve_body, unique
from tests.server import ApiServer, fresh_database, running_server

Conn = psycopg.Connection[Any]
Call = tuple[Tenant, str, dict[str, Any]]


@pytest.fixture(scope="module")
def server(pg_cluster: Cluster) -> Iterator[ApiServer]:
    conninfo = fresh_database(pg_cluster, "cycles_settle_batching")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.settled (reservation_id text, top_xid bigint)")
        conn.execute("""
            CREATE FUNCTION public.record_xid() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO public.settled VALUES (NEW.reservation_id, txid_current());
                RETURN NEW;
            END;
            $$""")
        conn.execute("CREATE TRIGGER record_xid AFTER UPDATE OF status ON cycles.reservations"
                     " FOR EACH ROW EXECUTE FUNCTION public.record_xid()")
        # Failures that only a batch meets (the marked commit, made inside
        # cycles.settle_batch), and that are not refusals: one the server
        # reads as "unavailable", one it does not.
        conn.execute("""
            CREATE FUNCTION public.fail_batches() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF current_query() LIKE '%%settle_batch%%' THEN
                    IF NEW.committed_metadata ->> 'fail' = 'deadlock' THEN
                        RAISE EXCEPTION 'simulated deadlock' USING ERRCODE = '40P01';
                    ELSIF NEW.committed_metadata ->> 'fail' = 'unavailable' THEN
                        RAISE EXCEPTION 'simulated lock timeout' USING ERRCODE = '55P03';
                    END IF;
                END IF;
                RETURN NEW;
            END;
            $$""")
        conn.execute("CREATE TRIGGER fail_batches BEFORE UPDATE ON cycles.reservations"
                     " FOR EACH ROW EXECUTE FUNCTION public.fail_batches()")
    with running_server(conninfo, CYCLES_SETTLE_BATCHING="true", CYCLES_LOCK_TIMEOUT_MS="60000") as api:
        yield api


@pytest.fixture(scope="module")
def conn(server: ApiServer) -> Iterator[Conn]:
    with psycopg.connect(server.conninfo, autocommit=True) as connection:
        yield connection


def shared_tenant(conn: Conn) -> Tenant:
    """A tenant whose one budget (tenant level) every settlement locks."""
    tenant = new_tenant(conn)
    create_budget(conn, tenant.scope, 1_000_000)
    return tenant


def reserve(conn: Conn, tenant: Tenant, amount: int) -> str:
    row = conn.execute("SELECT cycles.reserve(%s, %s) ->> 'reservation_id'",
                       (tenant.api_key, Jsonb(reserve_body(tenant, amount, subject=tenant.subject())))).fetchone()
    assert row is not None
    return str(row[0])


def commit(tenant: Tenant, rid: str, amount: int, **fields: Any) -> Call:
    return tenant, f"/v1/reservations/{rid}/commit", {
        "idempotency_key": unique("c-"), "actual": {"unit": "USD_MICROCENTS", "amount": amount}, **fields}


def release(tenant: Tenant, rid: str, **fields: Any) -> Call:
    return tenant, f"/v1/reservations/{rid}/release", {"idempotency_key": unique("l-"), **fields}


def post_held(server: ApiServer, watcher: Conn, scope: str, calls: list[Call]) -> list[httpx.Response]:
    """Sends the first call while the budget row is held locked, and the
    others once it waits for the lock: they queue in the server behind it.
    A moment later the lock is let go and they are applied as a batch."""
    limits = httpx.Limits(max_connections=len(calls), max_keepalive_connections=0)
    with psycopg.connect(server.conninfo) as holder, \
            httpx.Client(base_url=server.base_url, timeout=120, limits=limits) as client, \
            ThreadPoolExecutor(max_workers=len(calls)) as pool:
        holder.execute("SELECT 1 FROM cycles.budgets WHERE scope = %s FOR UPDATE", (scope,))

        def post(call: Call) -> Future[httpx.Response]:
            tenant, path, body = call
            return pool.submit(client.post, path, json=body, headers=tenant.headers())

        futures = [post(calls[0])]
        deadline = time.monotonic() + 30
        while watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%%cycles.%%'").fetchone() == (0,):
            assert time.monotonic() < deadline, "the first settlement never waited for the budget"
            time.sleep(0.02)
        futures += [post(call) for call in calls[1:]]
        time.sleep(0.5)
        holder.rollback()
        return [future.result() for future in futures]


def transactions_of(conn: Conn, reservation_ids: list[str]) -> int:
    row = conn.execute("SELECT count(DISTINCT top_xid) FROM public.settled WHERE reservation_id = ANY (%s)",
                       (reservation_ids,)).fetchone()
    assert row is not None
    return int(row[0])


def ledger_problems(conn: Conn, tenant: Tenant) -> list[Any]:
    return [
        *conn.execute("SELECT * FROM cycles.verify_ledger() WHERE tenant_id = %s", (tenant.tenant_id,)).fetchall(),
        *conn.execute("SELECT * FROM cycles.verify_ledger_chain()").fetchall()]


def comparable(response: httpx.Response) -> dict[str, Any]:
    document: dict[str, Any] = response.json()
    return {k: v for k, v in document.items() if k not in ("request_id", "trace_id")}


def test_concurrent_settlements_are_batched_and_each_keeps_its_outcome(server: ApiServer, conn: Conn) -> None:
    tenant = shared_tenant(conn)
    ids = [reserve(conn, tenant, 100) for _ in range(30)]
    calls = [commit(tenant, rid, n) if n % 3 else release(tenant, rid) for n, rid in enumerate(ids)]
    responses = post_held(server, conn, tenant.scope, calls)

    for n, response in enumerate(responses):
        if n % 3:
            document = assert_ok(response, 200, COMMIT_KEYS, {"status", "charged", "balances"})
            assert (document["status"], document["charged"]["amount"], document["released"]["amount"]) == \
                ("COMMITTED", n, 100 - n)
        else:
            document = assert_ok(response, 200, RELEASE_KEYS, {"status", "released", "balances"})
            assert (document["status"], document["released"]["amount"]) == ("RELEASED", 100)
    # Each request's own context is on its ledger rows.
    rows = conn.execute("SELECT reservation_id, request_id FROM cycles.ledger_entries"
                        " WHERE reservation_id = ANY (%s) AND operation IN ('COMMIT', 'RELEASE')", (ids,)).fetchall()
    assert dict(rows) == {rid: r.headers["x-request-id"] for rid, r in zip(ids, responses, strict=True)}
    assert budget(conn, tenant.scope)["reserved"] == 0
    assert budget(conn, tenant.scope)["spent"] == sum(n for n in range(30) if n % 3)
    assert ledger_problems(conn, tenant) == []
    # The 30 settlements were written by fewer transactions than requests.
    assert transactions_of(conn, ids) < 30


def test_repeats_and_refusals_in_a_batch_are_the_single_calls_outcomes(server: ApiServer, conn: Conn) -> None:
    tenant = shared_tenant(conn)
    stranger = shared_tenant(conn)
    ids = [reserve(conn, tenant, 100) for _ in range(4)]
    foreign = reserve(conn, stranger, 100)
    first = commit(tenant, ids[0], 60)
    clash = (tenant, first[1], {**first[2], "actual": {"unit": "USD_MICROCENTS", "amount": 61}})
    calls = [
        commit(tenant, ids[1], 10),
        first,
        first,                                      # the same request again: replays
        clash,                                      # same key, other body: IDEMPOTENCY_MISMATCH
        commit(tenant, ids[0], 60),                 # another key: RESERVATION_FINALIZED
        release(tenant, ids[2]),
        commit(tenant, "rsv_" + "0" * 32, 1),       # NOT_FOUND
        commit(tenant, foreign, 1),                 # FORBIDDEN
        commit(tenant, ids[3], 5, actual={"unit": "TOKENS", "amount": 5}),   # UNIT_MISMATCH
    ]
    responses = post_held(server, conn, tenant.scope, calls)
    assert [r.status_code for r in responses] == [200, 200, 200, 409, 409, 200, 404, 403, 400]
    assert comparable(responses[2]) == comparable(responses[1])
    assert_error(responses[3], 409, "IDEMPOTENCY_MISMATCH")
    assert_error(responses[4], 409, "RESERVATION_FINALIZED")
    assert_error(responses[6], 404, "NOT_FOUND")
    assert_error(responses[7], 403, "FORBIDDEN")
    assert_error(responses[8], 400, "UNIT_MISMATCH")
    # The same refusals made alone, afterwards, are the same documents.
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        for n in (3, 4, 6, 7, 8):
            tenant_n, path, body = calls[n]
            alone = client.post(path, json=body, headers=tenant_n.headers())
            assert comparable(alone) == comparable(responses[n])
        replay = client.post(first[1], json=first[2], headers=tenant.headers())
        assert comparable(replay) == comparable(responses[1])
    assert conn.execute("SELECT status FROM cycles.reservations WHERE reservation_id = ANY (%s)"
                        " ORDER BY array_position(%s, reservation_id)", (ids, ids)).fetchall() == \
        [("COMMITTED",), ("COMMITTED",), ("RELEASED",), ("ACTIVE",)]
    assert budget(conn, tenant.scope)["spent"] == 70
    assert ledger_problems(conn, tenant) == []


def test_a_batch_that_fails_otherwise_is_made_again_one_by_one(server: ApiServer, conn: Conn) -> None:
    tenant = shared_tenant(conn)
    ids = [reserve(conn, tenant, 10) for _ in range(6)]
    calls = [commit(tenant, rid, 4) for rid in ids]
    calls[3][2]["metadata"] = {"fail": "deadlock"}
    responses = post_held(server, conn, tenant.scope, calls)
    # The batch rolled back as a whole; each request was then made alone and
    # got its own outcome.
    assert [r.status_code for r in responses] == [200] * 6
    assert "settle batch of 5 failed" in server.log_file.read_text()
    assert transactions_of(conn, ids) == 6
    assert budget(conn, tenant.scope)["spent"] == 24
    assert ledger_problems(conn, tenant) == []


def test_an_unavailable_database_fails_every_request_of_the_batch(server: ApiServer, conn: Conn) -> None:
    tenant = shared_tenant(conn)
    ids = [reserve(conn, tenant, 10) for _ in range(5)]
    calls = [commit(tenant, rid, 4) for rid in ids]
    calls[2][2]["metadata"] = {"fail": "unavailable"}
    responses = post_held(server, conn, tenant.scope, calls)
    # The first went alone; the batch behind it failed as a whole, with the
    # 503 a single call gets, and changed nothing.
    assert responses[0].status_code == 200
    for response in responses[1:]:
        assert_error(response, 503, "INTERNAL_ERROR")
    assert conn.execute("SELECT count(*) FROM cycles.reservations WHERE reservation_id = ANY (%s)"
                        " AND status = 'ACTIVE'", (ids,)).fetchone() == (4,)
    assert budget(conn, tenant.scope)["spent"] == 4
    assert ledger_problems(conn, tenant) == []


def test_the_official_client_works_unchanged(server: ApiServer, conn: Conn) -> None:
    tenant = new_tenant(conn)
    create_budget(conn, tenant.scope, 10_000)
    create_budget(conn, f"{tenant.scope}/workspace:w1", 10_000)
    config = CyclesConfig(base_url=server.base_url, api_key=tenant.api_key, tenant=tenant.tenant_id,
                          workspace="w1", retry_enabled=False, journal_enabled=False)
    results: Counter[str] = Counter()

    def work() -> None:
        with CyclesClient(config) as client:

            @cycles(estimate=1_000, actual=600, action_kind="llm.completion", action_name="gpt-4o", client=client)
            def call() -> str:
                return "done"

            for _ in range(3):
                try:
                    results[call()] += 1
                except BudgetExceededError:
                    results["exceeded"] += 1

    threads = [Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["done"] + results["exceeded"] == 24 and results["done"] >= 10
    assert budget(conn, tenant.scope)["spent"] == 600 * results["done"]
    assert budget(conn, tenant.scope)["reserved"] == 0
    assert ledger_problems(conn, tenant) == []


def test_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CYCLES_SETTLE_BATCHING", raising=False)
    assert Settings.from_env().settle_batching is True
    monkeypatch.setenv("CYCLES_SETTLE_BATCHING", "false")
    assert Settings.from_env().settle_batching is False
    monkeypatch.setenv("CYCLES_SETTLE_BATCHING", "maybe")
    with pytest.raises(ConfigError, match="CYCLES_SETTLE_BATCHING"):
        Settings.from_env()
