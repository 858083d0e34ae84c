"""The delivery worker: claims due deliveries, POSTs them, records outcomes.

One round is one transaction: cycles.claim_webhook_deliveries locks a batch
(FOR UPDATE SKIP LOCKED, one head per subscription), the requests go out
concurrently, cycles.complete_webhook_delivery records each outcome, COMMIT.
The locks are held while the requests are in flight, so any number of
workers (processes, hosts) can run this loop without sending a delivery
twice; a worker that dies rolls back, and its batch is due again (the
receiver may see those in-flight requests twice, with the same event id).

Between rounds the worker sleeps until a NOTIFY on cycles_webhooks (sent when
deliveries become due), the next scheduled retry, or the polling interval,
whichever comes first. Behind a transaction pooler (CYCLES_DATABASE_POOLER=
pgbouncer) LISTEN cannot work (the registration stays on a server connection
other clients share), so the worker only polls, and prepares no statements.
Old events and deliveries are pruned by the maintenance loop (app.maintenance).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

import httpx
import msgspec
import psycopg

from app.config import Settings
from app.observability.metrics import record_webhook_delivery
from app.webhooks.sender import Outcome, new_client, send
from app.webhooks.url_policy import UrlPolicy

logger = logging.getLogger("cycles.webhooks")

BATCH_SIZE: Final = 20
CLAIM_SQL: Final = f"SELECT cycles.claim_webhook_deliveries(p_limit => {BATCH_SIZE})::text"
COMPLETE_SQL: Final = (
    "SELECT cycles.complete_webhook_delivery(p_delivery_id => %(id)s, p_success => %(ok)s,"
    " p_response_status => %(status)s, p_response_time_ms => %(ms)s, p_error_message => %(error)s)")
RECONNECT_DELAY_S: Final = 1.0


def url_policy(settings: Settings) -> UrlPolicy:
    return UrlPolicy(dev_mode=settings.dev_mode, allow_private=settings.webhook_allow_private)


def outcome_params(delivery_id: str, outcome: Outcome) -> dict[str, Any]:
    return {"id": delivery_id, "ok": outcome.success, "status": outcome.response_status,
            "ms": outcome.response_time_ms, "error": outcome.error_message}


async def deliver_round(
    conn: psycopg.AsyncConnection[Any], client: httpx.AsyncClient, policy: UrlPolicy,
) -> tuple[int, int | None]:
    """One claim-send-complete transaction: (deliveries sent, ms until the
    next scheduled one, if any)."""
    async with conn.transaction():
        cursor = await conn.execute(CLAIM_SQL)
        row = await cursor.fetchone()
        assert row is not None
        claimed: dict[str, Any] = msgspec.json.decode(row[0])
        deliveries: list[dict[str, Any]] = claimed["deliveries"]
        outcomes = await asyncio.gather(*(send(client, claim, policy) for claim in deliveries))
        settled: list[str | None] = []
        for claim, outcome in zip(deliveries, outcomes, strict=True):
            cursor = await conn.execute(COMPLETE_SQL, outcome_params(claim["delivery_id"], outcome))
            completed = await cursor.fetchone()
            settled.append(completed[0].get("status") if completed and completed[0] else None)
    # Counted once committed: a round that rolls back is delivered again.
    for status in settled:
        record_webhook_delivery(status)
    next_due: int | None = claimed.get("next_due_ms")
    return len(deliveries), next_due


async def _wait_for_work(listener: psycopg.AsyncConnection[Any] | None, timeout_s: float) -> None:
    """Returns at the first NOTIFY or after timeout_s (just the latter
    without a listener)."""
    if listener is None:
        await asyncio.sleep(timeout_s)
        return
    gen = listener.notifies(timeout=timeout_s, stop_after=1)
    async for _ in gen:
        pass


async def _connect(settings: Settings, autocommit: bool = False) -> psycopg.AsyncConnection[Any]:
    assert settings.database_url is not None
    if settings.database_pooler == "pgbouncer":
        return await psycopg.AsyncConnection.connect(
            settings.database_url, autocommit=autocommit, prepare_threshold=None)
    return await psycopg.AsyncConnection.connect(settings.database_url, autocommit=autocommit)


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Deliver until cancelled (or until stop is set). Database failures are
    logged once and retried after a short pause."""
    assert settings.database_url is not None
    policy = url_policy(settings)
    poll_s = max(settings.webhook_poll_interval_ms, 10) / 1000
    stop = stop or asyncio.Event()
    listen = settings.database_pooler != "pgbouncer"
    last_failure: str | None = None
    async with new_client(settings.webhook_timeout_ms) as client:
        while not stop.is_set():
            try:
                async with await _connect(settings) as conn, contextlib.AsyncExitStack() as stack:
                    listener = None
                    if listen:
                        listener = await stack.enter_async_context(await _connect(settings, autocommit=True))
                        await listener.execute("LISTEN cycles_webhooks")
                    if last_failure is not None:
                        logger.info("webhook worker reconnected")
                        last_failure = None
                    while not stop.is_set():
                        sent, next_due_ms = await deliver_round(conn, client, policy)
                        if sent:
                            continue
                        wait_s = poll_s if next_due_ms is None else min(poll_s, next_due_ms / 1000)
                        await _wait_for_work(listener, max(wait_s, 0.01))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = f"{type(exc).__name__}: {exc}"
                if failure != last_failure:
                    logger.warning("webhook worker failed (will retry): %s", failure)
                    last_failure = failure
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), RECONNECT_DELAY_S)
