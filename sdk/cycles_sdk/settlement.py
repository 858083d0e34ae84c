"""Settling actual spend: commit, retried with the same key, falling back to
an event when the reservation expired, journaled so nothing is lost.

Order of operations (the durable guarantee):
1. the record is written to the journal *before* the first request leaves;
2. each response is classified (``classify``): a schema-valid success removes
   the record; timeouts, 5xx, malformed 2xx and 429 are retried with the
   *same* idempotency key (429 after ``Retry-After``, persisted as an absolute
   ``not_before_ms``); 410/RESERVATION_EXPIRED switches the record durably to
   event mode and settles through ``POST /v1/events`` with the same key;
   401/403 and unknown 4xx codes keep the record for a later replay; a known
   protocol rejection removes it (retrying cannot change the answer);
3. when the attempts run out the record stays on disk and is replayed by the
   next ``flush()``/``replay_journal()``, at interpreter exit, or on the next
   start of a client with the same journal partition.

A settlement is never turned into a release: the work has already happened.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from cycles_sdk.exceptions import CyclesProtocolError
from cycles_sdk.journal import RECORD_VERSION, Journal, JournalRecord, now_ms
from cycles_sdk.response import CyclesResponse
from cycles_sdk.wire import CommitResponse, EventCreateResponse

if TYPE_CHECKING:
    from cycles_sdk.client import AsyncCyclesClient, CyclesClient
    from cycles_sdk.config import CyclesConfig

log = logging.getLogger("cycles_sdk.settlement")

# Codes whose answer a retry cannot change: the record is done with.
TERMINAL_CODES: Final = frozenset({
    "INVALID_REQUEST", "NOT_FOUND", "BUDGET_EXCEEDED", "BUDGET_FROZEN", "BUDGET_CLOSED",
    "RESERVATION_FINALIZED", "IDEMPOTENCY_MISMATCH", "UNIT_MISMATCH", "OVERDRAFT_LIMIT_EXCEEDED",
    "DEBT_OUTSTANDING", "MAX_EXTENSIONS_EXCEEDED", "TENANT_CLOSED", "TENANT_SUSPENDED",
})

Verdict = Literal["settled", "retry", "expired", "keep", "rejected"]


@dataclass(frozen=True)
class Step:
    verdict: Verdict
    delay_ms: int = 0
    error: CyclesProtocolError | None = None


def classify(record: JournalRecord, response: CyclesResponse, config: CyclesConfig, attempt: int) -> Step:
    """What one settlement response means for the record."""
    if record.mode == "commit":
        if response.status == 200 and response.decode(CommitResponse) is not None:
            return Step("settled")
    elif response.status == 201 and response.decode(EventCreateResponse) is not None:
        return Step("settled")
    backoff = int(config.retry_delay(attempt) * 1000)
    if response.is_transport_error or response.is_server_error or response.is_success:
        why = "schema-invalid success" if response.is_success else (response.error_message or "server error")
        return Step("retry", backoff, response.to_error(f"ambiguous settlement result: {why}"))
    code = response.error_code
    if response.status == 429 or code == "LIMIT_EXCEEDED":
        retry_after = response.retry_after_ms
        return Step("retry", backoff if retry_after is None else retry_after, response.to_error())
    if record.mode == "commit" and (response.status == 410 or code == "RESERVATION_EXPIRED"):
        return Step("expired")
    if response.status in (401, 403) or code is None or code not in TERMINAL_CODES:
        return Step("keep", error=response.to_error())
    return Step("rejected", error=response.to_error())


def new_record(reservation_id: str, commit: dict[str, object], event: dict[str, object]) -> JournalRecord:
    key = commit["idempotency_key"]
    assert isinstance(key, str)
    return JournalRecord(version=RECORD_VERSION, reservation_id=reservation_id, mode="commit",
                         idempotency_key=key, commit=commit, event=event, created_at_ms=now_ms())


def _persist(journal: Journal | None, record: JournalRecord) -> None:
    """Durability is best effort only when the disk fails: say so loudly and go on."""
    if journal is None:
        return
    try:
        journal.write(record)
    except OSError as error:
        log.error("cycles journal: could not persist settlement of %s: %s", record.reservation_id, error)


def _finish(journal: Journal | None, record: JournalRecord, step: Step) -> None:
    if journal is not None and step.verdict in ("settled", "rejected"):
        journal.remove(record.reservation_id)
    if step.verdict == "rejected":
        log.warning("cycles settlement of %s rejected: %s", record.reservation_id, step.error)
    elif step.verdict != "settled":
        log.warning("cycles settlement of %s unresolved (%s); kept for replay: %s",
                    record.reservation_id, step.verdict, step.error)


@dataclass
class Outcome:
    record: JournalRecord
    step: Step

    @property
    def settled(self) -> bool:
        return self.step.verdict == "settled"


def _too_long(config: CyclesConfig, wait_ms: int, deadline: float | None) -> bool:
    """Bounded-delay policy: a caller's own settlement waits at most
    ``retry_max_delay`` for a retry (a longer Retry-After leaves the record to
    the journal replay, which honours the persisted floor); a flush waits
    until its deadline."""
    if deadline is not None:
        return time.monotonic() + wait_ms / 1000 > deadline
    return wait_ms > config.retry_max_delay * 1000


def settle(client: CyclesClient, record: JournalRecord, *, persist_first: bool = True,
           deadline: float | None = None) -> Outcome:
    """Run the settlement state machine synchronously."""
    journal = client.journal
    if persist_first:
        _persist(journal, record)
    config = client.config
    step = Step("keep")
    attempt = 0
    while attempt < config.attempts:
        wait_ms = record.not_before_ms - now_ms()
        if wait_ms > 0:
            if _too_long(config, wait_ms, deadline):
                break
            time.sleep(wait_ms / 1000)
        if record.mode == "commit":
            response = client.commit_reservation(record.reservation_id, record.commit)
        else:
            response = client.create_event(record.event)
        step = classify(record, response, config, attempt)
        if step.verdict == "expired":
            record.mode = "event"
            _persist(journal, record)  # event mode is durable before the event is sent
            continue
        if step.verdict != "retry":
            break
        attempt += 1
        record.not_before_ms = now_ms() + step.delay_ms
        if attempt < config.attempts:
            _persist(journal, record)
    if step.verdict == "retry":
        _persist(journal, record)
    _finish(journal, record, step)
    return Outcome(record, step)


async def settle_async(client: AsyncCyclesClient, record: JournalRecord) -> Outcome:
    """The same state machine on an async client (journal I/O is small and local)."""
    journal = client.journal
    _persist(journal, record)
    config = client.config
    step = Step("keep")
    attempt = 0
    while attempt < config.attempts:
        wait_ms = record.not_before_ms - now_ms()
        if wait_ms > 0:
            if _too_long(config, wait_ms, None):
                break
            await asyncio.sleep(wait_ms / 1000)
        if record.mode == "commit":
            response = await client.commit_reservation(record.reservation_id, record.commit)
        else:
            response = await client.create_event(record.event)
        step = classify(record, response, config, attempt)
        if step.verdict == "expired":
            record.mode = "event"
            _persist(journal, record)
            continue
        if step.verdict != "retry":
            break
        attempt += 1
        record.not_before_ms = now_ms() + step.delay_ms
        if attempt < config.attempts:
            _persist(journal, record)
    if step.verdict == "retry":
        _persist(journal, record)
    _finish(journal, record, step)
    return Outcome(record, step)


def replay_journal(client: CyclesClient) -> int:
    """One pass over the journal; records still waiting for their 429 floor are
    left alone. Returns how many records remain."""
    journal = client.journal
    if journal is None:
        return 0
    for record in journal.pending():
        if record.not_before_ms <= now_ms():
            settle(client, record, persist_first=False)
    return len(journal.pending())


def flush_journal(client: CyclesClient, timeout: float) -> int:
    """Replay until the journal is empty or ``timeout`` seconds passed. A record
    that cannot be settled now (authentication failure, unknown rejection, a
    429 floor past the deadline) is not retried again within the same flush.
    Returns how many records remain."""
    journal = client.journal
    if journal is None:
        return 0
    deadline = time.monotonic() + max(0.0, timeout)
    given_up: set[str] = set()
    while time.monotonic() < deadline:
        records = [r for r in journal.pending() if r.reservation_id not in given_up]
        if not records:
            break
        for record in records:
            wait_s = max(0, record.not_before_ms - now_ms()) / 1000
            if time.monotonic() + wait_s > deadline:
                given_up.add(record.reservation_id)
                continue
            outcome = settle(client, record, persist_first=False, deadline=deadline)
            if outcome.step.verdict == "keep":
                given_up.add(record.reservation_id)
    return len(journal.pending())


# --- automatic replay at start and flush at exit -------------------------------

_started: set[str] = set()
_started_lock = threading.Lock()
_exit_clients: weakref.WeakSet[CyclesClient] = weakref.WeakSet()


def start_background_replay(config: CyclesConfig) -> None:
    """Once per journal partition and process: replay what an earlier process
    left behind, in a daemon thread with a client of its own, and flush at exit."""
    if not config.journal_enabled:
        return
    journal = Journal.for_config(config)
    with _started_lock:
        if str(journal.directory) in _started:
            return
        _started.add(str(journal.directory))
    from cycles_sdk.client import CyclesClient  # the client module imports this one

    replayer = CyclesClient(config)

    def run() -> None:
        try:
            replay_journal(replayer)
        except Exception:  # a replay failure must never take the application down
            log.exception("cycles journal replay failed")

    threading.Thread(target=run, name="cycles-journal-replay", daemon=True).start()
    _exit_clients.add(replayer)
    atexit.register(_flush_at_exit, replayer)


def _flush_at_exit(client: CyclesClient) -> None:
    try:
        left = flush_journal(client, client.config.retry_flush_timeout)
        if left:
            log.warning("cycles journal: %d settlement(s) left for the next start", left)
    except Exception:
        log.exception("cycles journal flush at exit failed")
