"""Crash durability: under steady load from several client threads, the
server process is SIGKILLed (and started again), or PostgreSQL is (the
postmaster and all its processes at once, then crash recovery), several
times per test. Afterwards:

- every request that got a 2xx is in the database exactly once (the client
  log against the tables);
- every request that got no answer, or a 5xx, is retried with its
  idempotency key: it answers 2xx, and is then present exactly once (it was
  either replayed or applied now, never twice);
- every request that never reached the server (connection refused) left
  nothing behind;
- the ledger reconciles and every invariant of the concurrency tests holds.

Runs per test: CYCLES_CRASH_RUNS (default 3). The figures of the last run
are printed (pytest -s) and appended, as JSON lines, to the file named by
CYCLES_RELIABILITY_REPORT when set.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections.abc import Callable

import httpx
import psycopg
import pytest

from tests.api.provision import USD, Conn
from tests.reliability.conftest import PrivatePg
from tests.reliability.invariants import all_violations, log_violations
from tests.reliability.processes import ServerProcess, crash_postgres, report
from tests.reliability.workload import (
    Call,
    CallLog,
    Hierarchy,
    commit_body,
    event_body,
    fund_body,
    provision,
    release_body,
    reserve_body,
)

RUNS = int(os.environ.get("CYCLES_CRASH_RUNS", "3"))
CLIENTS = 4
POLICY = "ALLOW_IF_AVAILABLE"
ALLOCATIONS = [10**12, 10**11, 10**10]


class Load:
    """CLIENTS threads, each repeating: reserve, then commit or release it (or
    leave it ACTIVE), a direct event, and now and then an admin CREDIT.
    Every call is logged; a call whose connection was refused is marked as
    never sent."""

    def __init__(self, server: ServerProcess, hierarchy: Hierarchy) -> None:
        self.server = server
        self.hierarchy = hierarchy
        self.log = CallLog()
        self.not_sent: list[Call] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _send(self, client: httpx.Client, call: Call) -> Call:
        headers = {"X-Admin-API-Key": self.server.admin_key} if call.admin else self.hierarchy.tenant.headers()
        try:
            response = client.post(call.path, json=call.body, params=call.params, headers=headers)
        except httpx.ConnectError:
            self.not_sent.append(call)
            time.sleep(0.02)
            return call
        except httpx.TransportError:
            # Sent, but no answer: the server died with the request in flight.
            self.log.add(call)
            return call
        call.status = response.status_code
        call.answer = response.json()
        if call.kind == "reserve" and call.ok:
            call.reservation_id = call.answer["reservation_id"]
        self.log.add(call)
        if call.status is not None and call.status >= 500:
            time.sleep(0.02)
        return call

    def _client(self, number: int) -> None:
        rng = random.Random(number)
        hierarchy = self.hierarchy
        with httpx.Client(base_url=self.server.base_url, timeout=30) as client:
            for step in itertools.count():
                if self.stop.is_set():
                    return
                depth = rng.randint(1, 3)
                estimate = rng.randint(1, 10_000)
                reserved = self._send(client, Call(
                    "reserve", "/v1/reservations", reserve_body(hierarchy, depth, estimate, POLICY),
                    scopes=hierarchy.charged_scopes(depth)))
                if reserved.ok:
                    rid = reserved.reservation_id
                    choice = rng.random()
                    if choice < 0.5:
                        self._send(client, Call("commit", f"/v1/reservations/{rid}/commit",
                                                commit_body(rng.randint(0, estimate)), reservation_id=rid))
                    elif choice < 0.8:
                        self._send(client, Call("release", f"/v1/reservations/{rid}/release", release_body(),
                                                reservation_id=rid))
                self._send(client, Call("event", "/v1/events", event_body(hierarchy, depth, rng.randint(1, 500), POLICY),
                                        scopes=hierarchy.charged_scopes(depth)))
                if step % 4 == number % 4:
                    level = rng.randint(1, 3)
                    self._send(client, Call("fund", "/v1/admin/budgets/fund", fund_body("CREDIT", rng.randint(1, 99)),
                                            params={"scope": hierarchy.scope(level), "unit": USD,
                                                    "tenant_id": hierarchy.tenant.tenant_id}, admin=True))


def _retry_uncertain(server: ServerProcess, load: Load) -> list[str]:
    """Retries every call that got no answer or a 5xx, with the same key;
    each must now answer 2xx. Returns the failures."""
    failures = []
    uncertain = [c for c in load.log.calls if c.status is None or c.status >= 500]
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for call in uncertain:
            retry = Call(call.kind, call.path, call.body, call.params, reservation_id=call.reservation_id,
                         scopes=call.scopes, admin=call.admin)
            load._send(client, retry)
            if not retry.ok:
                failures.append(f"retry of an unanswered {call.kind} got {retry.status}: {retry.answer}")
    return failures


def _exactly_once(conn: Conn, load: Load) -> list[str]:
    """No idempotency key took effect twice, and calls that never reached the
    server left nothing."""
    tenant_id = load.hierarchy.tenant.tenant_id
    found = [f"reservation key used twice: {row}" for row in conn.execute("""
        SELECT idempotency_key, count(*) FROM cycles.reservations WHERE tenant_id = %s
        GROUP BY idempotency_key HAVING count(*) > 1""", (tenant_id,)).fetchall()]
    found += [f"event or funding applied twice: {row}" for row in conn.execute("""
        SELECT operation, idempotency_key, scope, count(*) FROM cycles.ledger_entries
        WHERE tenant_id = %s AND operation IN ('EVENT', 'CREDIT')
        GROUP BY operation, idempotency_key, scope HAVING count(*) > 1""", (tenant_id,)).fetchall()]
    keys = [c.body["idempotency_key"] for c in load.not_sent]
    found += [f"a request that was never sent took effect: {row}" for row in conn.execute("""
        SELECT idempotency_key FROM cycles.reservations WHERE tenant_id = %(t)s AND idempotency_key = ANY (%(k)s)
        UNION ALL
        SELECT idempotency_key FROM cycles.ledger_entries WHERE tenant_id = %(t)s AND idempotency_key = ANY (%(k)s)
        """, {"t": tenant_id, "k": keys}).fetchall()]
    return found


def _crash_test(env: PrivatePg, name: str, crash: Callable[[ServerProcess], None]) -> None:
    server = ServerProcess(env.conninfo, env.log_dir / f"{name}.log")
    with psycopg.connect(env.conninfo, autocommit=True) as conn:
        hierarchy = provision(conn, ALLOCATIONS)
    server.start()
    try:
        with Load(server, hierarchy) as load:
            for _ in range(RUNS):
                time.sleep(random.uniform(0.4, 0.9))
                crash(server)
            time.sleep(0.5)
        retry_failures = _retry_uncertain(server, load)
    finally:
        server.stop()
    with psycopg.connect(env.conninfo, autocommit=True) as conn:
        tenant_id = hierarchy.tenant.tenant_id
        initial = dict(zip(hierarchy.scopes, ALLOCATIONS, strict=True))
        violations = (retry_failures + _exactly_once(conn, load) + log_violations(conn, tenant_id, load.log, initial)
                      + all_violations(conn, tenant_id, POLICY))
    acknowledged = sum(1 for c in load.log.calls if c.ok)
    uncertain = sum(1 for c in load.log.calls if c.status is None or c.status >= 500)
    report(name, {"crashes": RUNS, "acknowledged": acknowledged, "unanswered_then_retried": uncertain,
                   "never_sent": len(load.not_sent), "violations": len(violations)})
    assert violations == [], "\n".join(violations)
    assert acknowledged > 0
    assert "internal error" not in server.log(), server.log()


@pytest.mark.timeout(300)
def test_server_sigkill_under_load_loses_nothing(running_pg: PrivatePg) -> None:
    def crash(server: ServerProcess) -> None:
        server.kill()
        server.start()

    _crash_test(running_pg, "server_sigkill", crash)


@pytest.mark.timeout(300)
def test_postgres_crash_under_load_loses_nothing(running_pg: PrivatePg) -> None:
    def crash(server: ServerProcess) -> None:
        crash_postgres(running_pg.cluster)
        time.sleep(0.2)
        running_pg.cluster.start()

    _crash_test(running_pg, "postgres_sigkill", crash)
