"""The maintenance loop: retention jobs, each run by one elected process per interval.

Every server worker process (and every ``cycles worker``) runs this loop. A
few times per interval it asks cycles.maintenance_claim for each job; the
database hands each job to exactly one caller per CYCLES_MAINTENANCE_INTERVAL_MS,
whichever instance that is. The winner prunes in batches of
CYCLES_MAINTENANCE_BATCH_SIZE rows, each batch its own short transaction (so
no lock is held for long and a transaction pooler can run it), and records
what it deleted with cycles.maintenance_finish. If the winner dies mid-job,
the rest is done by whichever process claims the job at the next interval.

The jobs and their retention settings:

- ``prune_idempotency_records``: CYCLES_IDEMPOTENCY_RETENTION_HOURS (24..168);
- ``prune_webhook_deliveries``: CYCLES_DELIVERY_RETENTION_DAYS (settled ones);
- ``prune_events``: CYCLES_EVENT_RETENTION_DAYS (events no open delivery needs);
- ``prune_dashboard_sessions``: expired sessions;
- ``prune_report_summaries``: CYCLES_REPORT_SUMMARY_RETENTION_DAYS (the spend
  reports' hourly summaries; older ranges are then read from the ledger);

and two that keep derived state current rather than delete:

- ``ensure_ledger_partitions``: the ledger's monthly partitions exist two
  months ahead, so no row lands in the DEFAULT partition;
- ``summarise_dashboard_spend``: the dashboard's spend summaries follow the
  ledger, so the overview never has to catch up on a long backlog;
- ``summarise_report_spend``: likewise the spend reports' hourly summaries
  (sql/39_reporting_summaries.sql), so reports add up summary rows, not a
  day of ledger rows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from app.config import Settings
from app.db import Database

logger = logging.getLogger("cycles.maintenance")

CLAIM_SQL: Final = (
    "SELECT cycles.maintenance_claim(p_job => %(job)s, p_interval_ms => %(interval_ms)s,"
    " p_runner => %(runner)s)::text")
FINISH_SQL: Final = (
    "SELECT cycles.maintenance_finish(p_job => %(job)s, p_run => %(run)s, p_result => %(result)s::jsonb)::text")
# A dead runner's job is taken over within one interval plus one tick.
MAX_TICK_S: Final = 60.0
MIN_TICK_S: Final = 0.05


@dataclass(frozen=True)
class Job:
    """One job: a cycles.* call returning JSON; {deleted, more} for the
    prune jobs ("more": call again at once), anything else for the others."""

    name: str
    sql: str
    params: dict[str, Any]


def jobs(settings: Settings) -> list[Job]:
    batch = settings.maintenance_batch_size
    return [
        Job("prune_idempotency_records",
            "SELECT cycles.prune_idempotency_records(p_retention_hours => %(hours)s,"
            " p_batch_size => %(batch)s)::text",
            {"hours": settings.idempotency_retention_hours, "batch": batch}),
        Job("prune_webhook_deliveries",
            "SELECT cycles.prune_webhook_deliveries(p_retention_days => %(days)s, p_batch_size => %(batch)s)::text",
            {"days": settings.delivery_retention_days, "batch": batch}),
        Job("prune_events",
            "SELECT cycles.prune_events(p_retention_days => %(days)s, p_batch_size => %(batch)s)::text",
            {"days": settings.event_retention_days, "batch": batch}),
        Job("prune_dashboard_sessions",
            "SELECT cycles.prune_dashboard_sessions(p_batch_size => %(batch)s)::text",
            {"batch": batch}),
        Job("ensure_ledger_partitions",
            "SELECT cycles.ensure_ledger_partitions(p_months_ahead => %(months)s)::text", {"months": 2}),
        Job("summarise_dashboard_spend",
            "SELECT cycles.summarise_dashboard_spend(p_budget_ms => %(ms)s)::text", {"ms": 1000}),
        Job("summarise_report_spend",
            "SELECT cycles.summarise_report_spend(p_budget_ms => %(ms)s)::text", {"ms": 1000}),
        Job("prune_report_summaries",
            "SELECT cycles.prune_report_summaries(p_retention_days => %(days)s, p_batch_size => %(batch)s)::text",
            {"days": settings.report_summary_retention_days, "batch": batch}),
    ]


def runner_name() -> str:
    """Who ran a job, as recorded in cycles.maintenance_runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def run_job(database: Database, job: Job, interval_ms: int, runner: str) -> dict[str, Any] | None:
    """Claims and runs one job; returns what it deleted, or None when
    another process has the job for this interval."""
    claim: dict[str, Any] = msgspec.json.decode(await database.fetch_json(
        CLAIM_SQL, {"job": job.name, "interval_ms": interval_ms, "runner": runner}))
    if not claim["claimed"]:
        return None
    outcome: dict[str, Any] = {"deleted": 0, "batches": 0}
    try:
        while True:
            result: dict[str, Any] = msgspec.json.decode(await database.fetch_json(job.sql, job.params))
            outcome["deleted"] += result.get("deleted", 0)
            outcome["batches"] += 1
            if not result.get("more"):
                break
    except Exception as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc}"[:500]
        await database.fetch_json(FINISH_SQL, {
            "job": job.name, "run": claim["run"], "result": msgspec.json.encode(outcome).decode()})
        raise
    await database.fetch_json(FINISH_SQL, {
        "job": job.name, "run": claim["run"], "result": msgspec.json.encode(outcome).decode()})
    if outcome["deleted"]:
        logger.info("%s deleted %d rows in %d batches", job.name, outcome["deleted"], outcome["batches"])
    return outcome


async def run_maintenance(database: Database, settings: Settings) -> None:
    """Run the jobs until cancelled. A failure is logged once (not every
    tick) and the loop carries on: the next claim retries."""
    interval_ms = max(settings.maintenance_interval_ms, 10)
    tick_s = min(max(interval_ms / 4000, MIN_TICK_S), MAX_TICK_S)
    runner = runner_name()
    failures: dict[str, str] = {}
    while True:
        await asyncio.sleep(tick_s)
        for job in jobs(settings):
            try:
                await run_job(database, job, interval_ms, runner)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = f"{type(exc).__name__}: {exc}"
                if failures.get(job.name) != failure:
                    logger.warning("maintenance job %s failed (will retry): %s", job.name, failure)
                    failures[job.name] = failure
            else:
                if failures.pop(job.name, None) is not None:
                    logger.info("maintenance job %s recovered", job.name)


async def run_worker_process(settings: Settings) -> None:
    """``cycles worker``: the webhook delivery worker and the maintenance
    loop, without HTTP (for a separate worker container beside servers run
    with CYCLES_WEBHOOKS_DISABLED)."""
    from app.webhooks.worker import run_worker

    database = Database.from_settings(settings, min_size=1, max_size=2)
    await database.open()
    try:
        await asyncio.gather(run_worker(settings), run_maintenance(database, settings))
    finally:
        await database.close()
