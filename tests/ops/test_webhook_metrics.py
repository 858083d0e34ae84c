"""Webhook delivery counters and gauges, from the server's own delivery worker."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import psycopg

from app.pgcluster import Cluster
from tests.api.provision import new_tenant
from tests.ops.scrape import Samples, scrape, value
from tests.server import fresh_database, running_server
from tests.webhooks.receiver import Received, start_receiver


def _subscribe(conn: psycopg.Connection[Any], url: str, tenant_id: str, **fields: Any) -> None:
    request = {"url": url, "event_types": ["tenant.updated"], **fields}
    conn.execute("SELECT cycles.create_webhook(%s::jsonb, %s)", (json.dumps(request), tenant_id))


def _emit(conn: psycopg.Connection[Any], tenant_id: str) -> None:
    conn.execute(
        "SELECT cycles._emit_event(p_tenant_id => %s, p_event_type => 'tenant.updated', p_source => 'cycles-admin',"
        " p_actor => '{\"type\": \"admin\"}', p_data => '{}'::jsonb)", (tenant_id,))


def _until(http: httpx.Client, done: Any) -> Samples:
    deadline = time.monotonic() + 20
    while True:
        samples = scrape(http)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_delivery_outcomes_are_counted(pg_cluster: Cluster) -> None:
    receiver = start_receiver()
    receiver.status_for = lambda request: 500 if request.path == "/fail" else 200
    conninfo = fresh_database(pg_cluster, "cycles_ops_webhooks")
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn, running_server(
                conninfo, CYCLES_DEV_MODE="true", CYCLES_WEBHOOK_ALLOW_PRIVATE="true",
                CYCLES_WEBHOOK_POLL_INTERVAL_MS="50") as server, httpx.Client(base_url=server.base_url) as http:
            tenant = new_tenant(conn)
            base = receiver.url.rsplit("/", 1)[0]
            _subscribe(conn, f"{base}/ok", tenant.tenant_id)
            _subscribe(conn, f"{base}/fail", tenant.tenant_id, retry_policy={
                "max_retries": 1, "initial_delay_ms": 100, "backoff_multiplier": 1, "max_delay_ms": 1000})
            _emit(conn, tenant.tenant_id)

            def outcome(samples: Samples, name: str) -> float:
                return value(samples, "cycles_webhook_deliveries_total", outcome=name)

            samples = _until(http, lambda s: outcome(s, "failure") >= 1 and outcome(s, "success") >= 1)
            assert outcome(samples, "success") == 1
            assert outcome(samples, "retry") == 1
            assert outcome(samples, "failure") == 1
            assert value(samples, "cycles_webhook_deliveries_failed") == 1
            assert value(samples, "cycles_webhook_deliveries_open", state="PENDING") == 0
            assert value(samples, "cycles_webhook_deliveries_open", state="RETRYING") == 0
            assert value(samples, "cycles_webhook_delivery_lag_seconds") == 0
            received: list[Received] = receiver.received()
            assert sorted(request.path for request in received) == ["/fail", "/fail", "/ok"]
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
