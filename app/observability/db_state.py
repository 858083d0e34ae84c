"""Gauges read from the database when /metrics is scraped: one call of
cycles.metrics_snapshot() (sql/70_metrics.sql says what each figure reads;
being a function, it works for a server connecting as cycles_app). Totals
of settled reservations are not among them (the table only grows); the
request and sweeper counters say how many became COMMITTED, RELEASED or
EXPIRED.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from app.db import Database

logger = logging.getLogger("cycles.metrics")

TIMEOUT_S: Final = 2.0

STATE_SQL: Final = "SELECT * FROM cycles.metrics_snapshot()"


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


async def collect(database: Database) -> list[Metric]:
    """The state gauges, or only cycles_db_state_up 0 when the query fails."""
    started = time.perf_counter()
    try:
        async with database.pool.connection(timeout=TIMEOUT_S) as conn, conn.transaction():
            await conn.execute(f"SET LOCAL statement_timeout = '{int(TIMEOUT_S * 1000)}ms'")
            cursor = await conn.execute(STATE_SQL)
            row: Any = await cursor.fetchone()
    except Exception as exc:
        logger.warning("metrics: database state query failed: %s: %s", type(exc).__name__, exc)
        return [_gauge("cycles_db_state_up", "1 if the database state gauges could be read.", 0)]
    active, overdue, over_limit, in_debt, pending, retrying, lag_s, failed = row
    deliveries = GaugeMetricFamily(
        "cycles_webhook_deliveries_open", "Webhook deliveries waiting to be sent, by state.", labels=["state"])
    deliveries.add_metric(["PENDING"], pending)
    deliveries.add_metric(["RETRYING"], retrying)
    return [
        _gauge("cycles_db_state_up", "1 if the database state gauges could be read.", 1),
        _gauge("cycles_db_state_query_seconds", "Time the state query took.", time.perf_counter() - started),
        _gauge("cycles_reservations_active", "Reservations in state ACTIVE.", active),
        _gauge("cycles_reservations_overdue",
               "ACTIVE reservations past expiry plus grace, not yet swept (should stay near 0).", overdue),
        _gauge("cycles_budgets_over_limit", "Budgets flagged over their limit (is_over_limit).", over_limit),
        _gauge("cycles_budgets_in_debt", "Budgets with debt > 0.", in_debt),
        deliveries,
        _gauge("cycles_webhook_delivery_lag_seconds",
               "Age of the oldest webhook delivery not yet sent (0 when none).", lag_s),
        _gauge("cycles_webhook_deliveries_failed", "Webhook deliveries that failed for good (within retention).",
               failed),
    ]
