"""Assertions on responses: the spec's exact key sets, the error shape, the
correlation headers, and the absence of JSON null."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.api.provision import find_nulls

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")

ERROR_KEYS = {"error", "message", "request_id", "trace_id", "details"}
ERROR_REQUIRED = {"error", "message", "request_id", "trace_id"}
AMOUNT_KEYS = {"unit", "amount"}
BALANCE_KEYS = {
    "scope", "scope_path", "remaining", "reserved", "spent", "allocated", "debt", "overdraft_limit",
    "is_over_limit"}
CREATE_KEYS = {
    "decision", "reservation_id", "affected_scopes", "expires_at_ms", "remaining_ttl_ms", "scope_path",
    "reserved", "caps", "reason_code", "retry_after_ms", "balances", "cycles_evidence"}
COMMIT_KEYS = {"status", "charged", "released", "balances", "cycles_evidence"}
RELEASE_KEYS = {"status", "released", "balances", "cycles_evidence"}
EXTEND_KEYS = {"status", "expires_at_ms", "remaining_ttl_ms", "balances", "cycles_evidence"}
DECIDE_KEYS = {"decision", "caps", "reason_code", "retry_after_ms", "affected_scopes", "cycles_evidence"}
EVENT_KEYS = {"status", "event_id", "charged", "balances"}
SUMMARY_REQUIRED = {
    "reservation_id", "status", "subject", "action", "reserved", "created_at_ms", "expires_at_ms",
    "scope_path", "affected_scopes"}
SUMMARY_KEYS = SUMMARY_REQUIRED | {
    "idempotency_key", "finalized_at_ms", "committed", "metadata", "committed_metadata", "evidence"}
LIST_KEYS = {"reservations", "next_cursor", "has_more"}
BALANCES_KEYS = {"balances", "next_cursor", "has_more"}


def assert_ids(response: httpx.Response) -> tuple[str, str]:
    """Both correlation headers are present and well-formed; returns them."""
    request_id = response.headers.get("x-request-id")
    trace_id = response.headers.get("x-cycles-trace-id")
    assert request_id, f"no X-Request-Id on {response.status_code}"
    assert trace_id is not None and TRACE_ID.match(trace_id), f"bad X-Cycles-Trace-Id {trace_id!r}"
    assert trace_id != "0" * 32
    return request_id, trace_id


def assert_keys(document: dict[str, Any], allowed: set[str], required: set[str] | None = None) -> None:
    keys = set(document)
    assert keys <= allowed, f"unexpected keys {keys - allowed} in {document}"
    missing = (required or set()) - keys
    assert not missing, f"missing keys {missing} in {document}"


def assert_amount(value: Any, unit: str | None = None, amount: int | None = None) -> None:
    assert isinstance(value, dict) and set(value) == AMOUNT_KEYS, value
    if unit is not None:
        assert value["unit"] == unit
    if amount is not None:
        assert value["amount"] == amount


def assert_balances(balances: Any) -> None:
    assert isinstance(balances, list)
    for balance in balances:
        assert_keys(balance, BALANCE_KEYS, {"scope", "scope_path", "remaining"})
        for name in ("remaining", "reserved", "spent", "allocated", "debt", "overdraft_limit"):
            if name in balance:
                assert set(balance[name]) == AMOUNT_KEYS


def assert_ok(response: httpx.Response, status: int, allowed: set[str], required: set[str]) -> dict[str, Any]:
    """A success: the exact status, ids, only allowed keys, no null anywhere."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/json")
    assert_ids(response)
    document: dict[str, Any] = response.json()
    assert_keys(document, allowed, required)
    assert find_nulls(document) == []
    if "balances" in document:
        assert_balances(document["balances"])
    return document


def assert_error(response: httpx.Response, status: int, error: str, mentions: str | None = None) -> dict[str, Any]:
    """An error in the spec's shape, with ids matching the headers."""
    assert response.status_code == status, f"expected {status} {error}, got {response.status_code} {response.text}"
    request_id, trace_id = assert_ids(response)
    document: dict[str, Any] = response.json()
    assert_keys(document, ERROR_KEYS, ERROR_REQUIRED)
    assert find_nulls(document) == []
    assert document["error"] == error, document
    assert document["request_id"] == request_id
    assert document["trace_id"] == trace_id
    assert isinstance(document["message"], str) and document["message"]
    if "details" in document:
        assert isinstance(document["details"], dict)
    if mentions is not None:
        assert mentions in document["message"], f"{mentions!r} not in {document['message']!r}"
    return document
