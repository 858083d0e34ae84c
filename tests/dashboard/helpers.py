"""Logging in (in the browser or with httpx) and reading what a page shows."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import Page

_HIDDEN = re.compile(r'name="(?P<name>login_token|csrf_token)" value="(?P<value>[^"]+)"')


def browser_login(page: Page, key: str) -> None:
    page.goto("/dashboard/login")
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard")


def hidden_token(html: str, name: str) -> str:
    for match in _HIDDEN.finditer(html):
        if match["name"] == name:
            return match["value"]
    raise AssertionError(f"no {name} in the page")


def http_login(client: httpx.Client, key: str) -> str:
    """Logs `client` in (its cookie jar keeps the session); the page's CSRF token."""
    form = client.get("/dashboard/login")
    assert form.status_code == 200
    answer = client.post("/dashboard/login", data={
        "login_token": hidden_token(form.text, "login_token"), "api_key": key})
    assert answer.status_code == 303, answer.text
    page = client.get("/dashboard/")
    assert page.status_code == 200
    return hidden_token(page.text, "csrf_token")


def screenshot(page: Page, artifacts: Path, name: str) -> None:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
