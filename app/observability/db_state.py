"""Gauges read from the database when /metrics is scraped: one statement.

Every figure comes from an index or a small table: live reservations and
the overdue ones (the sweeper's partial index), budgets over their limit or
in debt (one row per budget), open webhook deliveries (a partial index) and
failed ones (bounded by delivery retention). Totals of settled reservations
are not counted here (the table only grows); the request and sweeper
counters say how many became COMMITTED, RELEASED or EXPIRED.

The statement reads tables, so the server's role needs SELECT on them (a
role with only cycles_app's EXECUTE rights reports cycles_db_state_up 0).
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

STATE_SQL: Final = """
WITH v_now AS (
    SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now_ms
), v_open AS (
    SELECT count(*) FILTER (WHERE d.status = 'PENDING') AS pending,
           count(*) FILTER (WHERE d.status = 'RETRYING') AS retrying,
           coalesce(extract(epoch FROM clock_timestamp() - min(d.created_at)), 0)::float8 AS lag_s
    FROM cycles.webhook_deliveries AS d
    WHERE d.status IN ('PENDING', 'RETRYING')
)
SELECT
    (SELECT count(*) FROM cycles.reservations AS r WHERE r.status = 'ACTIVE') AS active,
    (SELECT count(*) FROM cycles.reservations AS r, v_now
     WHERE r.status = 'ACTIVE' AND r.expires_at_ms + r.grace_period_ms < v_now.now_ms) AS overdue,
    (SELECT count(*) FROM cycles.budgets AS b WHERE b.is_over_limit) AS over_limit,
    (SELECT count(*) FROM cycles.budgets AS b WHERE b.debt > 0) AS in_debt,
    v_open.pending, v_open.retrying, v_open.lag_s,
    (SELECT count(*) FROM cycles.webhook_deliveries AS d WHERE d.status = 'FAILED') AS failed
FROM v_open
"""


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
