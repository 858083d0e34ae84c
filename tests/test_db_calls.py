"""Database.fetch_json runs a call with text parameters straight on libpq
(app.db); it must give what psycopg gives for the same call: the same bytes,
the same exceptions with the same diagnostics, prepared or not."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from app.db import Database, Timeouts

ECHO_SQL = "SELECT jsonb_build_object('a', %(a)s::text, 'b', %(b)s::text, 'again', %(a)s::text)::text"
FAIL_SQL = "SELECT cycles._fail(%(code)s, %(message)s, jsonb_build_object('x', 1))::text"
PERCENT_SQL = "SELECT jsonb_build_object('p', '100%%', 'a', %(a)s::text)::text"


def conninfo(db: psycopg.Connection[Any]) -> str:
    return f"host={db.info.host} port={db.info.port} user={db.info.user} dbname={db.info.dbname}"


def through_psycopg(db: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> bytes:
    row = db.execute(sql, params).fetchone()
    assert row is not None
    return str(row[0]).encode()


@pytest.mark.parametrize("pooler", [False, True])
def test_calls_answer_and_fail_as_psycopg_does(db: psycopg.Connection[Any], pooler: bool) -> None:
    expected = through_psycopg(db, ECHO_SQL, {"a": "é\u2603", "b": "x"})
    percent = through_psycopg(db, PERCENT_SQL, {"a": "y"})
    with pytest.raises(psycopg.Error) as refused_by_psycopg:
        db.execute(FAIL_SQL, {"code": "BUDGET_EXCEEDED", "message": "too much"})
    with pytest.raises(psycopg.Error) as nul_by_psycopg:
        db.execute(ECHO_SQL, {"a": "a\x00b", "b": "x"})

    async def calls() -> tuple[list[bytes], BaseException, BaseException, dict[str, Any]]:
        database = Database(conninfo(db), 1, 1, Timeouts(0, 0), pool_timeout_s=5, transaction_pooler=pooler)
        await database.open()
        try:
            # Several times on one connection: prepared once, then reused.
            answers = [await database.fetch_json(ECHO_SQL, {"a": "é\u2603", "b": "x"}) for _ in range(3)]
            answers.append(await database.fetch_json(PERCENT_SQL, {"a": "y"}))
            with pytest.raises(psycopg.Error) as refused:
                await database.fetch_json(FAIL_SQL, {"code": "BUDGET_EXCEEDED", "message": "too much"})
            # The connection is usable after a refusal.
            answers.append(await database.fetch_json(ECHO_SQL, {"a": "é\u2603", "b": "x"}))
            # psycopg drops every prepared statement of a connection after a
            # ROLLBACK it runs there: the next call prepares again.
            async with database.pool.connection() as conn:
                await conn.execute("DEALLOCATE ALL")
            answers.append(await database.fetch_json(ECHO_SQL, {"a": "é\u2603", "b": "x"}))
            with pytest.raises(psycopg.Error) as nul:
                await database.fetch_json(ECHO_SQL, {"a": "a\x00b", "b": "x"})
            return answers, refused.value, nul.value, database.pool.get_stats()
        finally:
            await database.close()

    answers, refused, nul, stats = asyncio.run(calls())
    assert answers == [expected, expected, expected, percent, expected, expected]
    assert type(refused) is type(refused_by_psycopg.value)
    assert isinstance(refused, psycopg.Error)
    assert refused.sqlstate == refused_by_psycopg.value.sqlstate == "CY901"
    assert refused.diag.message_primary == refused_by_psycopg.value.diag.message_primary
    assert refused.diag.message_detail == refused_by_psycopg.value.diag.message_detail
    assert type(nul) is type(nul_by_psycopg.value)
    # One connection served every call: none was lost or replaced.
    assert stats.get("connections_lost", 0) == 0 and stats.get("returns_bad", 0) == 0
