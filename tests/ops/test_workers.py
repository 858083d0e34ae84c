"""`cycles serve` with two worker processes: /metrics from any worker reports
the sum over both, and the server's own log lines are JSON too."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from pathlib import Path

import httpx

from app.pgcluster import Cluster
from tests.ops.scrape import delta, scrape, value
from tests.server import ROOT, free_port, fresh_database, wait_until_healthy

REQUESTS = 40


def test_metrics_are_summed_over_worker_processes(pg_cluster: Cluster, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # A file of an earlier run: it must be cleared, not summed (nor choke the scrape).
    (metrics_dir / "counter_1.db").write_bytes(b"stale")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_file = tmp_path / "serve.log"
    env = {**os.environ, "CYCLES_DATABASE_URL": fresh_database(pg_cluster, "cycles_ops_workers"),
           "CYCLES_ADMIN_API_KEY": "admin-" + secrets.token_hex(16), "CYCLES_PORT": str(port),
           "CYCLES_WORKERS": "2", "CYCLES_POOL_MIN_SIZE": "1", "CYCLES_POOL_MAX_SIZE": "2",
           "CYCLES_DATA_DIR": str(tmp_path / "data"), "CYCLES_WEBHOOKS_DISABLED": "true",
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with log_file.open("wb") as log:
        process = subprocess.Popen([str(ROOT / ".venv" / "bin" / "cycles"), "serve"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(process, base_url, log_file)
        with httpx.Client(base_url=base_url) as http:
            before = scrape(http)
        for _ in range(REQUESTS):
            # A connection each: the kernel spreads them over both workers.
            assert httpx.get(f"{base_url}/health", headers={"connection": "close"}).status_code == 200
        for _ in range(4):
            # Whichever worker answers, the figures are the sum of both.
            with httpx.Client(base_url=base_url) as http:
                after = scrape(http)
            assert delta(before, after, "cycles_http_requests_total", route="/health", status="200") == REQUESTS
            assert value(after, "cycles_server_processes") == 2
            assert value(after, "cycles_db_pool_connections", state="max") == 4
        assert "counter_1.db" not in os.listdir(metrics_dir)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    lines = [line for line in log_file.read_text().splitlines() if line.strip()]
    server_lines = [line for line in lines if not line.startswith("cycles: ")]
    assert any('"logger":"_granian"' in line for line in server_lines)
    for line in server_lines:
        assert {"ts", "level", "logger", "message"} <= json.loads(line).keys(), line
