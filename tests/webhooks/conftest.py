"""Fixtures of the webhook tests: a receiver, and worker rounds run in-process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from app.config import Settings
from app.pgcluster import Cluster
from app.webhooks.sender import new_client
from app.webhooks.url_policy import UrlPolicy
from app.webhooks.worker import deliver_round
from tests.webhooks.receiver import Receiver, start_receiver

LOCAL = UrlPolicy(dev_mode=True, allow_private=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = start_receiver()
    try:
        yield rec
    finally:
        rec.server.shutdown()
        rec.server.server_close()


@pytest.fixture
def conninfo(db: psycopg.Connection, pg_cluster: Cluster) -> str:
    return pg_cluster.conninfo(db.info.dbname)


@pytest.fixture
def acme(db: psycopg.Connection) -> psycopg.Connection:
    db.execute("SELECT cycles.create_tenant('acme', 'Acme')")
    return db


def worker_settings(conninfo: str, **overrides: Any) -> Settings:
    base = Settings(database_url=conninfo, dev_mode=True, webhook_allow_private=True,
                    webhook_poll_interval_ms=50, webhook_timeout_ms=2000)
    return Settings(**{**base.__dict__, **overrides})


def subscribe(db: psycopg.Connection, url: str, tenant: str | None = "acme", **fields: Any) -> tuple[str, str]:
    """A subscription (budget.* and tenant.* by default): (id, signing secret)."""
    request = {"url": url, "event_types": ["tenant.updated"], "event_categories": ["budget", "tenant"], **fields}
    row = db.execute("SELECT cycles.create_webhook(%s::jsonb, %s)", (json.dumps(request), tenant)).fetchone()
    assert row is not None
    return row[0]["subscription"]["subscription_id"], row[0]["signing_secret"]


def emit(db: psycopg.Connection, n: int, tenant: str = "acme") -> list[str]:
    """n tenant.updated events, in order; their ids."""
    ids = []
    for i in range(n):
        row = db.execute(
            "SELECT cycles._emit_event(p_tenant_id => %s, p_event_type => 'tenant.updated',"
            " p_source => 'cycles-admin', p_actor => '{\"type\": \"admin\"}', p_data => %s::jsonb,"
            " p_trace_id => %s)",
            (tenant, json.dumps({"n": i}), f"{i:032x}")).fetchone()
        assert row is not None
        ids.append(row[0])
    return ids


async def _rounds(conninfo: str, max_rounds: int) -> int:
    total = 0
    async with await psycopg.AsyncConnection.connect(conninfo) as conn, new_client(2000) as client:
        for _ in range(max_rounds):
            sent, _ = await deliver_round(conn, client, LOCAL)
            if not sent:
                break
            total += sent
    return total


def run_rounds(conninfo: str, max_rounds: int = 100) -> int:
    """Worker rounds in this process until nothing is due; deliveries sent."""
    return asyncio.run(_rounds(conninfo, max_rounds))


def make_due(db: psycopg.Connection) -> None:
    """Retries scheduled in the future become due now (no sleeping in tests)."""
    db.execute("UPDATE cycles.webhook_deliveries SET next_attempt_at = clock_timestamp()"
               " WHERE status IN ('PENDING', 'RETRYING')")
