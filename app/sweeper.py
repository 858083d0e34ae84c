"""The expiry sweeper: a background task of every server process.

Every sweep_interval_ms it calls cycles.expire_due(), which returns the
reserved amount of reservations past expires_at_ms + grace_period_ms to their
budgets. The function serialises itself with an advisory lock, so any number
of workers and instances can run this loop at once: one sweeps, the others'
calls return 0 at once. The lock is transaction-scoped (each call is one
transaction, which a transaction pooler can carry), so a sweeper killed
mid-batch loses it with its connection, its batch rolls back, and the next
sweep of any surviving process expires those reservations: once.
"""

from __future__ import annotations

import asyncio
import logging

from app.db import Database
from app.observability.metrics import record_expired

logger = logging.getLogger("cycles.sweeper")

# One call expires at most this many reservations; a full batch means more
# are due, so the sweeper goes again at once instead of waiting an interval.
# A batch holds the row locks of every budget it gives back to until it
# commits, a shared tenant budget's among them: small batches keep the
# requests queued behind it waiting milliseconds, not a tenth of a second.
BATCH_SIZE = 100
EXPIRE_DUE_SQL = f"SELECT cycles.expire_due(p_batch_size => {BATCH_SIZE})"


async def run_sweeper(database: Database, interval_ms: int) -> None:
    """Sweep until cancelled. A failure is logged once (not every interval)
    and the loop carries on: the next sweep retries."""
    interval_s = max(interval_ms, 10) / 1000
    last_failure: str | None = None
    while True:
        await asyncio.sleep(interval_s)
        try:
            while True:
                expired = await database.fetch_int(EXPIRE_DUE_SQL)
                record_expired(expired)
                if expired < BATCH_SIZE:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            if failure != last_failure:
                logger.warning("expiry sweep failed (will retry): %s", failure)
                last_failure = failure
        else:
            if last_failure is not None:
                logger.info("expiry sweep recovered")
                last_failure = None
