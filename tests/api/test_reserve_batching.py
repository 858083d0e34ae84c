"""Reserve batching through the real server (CYCLES_RESERVE_BATCHING on):
concurrent reserves of one key are applied in shared transactions, and
every request still gets exactly its own outcome, response and idempotency.

Batches are made to form without timing assertions: the tenant budget's row
is held locked by the test while the requests arrive, so the first waits in
the database and the others queue in the server behind it."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from runcycles import BudgetExceededError, CyclesClient, CyclesConfig, cycles

from app.config import ConfigError, Settings
from app.pgcluster import Cluster
from tests.api.checks import CREATE_KEYS, assert_error, assert_ok
from tests.api.provision import Tenant, budget, create_budget, new_tenant, reserve_body, unique
from tests.server import ApiServer, fresh_database, running_server

Conn = psycopg.Connection[Any]


@pytest.fixture(scope="module")
def server(pg_cluster: Cluster) -> Iterator[ApiServer]:
    conninfo = fresh_database(pg_cluster, "cycles_batching")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # The top-level transaction of every reservation written (a batch's
        # items are subtransactions of one).
        conn.execute("CREATE TABLE public.written (reservation_id text, top_xid bigint)")
        conn.execute("""
            CREATE FUNCTION public.record_xid() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO public.written VALUES (NEW.reservation_id, txid_current());
                RETURN NEW;
            END;
            $$""")
        conn.execute("CREATE TRIGGER record_xid AFTER INSERT ON cycles.reservations"
                     " FOR EACH ROW EXECUTE FUNCTION public.record_xid()")
        # A failure that only a batch meets (several reservations written by
        # one statement, one of them marked), and that is not a refusal.
        conn.execute("""
            CREATE FUNCTION public.fail_batches() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF (SELECT count(*) FROM inserted) > 1
                   AND EXISTS (SELECT FROM inserted WHERE idempotency_key LIKE 'fails-in-batch-%') THEN
                    RAISE EXCEPTION 'simulated deadlock' USING ERRCODE = '40P01';
                END IF;
                RETURN NULL;
            END;
            $$""")
        conn.execute("CREATE TRIGGER fail_batches AFTER INSERT ON cycles.reservations"
                     " REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION public.fail_batches()")
    # The tests hold a budget's lock while requests pile up behind it: on a
    # busy machine that can take longer than the default lock timeout.
    with running_server(conninfo, CYCLES_RESERVE_BATCHING="true", CYCLES_LOCK_TIMEOUT_MS="60000") as api:
        yield api


@pytest.fixture(scope="module")
def conn(server: ApiServer) -> Iterator[Conn]:
    with psycopg.connect(server.conninfo, autocommit=True) as connection:
        yield connection


def shared_tenant(conn: Conn, allocated: int) -> Tenant:
    """A tenant whose one budget (tenant level) every request charges."""
    tenant = new_tenant(conn)
    create_budget(conn, tenant.scope, allocated)
    return tenant


def post_held(server: ApiServer, watcher: Conn, scope: str,
              calls: list[tuple[Tenant, dict[str, Any]]]) -> list[httpx.Response]:
    """Sends the first call while the budget row is held locked, and the
    others once it waits for the lock: they queue in the server behind it.
    A moment later the lock is let go and they are applied as a batch."""
    limits = httpx.Limits(max_connections=len(calls), max_keepalive_connections=0)
    with psycopg.connect(server.conninfo) as holder, \
            httpx.Client(base_url=server.base_url, timeout=120, limits=limits) as client, \
            ThreadPoolExecutor(max_workers=len(calls)) as pool:
        holder.execute("SELECT 1 FROM cycles.budgets WHERE scope = %s FOR UPDATE", (scope,))

        def post(call: tuple[Tenant, dict[str, Any]]) -> Future[httpx.Response]:
            tenant, body = call
            return pool.submit(client.post, "/v1/reservations", json=body, headers=tenant.headers())

        futures = [post(calls[0])]
        deadline = time.monotonic() + 30
        while watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%%cycles.reserve%%'").fetchone() == (0,):
            assert time.monotonic() < deadline, "the first reserve never waited for the budget"
            time.sleep(0.02)
        futures += [post(call) for call in calls[1:]]
        time.sleep(0.5)
        holder.rollback()
        return [future.result() for future in futures]


def post_all(server: ApiServer, calls: list[tuple[Tenant, dict[str, Any]]]) -> list[httpx.Response]:
    """Sends every reserve at once, each from its own thread and connection."""
    limits = httpx.Limits(max_connections=len(calls), max_keepalive_connections=0)
    with httpx.Client(base_url=server.base_url, timeout=120, limits=limits) as client, \
            ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(client.post, "/v1/reservations", json=body, headers=tenant.headers())
                   for tenant, body in calls]
        return [future.result() for future in futures]


def transactions_of(conn: Conn, reservation_ids: list[str]) -> int:
    row = conn.execute("SELECT count(DISTINCT top_xid) FROM public.written WHERE reservation_id = ANY (%s)",
                       (reservation_ids,)).fetchone()
    assert row is not None
    return int(row[0])


def ledger_problems(conn: Conn, tenant: Tenant) -> list[Any]:
    return [
        *conn.execute("SELECT * FROM cycles.verify_ledger() WHERE tenant_id = %s", (tenant.tenant_id,)).fetchall(),
        *conn.execute("SELECT * FROM cycles.verify_ledger_chain()").fetchall()]


def test_concurrent_reserves_on_one_budget_are_batched_and_each_keeps_its_outcome(
        server: ApiServer, conn: Conn) -> None:
    tenant = shared_tenant(conn, 40 * 25)
    bodies = [reserve_body(tenant, 25, subject=tenant.subject(agent=f"a{n}")) for n in range(60)]
    responses = post_held(server, conn, tenant.scope, [(tenant, body) for body in bodies])

    granted = [(body, r) for body, r in zip(bodies, responses, strict=True) if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(granted) == 40 and len(refused) == 20
    for response in refused:
        document = assert_error(response, 409, "BUDGET_EXCEEDED")
        assert document["details"]["scope"] == tenant.scope and document["details"]["requested"] == 25
    ids = []
    for body, response in granted:
        document = assert_ok(response, 200, CREATE_KEYS, {"decision", "reservation_id", "affected_scopes"})
        ids.append(document["reservation_id"])
        row = conn.execute("SELECT idempotency_key, estimate, status, request_id FROM cycles.reservations"
                           " WHERE reservation_id = %s", (document["reservation_id"],)).fetchone()
        assert row == (body["idempotency_key"], 25, "ACTIVE", response.headers["x-request-id"])
    assert len(set(ids)) == 40
    # Nothing else was written: no reservation or record of a refused request.
    assert conn.execute("SELECT count(*) FROM cycles.reservations WHERE tenant_id = %s",
                        (tenant.tenant_id,)).fetchone() == (40,)
    assert conn.execute("SELECT count(*) FROM cycles.idempotency_records WHERE tenant_id = %s",
                        (tenant.tenant_id,)).fetchone() == (40,)
    assert (budget(conn, tenant.scope)["reserved"], budget(conn, tenant.scope)["remaining"]) == (1000, 0)
    assert ledger_problems(conn, tenant) == []
    # The 40 reservations were written by fewer transactions than requests.
    assert transactions_of(conn, ids) < 40


def test_idempotent_retries_inside_and_across_batches_replay_the_same_body(server: ApiServer, conn: Conn) -> None:
    tenant = shared_tenant(conn, 1_000_000)
    repeated = reserve_body(tenant, 10)
    clashing_key = unique("idem-")
    first, second = reserve_body(tenant, 10, idempotency_key=clashing_key), \
        reserve_body(tenant, 20, idempotency_key=clashing_key)
    others = [reserve_body(tenant, 1) for _ in range(6)]
    calls = [(tenant, body) for body in [repeated, *others[:3], repeated, first, second, *others[3:], repeated]]
    responses = post_held(server, conn, tenant.scope, calls)

    assert all(r.status_code == 200 for i, r in enumerate(responses) if calls[i][1] is not second
               and calls[i][1] is not first)
    replays = [r.json() for i, r in enumerate(responses) if calls[i][1] is repeated]
    assert len({doc["reservation_id"] for doc in replays}) == 1

    def without_ttl(document: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in document.items() if k != "remaining_ttl_ms"}  # recomputed on replay

    assert all(without_ttl(doc) == without_ttl(replays[0]) for doc in replays)
    # Same key, different body: one of the pair wins, the other is refused.
    pair = [responses[calls.index((tenant, first))], responses[calls.index((tenant, second))]]
    assert sorted(r.status_code for r in pair) == [200, 409]
    assert_error(next(r for r in pair if r.status_code == 409), 409, "IDEMPOTENCY_MISMATCH")

    # Retried later (a batch of its own), every success replays its body.
    retried = post_all(server, [(tenant, repeated), (tenant, others[0]), (tenant, others[5])])
    originals = [replays[0], responses[1].json(), responses[-2].json()]
    assert [without_ttl(r.json()) for r in retried] == [without_ttl(doc) for doc in originals]
    granted = 10 + 6 + (10 if pair[0].status_code == 200 else 20)
    assert budget(conn, tenant.scope)["reserved"] == granted
    assert conn.execute("SELECT count(*) FROM cycles.reservations WHERE tenant_id = %s",
                        (tenant.tenant_id,)).fetchone() == (8,)
    assert ledger_problems(conn, tenant) == []


def test_refusals_in_a_batch_are_the_single_calls_errors(server: ApiServer, conn: Conn) -> None:
    tenant = shared_tenant(conn, 1_000_000)
    stranger = new_tenant(conn)
    foreign = reserve_body(tenant, 5, subject={"tenant": stranger.tenant_id})   # FORBIDDEN
    wrong_unit = reserve_body(tenant, 5, unit="TOKENS", subject=tenant.subject())  # UNIT_MISMATCH
    good = [reserve_body(tenant, 5, subject=tenant.subject()) for _ in range(4)]
    responses = post_held(server, conn, tenant.scope,
                          [(tenant, body) for body in [*good[:2], foreign, wrong_unit, *good[2:]]])
    alone = post_all(server, [(tenant, {**foreign, "idempotency_key": unique("idem-")})])[0]
    alone_unit = post_all(server, [(tenant, {**wrong_unit, "idempotency_key": unique("idem-")})])[0]

    assert [r.status_code for r in responses] == [200, 200, 403, 400, 200, 200]

    def comparable(response: httpx.Response) -> dict[str, Any]:
        document: dict[str, Any] = response.json()
        return {k: v for k, v in document.items() if k not in ("request_id", "trace_id")}

    assert_error(responses[2], 403, "FORBIDDEN")
    assert_error(responses[3], 400, "UNIT_MISMATCH")
    assert comparable(responses[2]) == comparable(alone)
    assert comparable(responses[3]) == comparable(alone_unit)
    assert budget(conn, tenant.scope)["reserved"] == 20


def test_a_batch_that_fails_otherwise_is_made_again_one_by_one(server: ApiServer, conn: Conn) -> None:
    tenant = shared_tenant(conn, 1_000_000)
    bodies = [reserve_body(tenant, 2, subject=tenant.subject()) for _ in range(6)]
    bodies[3]["idempotency_key"] = unique("fails-in-batch-")
    responses = post_held(server, conn, tenant.scope, [(tenant, body) for body in bodies])
    # The batch rolled back as a whole; each request was then made alone and
    # got its own outcome.
    assert [r.status_code for r in responses] == [200] * 6
    assert "making its requests one by one" in server.log_file.read_text()
    ids = [r.json()["reservation_id"] for r in responses]
    assert transactions_of(conn, ids) == 6
    assert budget(conn, tenant.scope)["reserved"] == 12
    assert conn.execute("SELECT count(*) FROM cycles.reservations WHERE tenant_id = %s",
                        (tenant.tenant_id,)).fetchone() == (6,)
    assert ledger_problems(conn, tenant) == []


def test_dry_runs_are_not_batched_and_change_nothing(server: ApiServer, conn: Conn) -> None:
    tenant = shared_tenant(conn, 1_000)
    bodies = [reserve_body(tenant, 600, subject=tenant.subject(), dry_run=True) for _ in range(4)]
    responses = post_all(server, [(tenant, body) for body in bodies])
    assert [r.json()["decision"] for r in responses] == ["ALLOW"] * 4
    assert budget(conn, tenant.scope)["reserved"] == 0


def test_clients_that_go_away_while_queued_leave_the_others_intact(server: ApiServer, conn: Conn) -> None:
    tenant = shared_tenant(conn, 1_000_000)
    patient = [reserve_body(tenant, 3, subject=tenant.subject()) for _ in range(12)]
    hasty = [reserve_body(tenant, 7, subject=tenant.subject()) for _ in range(6)]
    outcomes: dict[str, Any] = {}

    def impatient(body: dict[str, Any]) -> None:
        try:
            httpx.post(f"{server.base_url}/v1/reservations", json=body, headers=tenant.headers(), timeout=0.2)
        except httpx.TimeoutException as exc:
            outcomes[body["idempotency_key"]] = exc

    threads = [threading.Thread(target=impatient, args=(body,)) for body in hasty]
    for thread in threads:
        thread.start()
    responses = post_held(server, conn, tenant.scope, [(tenant, body) for body in patient])
    for thread in threads:
        thread.join()
    assert [r.status_code for r in responses] == [200] * 12
    ids = [r.json()["reservation_id"] for r in responses]
    assert conn.execute("SELECT count(*) FROM cycles.reservations WHERE reservation_id = ANY (%s)",
                        (ids,)).fetchone() == (12,)
    # Each impatient request was applied whole or not at all.
    hasty_count = conn.execute(
        "SELECT count(*) FROM cycles.reservations WHERE tenant_id = %s AND estimate = 7",
        (tenant.tenant_id,)).fetchone()
    assert hasty_count is not None
    assert budget(conn, tenant.scope)["reserved"] == 12 * 3 + 7 * int(hasty_count[0])
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

            try:
                results[call()] += 1
            except BudgetExceededError:
                results["exceeded"] += 1

    threads = [threading.Thread(target=work) for _ in range(14)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each call holds 1,000 until it commits 600: at least 10 succeed.
    assert results["done"] + results["exceeded"] == 14 and results["done"] >= 10
    assert budget(conn, tenant.scope)["spent"] == 600 * results["done"]
    assert budget(conn, tenant.scope)["reserved"] == 0
    assert ledger_problems(conn, tenant) == []


def test_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CYCLES_RESERVE_BATCHING", raising=False)
    assert Settings.from_env().reserve_batching is True
    monkeypatch.setenv("CYCLES_RESERVE_BATCHING", "false")
    assert Settings.from_env().reserve_batching is False
    monkeypatch.setenv("CYCLES_RESERVE_BATCHING", "maybe")
    with pytest.raises(ConfigError, match="CYCLES_RESERVE_BATCHING"):
        Settings.from_env()
