"""Browser tests of /dashboard: headless Chromium (Debian's system package,
driven by Playwright) against the real server.

The browser is Debian's `chromium`, installed here with apt-get when
/usr/bin/chromium is missing (Playwright's own browser download is not used).
Each test provisions its own tenant, so tests share the server but no data.
Screenshots of the pages go to test-artifacts/dashboard/ (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from app.pgcluster import Cluster
from tests.server import ROOT, ApiServer, fresh_database, running_server

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"


def _install_chromium() -> None:
    if CHROMIUM.exists():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium)")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "chromium"], env=environment, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=environment, check=True)
        subprocess.run(["apt-get", "install", "-y", "chromium"], env=environment, check=True)


@pytest.fixture(scope="session")
def dashboard_server(pg_cluster: Cluster) -> Iterator[ApiServer]:
    with running_server(fresh_database(pg_cluster, "cycles_dashboard")) as server:
        yield server


@pytest.fixture(scope="session")
def db_conn(dashboard_server: ApiServer) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A superuser connection to the server's database, for provisioning and checks."""
    with psycopg.connect(dashboard_server.conninfo, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def api(dashboard_server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dashboard_server.base_url, timeout=30) as client:
        yield client


# Package scope: Playwright's sync API keeps an event loop running in this
# thread while it is open, which asyncio-based tests elsewhere cannot share.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    _install_chromium()
    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def context(browser: Browser, dashboard_server: ApiServer) -> Iterator[BrowserContext]:
    ctx = browser.new_context(base_url=dashboard_server.base_url, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
