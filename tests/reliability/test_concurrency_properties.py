"""Property-based concurrency against the real server.

Hypothesis draws a budget hierarchy (1 to 6 levels, random allocations and
overdraft limits) and a program per worker (2 to 8 workers; 16 in the long
profile) of reserves,
commits (under, at and over the estimate), releases (by the tenant and by
the admin on its behalf), extensions, direct events, admin funding (CREDIT
and DEBIT) and same-key retries; settlements
pick any reservation created so far, by any worker, so workers race on the
same reservations. The workers run at once, each on its own connection.
Then every reservation made with a 1 s TTL and no grace is raced to its
deadline: commits and releases sent while the sweeper expires it.

After each run the invariants of tests.reliability.invariants must hold,
both on what is stored (SQL) and against what the server acknowledged.
One test per overage policy. Examples per test: the hypothesis profile
(CYCLES_RELIABILITY_PROFILE=long for hundreds).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.api.provision import Conn
from tests.reliability.conftest import PROFILE, PROPERTY_TIMEOUT_S
from tests.reliability.invariants import all_violations, log_violations, sweep
from tests.reliability.processes import report
from tests.reliability.workload import (
    POLICIES,
    Call,
    CallLog,
    Hierarchy,
    commit_body,
    event_body,
    extend_body,
    fund_body,
    provision,
    release_body,
    reserve_body,
    send,
)
from tests.server import ApiServer

SHORT_TTL_MS = 1_000
# Concurrent workers per run: up to 8 in CI, 16 in the long profile.
MAX_WORKERS = 16 if PROFILE == "long" else 8
# Figures of the last test's runs, reported when it ends.
TOTALS: Counter[str] = Counter()
# What a run may answer: successes and the protocol's refusals. Anything else
# (400 on a well-formed request, 5xx, no answer) is a failure.
PROTOCOL_STATUSES = {200, 201, 409, 410}

amounts = st.integers(1, 60_000)
ratios = st.sampled_from([0.0, 0.5, 1.0, 1.5, 3.0])
refs = st.integers(0, 63)
subject_depths = st.integers(1, 6)

reserves = st.tuples(st.just("reserve"), subject_depths, amounts, st.booleans())
operations = st.one_of(
    reserves, reserves, reserves,
    st.tuples(st.just("commit"), refs, ratios),
    st.tuples(st.just("release"), refs),
    st.tuples(st.just("admin_release"), refs),
    st.tuples(st.just("extend"), refs),
    st.tuples(st.just("event"), subject_depths, amounts),
    st.tuples(st.just("fund"), st.integers(1, 6), st.sampled_from(["CREDIT", "DEBIT"]), amounts),
    st.tuples(st.just("retry")),
)


@st.composite
def scenarios(draw: st.DrawFn, policy: str) -> dict[str, Any]:
    depth = draw(st.integers(1, 6))
    # Mostly enough for most calls; one run in four is tight (some levels
    # nearly or entirely empty), where refusals and overage dominate.
    tight = draw(st.sampled_from([False, False, False, True]))
    allocation = (st.one_of(st.integers(0, 150_000), st.just(0)) if tight
                  else st.integers(300_000, 2_000_000))
    allocations = draw(st.lists(allocation, min_size=depth, max_size=depth))
    overdrafts = (draw(st.lists(st.sampled_from([0, 1, 20_000, 100_000]), min_size=depth, max_size=depth))
                  if policy == "ALLOW_WITH_OVERDRAFT" else [0] * depth)
    workers = draw(st.integers(2, MAX_WORKERS))
    programs = draw(st.lists(st.lists(operations, min_size=2, max_size=10), min_size=workers, max_size=workers))
    return {"allocations": allocations, "overdrafts": overdrafts, "programs": programs}


class Run:
    """One run's shared state: the hierarchy, the reservations created so
    far (any worker may settle any of them) and the log of every call."""

    def __init__(self, server: ApiServer, hierarchy: Hierarchy, policy: str) -> None:
        self.server = server
        self.hierarchy = hierarchy
        self.policy = policy
        self.log = CallLog()
        self.reservations: list[tuple[str, int, bool]] = []
        self.lock = threading.Lock()
        self.tenant_headers = hierarchy.tenant.headers()
        self.admin_headers = {"X-Admin-API-Key": server.admin_key}

    def reservation(self, ref: int) -> tuple[str, int, bool] | None:
        with self.lock:
            if not self.reservations:
                return None
            return self.reservations[ref % len(self.reservations)]

    def call(self, client: httpx.Client, call: Call) -> Call:
        headers = self.admin_headers if call.admin else self.tenant_headers
        send(client, call, headers)
        self.log.add(call)
        if call.kind == "reserve" and call.ok:
            assert call.reservation_id is not None
            short = call.body["ttl_ms"] == SHORT_TTL_MS
            with self.lock:
                self.reservations.append((call.reservation_id, call.body["estimate"]["amount"], short))
        return call

    def to_call(self, op: tuple[Any, ...]) -> Call | None:
        hierarchy, kind = self.hierarchy, op[0]
        if kind == "reserve":
            _, depth, amount, short = op
            body = reserve_body(hierarchy, depth, amount, self.policy,
                                **({"ttl_ms": SHORT_TTL_MS, "grace_ms": 0} if short else {}))
            return Call("reserve", "/v1/reservations", body, scopes=hierarchy.charged_scopes(depth))
        if kind in ("commit", "release", "extend", "admin_release"):
            target = self.reservation(op[1])
            if target is None:
                return None
            reservation_id, estimate = target[0], target[1]
            if kind == "admin_release":
                # The admin releasing on the tenant's behalf races the tenant's own settlements.
                return Call("release", f"/v1/reservations/{reservation_id}/release", release_body(),
                            reservation_id=reservation_id, admin=True)
            body = (commit_body(int(estimate * op[2])) if kind == "commit"
                    else release_body() if kind == "release" else extend_body())
            return Call(kind, f"/v1/reservations/{reservation_id}/{kind}", body, reservation_id=reservation_id)
        if kind == "event":
            _, depth, amount = op
            return Call("event", "/v1/events", event_body(hierarchy, depth, amount, self.policy),
                        scopes=hierarchy.charged_scopes(depth))
        if kind == "fund":
            _, level, operation, amount = op
            params = {"scope": hierarchy.scope(min(level, hierarchy.depth)), "unit": "USD_MICROCENTS",
                      "tenant_id": hierarchy.tenant.tenant_id}
            return Call("fund", "/v1/admin/budgets/fund", fund_body(operation, amount), params=params, admin=True)
        raise AssertionError(f"unknown operation {op}")

    def worker(self, program: list[tuple[Any, ...]], start: threading.Barrier) -> None:
        with httpx.Client(base_url=self.server.base_url, timeout=30) as client:
            start.wait()
            previous: Call | None = None
            for op in program:
                if op[0] == "retry":
                    if previous is not None:
                        self.call(client, Call(previous.kind, previous.path, previous.body, previous.params,
                                               reservation_id=previous.reservation_id, scopes=previous.scopes,
                                               admin=previous.admin))
                    continue
                call = self.to_call(op)
                if call is not None:
                    previous = self.call(client, call)

    def race_deadlines(self, conn: Conn) -> None:
        """Settle every short-lived reservation at its deadline, against the
        server's sweeper and an explicit sweep."""
        short = [(rid, estimate) for rid, estimate, is_short in self.reservations if is_short]
        if not short:
            return
        time.sleep(SHORT_TTL_MS / 1000)

        def settle(index_target: tuple[int, tuple[str, int]]) -> None:
            index, (rid, estimate) = index_target
            with httpx.Client(base_url=self.server.base_url, timeout=30) as client:
                kind = "commit" if index % 2 == 0 else "release"
                body = commit_body(estimate) if kind == "commit" else release_body()
                self.call(client, Call(kind, f"/v1/reservations/{rid}/{kind}", body, reservation_id=rid))

        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = list(pool.map(settle, enumerate(short)))
            sweep(conn)
        assert futures is not None


def run_scenario(server: ApiServer, conn: Conn, policy: str, scenario: dict[str, Any]) -> None:
    hierarchy = provision(conn, scenario["allocations"], scenario["overdrafts"])
    initial = dict(zip(hierarchy.scopes, scenario["allocations"], strict=True))
    run = Run(server, hierarchy, policy)
    programs = scenario["programs"]
    start = threading.Barrier(len(programs))
    with ThreadPoolExecutor(max_workers=len(programs)) as pool:
        for future in [pool.submit(run.worker, program, start) for program in programs]:
            future.result()
    run.race_deadlines(conn)

    statuses = sorted({c.status for c in run.log.calls}, key=str)
    unexpected = [(c.kind, c.status, c.answer) for c in run.log.calls if c.status not in PROTOCOL_STATUSES]
    assert unexpected == [], f"statuses {statuses}: {unexpected}"
    for kind in ("reserve", "commit", "release", "extend", "event", "fund"):
        event(f"{kind} acknowledged", "none" if not run.log.ok(kind) else "some")
        TOTALS[f"{kind}_acknowledged"] += len(run.log.ok(kind))
    TOTALS["runs"] += 1
    TOTALS["workers"] += len(programs)
    TOTALS["requests"] += len(run.log.calls)
    tenant_id = hierarchy.tenant.tenant_id
    violations = all_violations(conn, tenant_id, policy) + log_violations(conn, tenant_id, run.log, initial)
    assert violations == [], "\n".join(violations)


@pytest.mark.timeout(PROPERTY_TIMEOUT_S)
@pytest.mark.parametrize("policy", POLICIES)
def test_random_interleavings_keep_every_invariant(
        reliability_server: ApiServer, reliability_conn: Conn, policy: str) -> None:
    @given(scenario=scenarios(policy))
    def check(scenario: dict[str, Any]) -> None:
        run_scenario(reliability_server, reliability_conn, policy, scenario)

    TOTALS.clear()
    check()
    report(f"properties_{policy}", dict(TOTALS))
