"""Fault injection in front of the real server: an httpx transport that
forwards every request to the server and then, for the requests a test
picks, loses or rewrites the answer. The server really processed the request;
only the client's view of it is damaged."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

# Decides what happens to one forwarded request: None = deliver the real
# response; an httpx.Response = deliver that instead; an exception = raise it.
Fault = Callable[[httpx.Request, httpx.Response], httpx.Response | Exception | None]


@dataclass
class Seen:
    method: str
    path: str
    idempotency_key: str | None
    body: bytes
    at_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)


@dataclass
class FaultyTransport(httpx.BaseTransport):
    faults: list[tuple[str, Fault]] = field(default_factory=list)  # (path suffix, fault), used once each
    seen: list[Seen] = field(default_factory=list)
    before_send: Callable[[httpx.Request], None] | None = None
    # (path suffix, response) answered without forwarding (the server never
    # sees the request), used once each.
    intercepts: list[tuple[str, httpx.Response]] = field(default_factory=list)
    inner: httpx.BaseTransport = field(default_factory=httpx.HTTPTransport)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        self.seen.append(Seen(request.method, request.url.path, request.headers.get("x-idempotency-key"), body))
        if self.before_send is not None:
            self.before_send(request)
        for index, (suffix, answer) in enumerate(self.intercepts):
            if request.url.path.endswith(suffix):
                del self.intercepts[index]
                return answer
        response = self.inner.handle_request(request)
        response.read()
        for index, (suffix, fault) in enumerate(self.faults):
            if request.url.path.endswith(suffix):
                outcome = fault(request, response)
                del self.faults[index]
                if isinstance(outcome, Exception):
                    raise outcome
                if outcome is not None:
                    return outcome
                break
        return response

    def paths(self, suffix: str) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith(suffix)]


@dataclass
class AsyncFaultyTransport(httpx.AsyncBaseTransport):
    faults: list[tuple[str, Fault]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    intercepts: list[tuple[str, httpx.Response]] = field(default_factory=list)
    inner: httpx.AsyncBaseTransport = field(default_factory=httpx.AsyncHTTPTransport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.seen.append(Seen(request.method, request.url.path, request.headers.get("x-idempotency-key"), body))
        for index, (suffix, answer) in enumerate(self.intercepts):
            if request.url.path.endswith(suffix):
                del self.intercepts[index]
                return answer
        response = await self.inner.handle_async_request(request)
        await response.aread()
        for index, (suffix, fault) in enumerate(self.faults):
            if request.url.path.endswith(suffix):
                outcome = fault(request, response)
                del self.faults[index]
                if isinstance(outcome, Exception):
                    raise outcome
                if outcome is not None:
                    return outcome
                break
        return response

    def paths(self, suffix: str) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith(suffix)]


def lose_response(request: httpx.Request, _: httpx.Response) -> Exception:
    return httpx.ReadTimeout("response lost", request=request)


def status(code: int, json: object, headers: dict[str, str] | None = None) -> Fault:
    def fault(_request: httpx.Request, _response: httpx.Response) -> httpx.Response:
        return httpx.Response(code, json=json, headers=headers)

    return fault


def refuse_without_forwarding(request: httpx.Request) -> None:
    raise httpx.ConnectError("refused", request=request)
