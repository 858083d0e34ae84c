"""A refused request never poisons its keep-alive connection: the next
request on the same connection gets a proper response."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import ApiServer


@pytest.mark.parametrize(("path", "size", "status"), [
    ("/v1/reservations", 70_000, 413),
    ("/v1/reservations", 60_000, 401),
    ("/v1/reservations/r1/commit", 60_000, 401),
    ("/no/such/route", 60_000, 404),
    ("/health", 60_000, 405),
])
def test_connection_survives_a_refusal(api_server: ApiServer, path: str, size: int, status: int) -> None:
    with httpx.Client(base_url=api_server.base_url, timeout=10) as client:
        for _ in range(5):
            refused = client.post(path, content=b"x" * size)
            assert refused.status_code == status
            assert client.get("/health").status_code == 200
