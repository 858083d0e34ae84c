"""A real server for the webhook REST tests, with the webhook settings under
test: the shared test server, with the webhook worker polling quickly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.server import ApiServer, fresh_database
from tests.server import running_server as _running_server

Server = ApiServer

__all__ = ["Server", "fresh_database", "running_server"]


@contextmanager
def running_server(conninfo: str, **env: str) -> Iterator[ApiServer]:
    with _running_server(conninfo, CYCLES_POOL_MIN_SIZE="1", CYCLES_WEBHOOK_POLL_INTERVAL_MS="100", **env) as server:
        yield server
