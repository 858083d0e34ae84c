"""Calling admin functions in tests: the JSON result, or the protocol error
(its SQLSTATE and the code in its JSON DETAIL)."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest

MAX = 2**63 - 1
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def call(db: psycopg.Connection, sql: str, **params: Any) -> Any:
    row = db.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def fails(db: psycopg.Connection, code: str, sql: str, **params: Any) -> str:
    """Runs sql, asserts it raises the protocol error `code`; returns the message."""
    with pytest.raises(psycopg.Error) as caught:
        db.execute(sql, params)
    assert caught.value.sqlstate == call(db, "SELECT cycles._error_sqlstate(%(c)s)", c=code), caught.value
    detail = caught.value.diag.message_detail
    assert detail is not None and json.loads(detail)["error"] == code
    return str(caught.value.diag.message_primary)
