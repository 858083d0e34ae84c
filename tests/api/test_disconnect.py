"""A client that goes away in the middle of its request body is not a server
failure: nothing is logged as an internal error and the server keeps serving."""

from __future__ import annotations

import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.api.conftest import ApiServer
from tests.api.provision import funded_tenant


def test_client_disconnecting_mid_body_is_not_an_internal_error(api_server: ApiServer, admin_conn: Any) -> None:
    tenant = funded_tenant(admin_conn)
    url = urlsplit(api_server.base_url)
    for path in ("/v1/reservations", "/v1/decide", "/v1/admin/tenants"):
        with socket.create_connection((url.hostname, url.port)) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {url.hostname}\r\nX-Cycles-API-Key: {tenant.api_key}\r\n"
                "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"idempotency_key\": ".encode())
            time.sleep(0.2)
    time.sleep(0.5)
    health = httpx.get(f"{api_server.base_url}/health", timeout=5)
    assert health.status_code == 200
    assert "internal error" not in api_server.log_file.read_text(errors="replace")
