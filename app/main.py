"""The HTTP application: ``create_app()`` builds the Litestar app.

Served by granian (``granian --interface asgi --factory app.main:create_app``);
configuration comes from CYCLES_* environment variables (app.config). The app
is a thin adapter: each route parses and bounds-checks its request, makes one
cycles.* call on a pooled connection and returns the function's JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Final

from litestar import Litestar
from litestar.datastructures import State

from app.api import (
    auth,
    balances,
    decide,
    events,
    events_read,
    health,
    reservations,
    webhooks_admin,
    webhooks_tenant,
)
from app.api.admin import api_keys as admin_api_keys
from app.api.admin import audit as admin_audit
from app.api.admin import budgets as admin_budgets
from app.api.admin import bulk as admin_bulk
from app.api.admin import events as admin_events
from app.api.admin import policies as admin_policies
from app.api.admin import tenants as admin_tenants
from app.api.direct_routes import install as install_direct_routes
from app.config import Settings
from app.dashboard import routes as dashboard
from app.db import Database
from app.errors import EXCEPTION_HANDLERS
from app.logs import configure as configure_logs
from app.maintenance import run_maintenance
from app.observability.setup import install as install_observability
from app.reserve_batcher import ReserveBatcher
from app.settle_batcher import SettleBatcher
from app.sweeper import run_sweeper
from app.tracing import add_id_headers
from app.webhooks.worker import run_worker, url_policy

# Request bodies are small JSON objects; anything larger is refused (413)
# before it is read into memory.
MAX_REQUEST_BODY_BYTES: Final = 64 * 1024


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    if not settings.database_url:
        raise SystemExit("CYCLES_DATABASE_URL must be set to serve the API")
    configure_logs(settings)
    database = Database.from_settings(settings)
    reserve_batcher = ReserveBatcher(database, reservations.RESERVE_SQL) if settings.reserve_batching else None
    settle_batcher = SettleBatcher(database, reservations.COMMIT_SQL, reservations.RELEASE_SQL) \
        if settings.settle_batching else None

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await database.open()
        sweeper = asyncio.create_task(run_sweeper(database, settings.sweep_interval_ms), name="cycles-sweeper")
        # Every process runs it; the database elects one runner per job and interval.
        maintenance = asyncio.create_task(run_maintenance(database, settings), name="cycles-maintenance")
        # Every server process runs a delivery worker; they share the work safely.
        webhook_worker = None if settings.webhooks_disabled else asyncio.create_task(
            run_worker(settings), name="cycles-webhooks")
        # Everything built so far lives as long as the process: out of the
        # garbage collector's sight, its full collections no longer walk the
        # framework's objects (they were 5-8 % of a busy worker's CPU).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if webhook_worker is not None:
                webhook_worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await webhook_worker
            for task in (maintenance, sweeper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if reserve_batcher is not None:
                await reserve_batcher.aclose()
            if settle_batcher is not None:
                await settle_batcher.aclose()
            await database.close()

    app = Litestar(
        route_handlers=[
            *reservations.ROUTES, *decide.ROUTES, *events.ROUTES, *balances.ROUTES, *auth.ROUTES,
            *webhooks_admin.ROUTES, *webhooks_tenant.ROUTES,
            *health.ROUTES, *events_read.ROUTES, *admin_policies.ROUTES, *admin_events.ROUTES,
            *admin_tenants.ROUTES, *admin_api_keys.ROUTES, *admin_budgets.ROUTES, *admin_bulk.ROUTES,
            *admin_audit.ROUTES, dashboard.ROUTER,
        ],
        template_config=dashboard.TEMPLATE_CONFIG,
        lifespan=[lifespan],
        state=State({
            "db": database, "admin_api_key": settings.admin_api_key,
            "webhook_url_policy": url_policy(settings), "reserve_batcher": reserve_batcher,
            "settle_batcher": settle_batcher}),
        exception_handlers=EXCEPTION_HANDLERS,
        before_send=[add_id_headers],
        request_max_body_size=MAX_REQUEST_BODY_BYTES,
        openapi_config=None,
        logging_config=None,
    )
    install_direct_routes(app, database, reserve_batcher, settle_batcher, MAX_REQUEST_BODY_BYTES)
    install_observability(app, settings, database)
    return app
