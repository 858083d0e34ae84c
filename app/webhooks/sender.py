"""One webhook request: the Event JSON, signed, with the delivery headers."""

from __future__ import annotations

import secrets
import time
from typing import Any, NamedTuple

import httpx
import msgspec

from app import __version__
from app.webhooks.signing import signature
from app.webhooks.url_policy import UrlPolicy, url_problem

USER_AGENT = f"cycles-webhooks/{__version__}"


class Outcome(NamedTuple):
    success: bool
    response_status: int | None
    response_time_ms: int | None
    error_message: str | None


def delivery_body(event: dict[str, Any]) -> bytes:
    """The bytes sent (and signed): the Event JSON as stored, nulls already
    omitted by SQL."""
    return msgspec.json.encode(event)


def delivery_headers(claim: dict[str, Any], body: bytes) -> dict[str, str]:
    event: dict[str, Any] = claim["event"]
    trace_id = event.get("trace_id") or secrets.token_hex(16)
    flags = claim.get("trace_flags") or "01"
    headers = {str(k): str(v) for k, v in (claim.get("headers") or {}).items()}
    headers.update({
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Cycles-Signature": signature(body, claim["signing_secret"]),
        "X-Cycles-Event-Id": event["event_id"],
        "X-Cycles-Event-Type": event["event_type"],
        "X-Cycles-Trace-Id": trace_id,
        "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-{flags}",
    })
    if event.get("request_id"):
        headers["X-Request-Id"] = event["request_id"]
    return headers


async def send(client: httpx.AsyncClient, claim: dict[str, Any], policy: UrlPolicy) -> Outcome:
    """POST one claimed delivery. A 2xx is success; any other status, a
    timeout or a connection error is a failure. Redirects are not followed
    (the target would escape the URL policy)."""
    started = time.monotonic()
    try:
        problem = await url_problem(claim["url"], policy)
        if problem is not None:
            return Outcome(False, None, None, problem)
        body = delivery_body(claim["event"])
        response = await client.post(claim["url"], content=body, headers=delivery_headers(claim, body))
    except httpx.TimeoutException:
        return Outcome(False, None, int((time.monotonic() - started) * 1000), "timeout")
    except Exception as exc:
        # Whatever goes wrong with one delivery is that delivery's failure
        # (retried per its policy); it must never wedge the worker's batch.
        return Outcome(False, None, int((time.monotonic() - started) * 1000),
                       f"{type(exc).__name__}: {exc}"[:1024])
    elapsed = int((time.monotonic() - started) * 1000)
    if 200 <= response.status_code < 300:
        return Outcome(True, response.status_code, elapsed, None)
    return Outcome(False, response.status_code, elapsed, f"HTTP {response.status_code}")


def new_client(timeout_ms: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_ms / 1000), follow_redirects=False, trust_env=False)
