"""Group commit of concurrent commits and releases made with one API key.

A settlement's own work is small next to what its transaction costs (the
commit's WAL flush, PL/pgSQL's per-transaction set-up), and settlements that
charge one shared budget take its row lock one after the other. This
batcher applies concurrent commits and releases of one key (so of one
tenant) in one transaction instead (cycles.settle_batch), each request
keeping its own outcome, response and idempotency, with the rules of
app.reserve_batcher, whose machinery it uses: a settlement that finds none
of its key in flight goes alone as the plain cycles.commit or
cycles.release call; the ones that arrive meanwhile are sent together (at
most MAX_BATCH); a batch that fails as unavailable gives each of its requests
that failure (503), and any other failure of a batch makes its requests
again one by one.

Commits and releases share one lane per key (one batch may hold both), apart
from the key's reserves.
"""

from __future__ import annotations

from typing import Final

from app.db import Database
from app.reserve_batcher import Batcher

# The arrays travel in binary, as the reserve batch's do (see RESERVE_BATCH_SQL).
SETTLE_BATCH_SQL: Final = (
    "SELECT o_item, o_response::text, o_sqlstate, o_message, o_detail"
    " FROM cycles.settle_batch(p_api_key => %(key)s, p_operations => %(ops)b::text[],"
    " p_reservation_ids => %(ids)b::text[], p_requests => %(requests)b::jsonb[], p_ctxs => %(ctxs)b::jsonb[])")


class SettleBatcher(Batcher):
    """Per-process batcher of commits and releases made with an API key."""

    def __init__(self, database: Database, commit_sql: str, release_sql: str) -> None:
        super().__init__(database, SETTLE_BATCH_SQL, ("op", "id", "request", "ctx"), "settle")
        self._single_sql = {"commit": commit_sql, "release": release_sql}

    async def commit(self, api_key: str, reservation_id: str, request: str, ctx: str) -> bytes:
        """The response body of cycles.commit for this request (see Batcher.call)."""
        return await self._settle(api_key, "commit", reservation_id, request, ctx)

    async def release(self, api_key: str, reservation_id: str, request: str, ctx: str) -> bytes:
        """The response body of cycles.release for this request (see Batcher.call)."""
        return await self._settle(api_key, "release", reservation_id, request, ctx)

    async def _settle(self, api_key: str, op: str, reservation_id: str, request: str, ctx: str) -> bytes:
        return await self.call(api_key, self._single_sql[op],
                               {"op": op, "id": reservation_id, "request": request, "ctx": ctx})
