"""Database trouble: PostgreSQL stopped, or a row lock held too long.

The server must answer a clean 503 in the spec's error shape (never hang,
never a 500, never a 2xx for work it did not do), /ready must say not ready
while /health stays up, and the server must recover on its own when the
database is back, without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.api.checks import assert_error
from tests.reliability.conftest import PrivatePg
from tests.reliability.processes import ServerProcess, report
from tests.reliability.workload import Hierarchy, provision, reserve_body

POLICY = "ALLOW_IF_AVAILABLE"
# A request must be answered (503) well before a client gives up.
CLIENT_TIMEOUT_S = 20


def _server(pg: PrivatePg, name: str, conninfo: str | None = None) -> ServerProcess:
    return ServerProcess(conninfo or pg.conninfo, pg.log_dir / f"{name}.log")


@pytest.fixture
def hierarchy(running_pg: PrivatePg) -> Hierarchy:
    with psycopg.connect(running_pg.conninfo, autocommit=True) as conn:
        return provision(conn, [1_000_000, 100_000])


@pytest.fixture
def server(running_pg: PrivatePg) -> Iterator[ServerProcess]:
    process = _server(running_pg, "trouble")
    process.start()
    yield process
    process.stop()
    assert "internal error" not in process.log(), process.log()


def _reserve(server: ServerProcess, hierarchy: Hierarchy, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/reservations", json=body, headers=hierarchy.tenant.headers(),
                      timeout=CLIENT_TIMEOUT_S)


def _reservations_with_key(pg: PrivatePg, key: str) -> int:
    with psycopg.connect(pg.conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM cycles.reservations WHERE idempotency_key = %s", (key,)).fetchone()
    assert row is not None
    return int(row[0])


def _wait_ready(server: ServerProcess) -> None:
    """/ready turns 200 by itself once the database is back."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(f"{server.base_url}/ready", timeout=10).status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError("the server did not become ready after the database came back")


def test_database_down_is_a_clean_503_and_the_server_recovers(
        running_pg: PrivatePg, server: ServerProcess, hierarchy: Hierarchy) -> None:
    assert _reserve(server, hierarchy, reserve_body(hierarchy, 2, 100, POLICY)).status_code == 200
    running_pg.cluster.stop("immediate")
    refused_keys, latencies = [], []
    try:
        health = httpx.get(f"{server.base_url}/health", timeout=CLIENT_TIMEOUT_S)
        assert (health.status_code, health.json()) == (200, {"status": "UP"})
        assert_error(httpx.get(f"{server.base_url}/ready", timeout=CLIENT_TIMEOUT_S), 503, "INTERNAL_ERROR")
        # The first request finds a broken pooled connection, the second none at all.
        for _ in range(2):
            body = reserve_body(hierarchy, 2, 100, POLICY)
            started = time.monotonic()
            assert_error(_reserve(server, hierarchy, body), 503, "INTERNAL_ERROR")
            latencies.append(round(time.monotonic() - started, 2))
            refused_keys.append(body["idempotency_key"])
        # Liveness does not depend on the database.
        assert httpx.get(f"{server.base_url}/health", timeout=CLIENT_TIMEOUT_S).status_code == 200
    finally:
        running_pg.cluster.start()
    back = time.monotonic()
    _wait_ready(server)
    ready_after = round(time.monotonic() - back, 2)
    body = reserve_body(hierarchy, 2, 100, POLICY)
    while (answer := _reserve(server, hierarchy, body)).status_code != 200:
        assert_error(answer, 503, "INTERNAL_ERROR")
        assert time.monotonic() - back < 120, "the server did not recover within 120 s of the database"
    report("database_down", {"503_latencies_s": latencies, "ready_after_s": ready_after,
                             "serving_after_s": round(time.monotonic() - back, 2)})
    # Nothing refused was done; the refused requests can now be retried.
    assert [_reservations_with_key(running_pg, key) for key in refused_keys] == [0, 0]


def test_server_starts_while_the_database_is_down(running_pg: PrivatePg, hierarchy: Hierarchy) -> None:
    running_pg.cluster.stop("fast")
    server = _server(running_pg, "starts-down")
    try:
        server.start()
        assert httpx.get(f"{server.base_url}/health", timeout=CLIENT_TIMEOUT_S).status_code == 200
        assert_error(httpx.get(f"{server.base_url}/ready", timeout=CLIENT_TIMEOUT_S), 503, "INTERNAL_ERROR")
        running_pg.cluster.start()
        _wait_ready(server)
        assert _reserve(server, hierarchy, reserve_body(hierarchy, 2, 100, POLICY)).status_code == 200
    finally:
        running_pg.cluster.start()
        server.stop()
    assert "internal error" not in server.log(), server.log()


def _hold_budget_lock(pg: PrivatePg, hierarchy: Hierarchy) -> psycopg.Connection[Any]:
    """A transaction holding the tenant budget's row lock (what a stuck
    client of the database would do)."""
    holder = psycopg.connect(pg.conninfo)
    holder.execute("SELECT 1 FROM cycles.budgets WHERE scope = %s FOR UPDATE", (hierarchy.tenant.scope,))
    return holder


@pytest.mark.parametrize("setting", ["lock_timeout", "statement_timeout"])
def test_lock_held_too_long_is_a_503_when_the_timeouts_are_set(
        setting: str, running_pg: PrivatePg, hierarchy: Hierarchy) -> None:
    """With lock_timeout or statement_timeout set (here through the
    connection string's options), a request stuck behind a lock is a 503
    that did nothing, and its retry succeeds once the lock is gone."""
    server = _server(running_pg, f"timeout-{setting}", f"{running_pg.conninfo} options='-c {setting}=300'")
    server.start()
    try:
        holder = _hold_budget_lock(running_pg, hierarchy)
        body = reserve_body(hierarchy, 2, 100, POLICY)
        try:
            assert_error(_reserve(server, hierarchy, body), 503, "INTERNAL_ERROR")
            assert _reservations_with_key(running_pg, body["idempotency_key"]) == 0
        finally:
            holder.rollback()
            holder.close()
        assert _reserve(server, hierarchy, body).status_code == 200
        assert _reservations_with_key(running_pg, body["idempotency_key"]) == 1
    finally:
        server.stop()
    assert "internal error" not in server.log(), server.log()


def test_lock_held_too_long_is_a_503_with_the_default_settings(
        running_pg: PrivatePg, server: ServerProcess, hierarchy: Hierarchy) -> None:
    holder = _hold_budget_lock(running_pg, hierarchy)
    try:
        response = httpx.post(f"{server.base_url}/v1/reservations", json=reserve_body(hierarchy, 2, 100, POLICY),
                              headers=hierarchy.tenant.headers(), timeout=8)
        assert_error(response, 503, "INTERNAL_ERROR")
    finally:
        holder.rollback()
        holder.close()


def test_database_down_is_a_503_within_5_seconds(
        running_pg: PrivatePg, server: ServerProcess, hierarchy: Hierarchy) -> None:
    running_pg.cluster.stop("immediate")
    try:
        for _ in range(2):
            response = httpx.post(f"{server.base_url}/v1/reservations", json=reserve_body(hierarchy, 2, 100, POLICY),
                                  headers=hierarchy.tenant.headers(), timeout=5)
            assert_error(response, 503, "INTERNAL_ERROR")
    finally:
        running_pg.cluster.start()


def test_a_deadlock_with_another_transaction_is_a_503_that_did_nothing(
        running_pg: PrivatePg, server: ServerProcess, hierarchy: Hierarchy) -> None:
    """A client of the database that takes the budget rows in the opposite
    order deadlocks with a reserve; PostgreSQL aborts the reserve's
    transaction (its backend waited first, so its deadlock check runs first):
    a 503 that did nothing, never a 500."""
    holder = psycopg.connect(running_pg.conninfo)
    holder.execute("SET deadlock_timeout = '60s'")
    holder.execute("SELECT 1 FROM cycles.budgets WHERE scope = %s FOR UPDATE", (hierarchy.scope(2),))
    body = reserve_body(hierarchy, 2, 100, POLICY)
    outcome: list[httpx.Response] = []
    request = threading.Thread(target=lambda: outcome.append(_reserve(server, hierarchy, body)))
    try:
        request.start()
        # The reserve holds the tenant row and waits for the workspace row.
        with psycopg.connect(running_pg.conninfo, autocommit=True) as watcher:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not watcher.execute(
                    "SELECT 1 FROM pg_catalog.pg_locks WHERE NOT granted AND locktype = 'transactionid'").fetchone():
                time.sleep(0.02)
        holder.execute("SELECT 1 FROM cycles.budgets WHERE scope = %s FOR UPDATE", (hierarchy.tenant.scope,))
        request.join(CLIENT_TIMEOUT_S)
    finally:
        holder.rollback()
        holder.close()
    [response] = outcome
    assert_error(response, 503, "INTERNAL_ERROR")
    assert _reservations_with_key(running_pg, body["idempotency_key"]) == 0
