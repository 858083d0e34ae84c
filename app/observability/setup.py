"""Wiring observability into the application: ``install(app, settings, database)``.

- GET /metrics (Prometheus text format). Open by default, like most
  exporters: it shows counts and timings, never a secret, key or id. With
  CYCLES_METRICS_TOKEN set it needs ``Authorization: Bearer <token>``.
- Every request recorded by app.observability.requests.RequestObserver.
- Every database call of the handlers timed (and traced).
- The pool's figures copied into gauges every second, by every worker.

With metrics, the access log and tracing all off, nothing is wrapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from litestar import Litestar, Request, Response, get

from app.api.request_parsing import database as request_database
from app.config import Settings
from app.db import Database
from app.errors import error_response
from app.logs import AccessLog
from app.observability import db_state, metrics, otel
from app.observability.requests import RequestObserver

logger = logging.getLogger("cycles.metrics")

POOL_SAMPLE_INTERVAL_S: Final = 1.0
_STATE_TOKEN: Final = "metrics_token"


def _authorized(request: Request[Any, Any, Any], token: str) -> bool:
    presented = request.headers.get("authorization", "")
    scheme, _, credentials = presented.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode())


@get("/metrics")
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    token: str | None = request.app.state.get(_STATE_TOKEN)
    if token and not _authorized(request, token):
        return error_response(request, 401, "UNAUTHORIZED", "GET /metrics needs Authorization: Bearer <token>",
                              headers={"www-authenticate": 'Bearer realm="metrics"'})
    process_metrics = metrics.current()
    if process_metrics is None:
        return error_response(request, 404, "NOT_FOUND", "metrics are disabled")
    database = request_database(request)
    process_metrics.sample_pool(database.pool.get_stats())
    families = await db_state.collect(database)
    return Response(content=process_metrics.render(families), media_type=metrics.CONTENT_TYPE)


def _observe_calls(database: Database, process_metrics: metrics.Metrics | None,
                   tracing: otel.Tracing | None) -> None:
    """Time (and trace) the handlers' database calls, around the pool's own methods."""

    def observed(call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(sql: str, *args: Any) -> Any:
            started = time.perf_counter()
            try:
                if tracing is None:
                    return await call(sql, *args)
                with tracing.db_span(metrics.call_name(sql)):
                    return await call(sql, *args)
            finally:
                if process_metrics is not None:
                    process_metrics.db_call(sql).observe(time.perf_counter() - started)

        return timed

    # Instance attributes shadow the methods: the handlers and the sweeper
    # call database.fetch_json / fetch_int and get the timed versions.
    database.fetch_json = observed(database.fetch_json)  # type: ignore[method-assign, assignment]
    database.fetch_int = observed(database.fetch_int)  # type: ignore[method-assign, assignment]


async def _sample_pool(database: Database, process_metrics: metrics.Metrics) -> None:
    while True:
        with contextlib.suppress(Exception):
            process_metrics.sample_pool(database.pool.get_stats())
        await asyncio.sleep(POOL_SAMPLE_INTERVAL_S)


def install(app: Litestar, settings: Settings, database: Database) -> None:
    tracing = otel.start(settings)
    process_metrics = metrics.start(settings.metrics_tenant_label) if settings.metrics_enabled else None
    if process_metrics is None and tracing is None and not settings.access_log:
        return
    access_log = AccessLog(settings) if settings.access_log else None
    app.asgi_handler = RequestObserver(app.asgi_handler, process_metrics, tracing, access_log)
    if process_metrics is None and tracing is None:
        return
    _observe_calls(database, process_metrics, tracing)
    tasks: dict[str, asyncio.Task[None]] = {}
    if process_metrics is not None:
        app.register(metrics_endpoint)
        app.state[_STATE_TOKEN] = settings.metrics_token

        def start_sampler() -> None:
            tasks["pool"] = asyncio.create_task(_sample_pool(database, process_metrics), name="cycles-pool-metrics")

        app.on_startup.append(start_sampler)

    async def stop() -> None:
        for task in tasks.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if process_metrics is not None:
            process_metrics.close()
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)

    app.on_shutdown.append(stop)
