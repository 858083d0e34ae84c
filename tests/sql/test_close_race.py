"""A reserve that waits on the budget locks of a tenant close which then
commits answers TENANT_CLOSED, as a reserve made after the close does, not
BUDGET_CLOSED (which it would see on the budgets the cascade closed)."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from app.pgcluster import Cluster
from tests.sql.runtime_fixtures import reserve_request, standard_fixture


def _wait_until_blocked(conn: psycopg.Connection, pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row is not None and row[0] == "Lock":
            return
        time.sleep(0.02)
    raise AssertionError("the reserve never waited on the close's locks")


def test_reserve_waiting_on_a_tenant_close_answers_tenant_closed(
    db: psycopg.Connection, pg_cluster: Cluster,
) -> None:
    fixture = standard_fixture(db)
    conninfo = pg_cluster.conninfo(db.info.dbname)
    outcome: dict[str, Any] = {}
    with psycopg.connect(conninfo) as closer, psycopg.connect(conninfo, autocommit=True) as reserver:
        closer.execute("SELECT cycles.close_tenant('acme')")  # open transaction: budgets locked, not committed

        def reserve() -> None:
            try:
                reserver.execute("SELECT cycles.reserve(%s, %s)", (fixture.ka, Jsonb(reserve_request(10))))
                outcome["result"] = "allowed"
            except psycopg.Error as exc:
                outcome["result"] = exc.diag.message_detail

        thread = threading.Thread(target=reserve)
        thread.start()
        _wait_until_blocked(db, reserver.info.backend_pid)
        closer.commit()
        thread.join(timeout=10)
    assert outcome["result"] is not None and '"error": "TENANT_CLOSED"' in outcome["result"]
